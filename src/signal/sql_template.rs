//! The template of a SQL statement: its text with every literal folded to `?`, so `WHERE id = 42` and
//! `WHERE id = 7` are one query and no value from a statement (which can be personal data) ever leaves.
//!
//! A small tokenizer, not a parser: it must give a template for any text an app sends, malformed and
//! truncated statements included, and a parser (sqlparser) rejects those and would still need this
//! as its fallback. What it does, in one pass over the bytes:
//! - string literals (`'…'` with `''` inside, `E'…'` with backslash escapes, prefixed `X'…'`, `N'…'`,
//!   `_utf8mb4'…'`), dollar-quoted strings (`$tag$…$tag$`), numbers (`42`, `-` stays an operator,
//!   `1.5e-3`, `0x1F`) and placeholders (`$1`, `%s`, `%(name)s`, `:name`, `@p1`, `?`) become `?`;
//! - an unterminated string or comment ends the template: what follows it is never shown;
//! - lists of nothing but `?` collapse, `IN (1, 2, 3)` → `IN (?)`, `ARRAY[1, 2]` → `ARRAY[?]`, and
//!   repeated rows `VALUES (1, 'a'), (2, 'b')` → `VALUES (?)`;
//! - comments go, runs of whitespace become one space; identifiers, keywords and operators are kept
//!   as written (drivers send one statement the same way every time);
//! - a quoted identifier is kept only when it reads as a plain name (`"user"`, `` `order_2` ``),
//!   else it becomes `?`; with MySQL's quoting, `"…"` is a string;
//! - the template is cut at a token boundary to [`TEMPLATE_LIMIT`] bytes, ending in `…`.
//!
//! What it guarantees (fuzzed in `fuzz/fuzz_targets/sql_template.rs`): the output holds no `'`, no
//! digit that does not follow a letter, `_` or `$` inside an identifier, and nothing of a string
//! literal.

/// Longest template kept, in bytes (the `…` after a cut adds three).
pub const TEMPLATE_LIMIT: usize = 300;

/// How a database quotes: which characters open strings and comments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quoting {
    /// SQL standard (PostgreSQL, SQLite, Oracle, SQL Server…): `'…'` is a string, `"…"` an identifier,
    /// backslashes escape only in `E'…'`.
    Standard,
    /// MySQL and MariaDB: `'…'` and `"…"` are strings with backslash escapes, `` `…` `` an identifier,
    /// `#` starts a comment.
    MySql,
}

impl Quoting {
    /// The quoting of a `db.system` / `db.system.name` value.
    pub fn of(db_system: &str) -> Quoting {
        match db_system {
            "mysql" | "mariadb" | "tidb" => Quoting::MySql,
            _ => Quoting::Standard,
        }
    }
}

/// True for `db.system` values whose statements are SQL. Other systems' statement text (Redis
/// commands with their keys and values, MongoDB filters) is not templated: their query is named by the
/// operation and collection instead.
pub fn is_sql(db_system: &str) -> bool {
    matches!(
        db_system,
        "postgresql"
            | "mysql"
            | "mariadb"
            | "mssql"
            | "microsoft.sql_server"
            | "oracle"
            | "oracle.db"
            | "sqlite"
            | "db2"
            | "ibm.db2"
            | "h2"
            | "hsqldb"
            | "derby"
            | "cockroachdb"
            | "clickhouse"
            | "trino"
            | "presto"
            | "hive"
            | "spanner"
            | "gcp.spanner"
            | "redshift"
            | "aws.redshift"
            | "snowflake"
            | "bigquery"
            | "vertica"
            | "teradata"
            | "sybase"
            | "informix"
            | "firebird"
            | "hanadb"
            | "sap.hana"
            | "tidb"
            | "greenplum"
            | "edb"
            | "netezza"
            | "interbase"
            | "other_sql"
    )
}

/// Deepest bracket nesting whose lists are collapsed; deeper brackets are kept as written.
const NESTING_LIMIT: usize = 32;

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Writes the template of `sql` into `out` (cleared first). `out` is left empty when nothing of the
/// statement remains (only comments or whitespace).
pub fn template_into(sql: &str, quoting: Quoting, out: &mut String) {
    out.clear();
    let mut t = Templater {
        s: sql.as_bytes(),
        sql,
        quoting,
        out,
        space: false,
        open: Vec::new(),
        full: false,
    };
    t.run();
}

/// The template of `sql` as a new string.
pub fn template(sql: &str, quoting: Quoting) -> String {
    let mut out = String::new();
    template_into(sql, quoting, &mut out);
    out
}

struct Templater<'a> {
    s: &'a [u8],
    sql: &'a str,
    quoting: Quoting,
    out: &'a mut String,
    /// Whitespace (or a comment) came since the last token.
    space: bool,
    /// Output positions of the open brackets.
    open: Vec<usize>,
    /// The limit was reached: nothing more is written.
    full: bool,
}

impl Templater<'_> {
    fn run(&mut self) {
        let s = self.s;
        let mut i = 0;
        while i < s.len() && !self.full {
            let b = s[i];
            let next = s.get(i + 1).copied();
            i = match b {
                b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => {
                    self.space = true;
                    i + 1
                }
                b'-' if next == Some(b'-') => self.line_comment(i),
                b'#' if self.quoting == Quoting::MySql => self.line_comment(i),
                b'/' if next == Some(b'*') => match self.block_comment(i) {
                    Some(end) => end,
                    None => return,
                },
                b'\'' => match self.string(i + 1, b'\'', self.quoting == Quoting::MySql) {
                    Some(end) => end,
                    None => return,
                },
                b'"' if self.quoting == Quoting::MySql => match self.string(i + 1, b'"', true) {
                    Some(end) => end,
                    None => return,
                },
                b'"' | b'`' => match self.quoted_identifier(i) {
                    Some(end) => end,
                    None => return,
                },
                b'$' => match self.dollar(i) {
                    Some(end) => end,
                    None => return,
                },
                b'0'..=b'9' => self.number(i),
                b'.' if next.is_some_and(|n| n.is_ascii_digit()) => self.number(i),
                b'?' => {
                    self.token("?");
                    i + 1
                }
                b'%' => self.percent(i),
                b':' | b'@' => self.named_placeholder(i),
                _ if is_ident_start(b) => match self.identifier(i) {
                    Some(end) => end,
                    None => return,
                },
                b'(' | b'[' => {
                    self.token_at(i, i + 1);
                    if self.open.len() < NESTING_LIMIT {
                        self.open.push(self.out.len() - 1);
                    }
                    i + 1
                }
                b')' | b']' => {
                    self.close(i);
                    i + 1
                }
                _ => {
                    // Any other ASCII punctuation or control byte: an operator, kept.
                    if b.is_ascii_graphic() {
                        self.token_at(i, i + 1);
                    } else {
                        self.space = true;
                    }
                    i + 1
                }
            };
        }
    }

    /// Writes one token, with a single space before it when the input had whitespace there.
    fn token(&mut self, text: &str) {
        if self.full {
            return;
        }
        let before = self.out.len();
        if self.space && !self.out.is_empty() {
            self.out.push(' ');
        }
        self.space = false;
        self.out.push_str(text);
        if self.out.len() > TEMPLATE_LIMIT {
            self.out.truncate(before);
            self.out.push('…');
            self.full = true;
        }
    }

    /// Writes the input bytes `from..to` as one token (both on ASCII boundaries).
    fn token_at(&mut self, from: usize, to: usize) {
        let sql = self.sql;
        match sql.get(from..to) {
            Some(text) => self.token(text),
            // Not on a character boundary (cannot happen: tokens start and end at ASCII bytes); the
            // text is not shown.
            None => self.token("?"),
        }
    }

    fn line_comment(&mut self, i: usize) -> usize {
        self.space = true;
        match self.s[i..].iter().position(|&b| b == b'\n') {
            Some(n) => i + n + 1,
            None => self.s.len(),
        }
    }

    /// Skips a `/* … */` comment (nested ones too, as PostgreSQL reads them); None when unterminated.
    fn block_comment(&mut self, i: usize) -> Option<usize> {
        self.space = true;
        let s = self.s;
        let mut depth = 0usize;
        let mut j = i;
        while j + 1 < s.len() {
            if s[j] == b'/' && s[j + 1] == b'*' {
                depth += 1;
                j += 2;
            } else if s[j] == b'*' && s[j + 1] == b'/' {
                depth -= 1;
                j += 2;
                if depth == 0 {
                    return Some(j);
                }
            } else {
                j += 1;
            }
        }
        None
    }

    /// A string whose body starts at `i`, closed by `quote` (doubled inside); backslashes escape when
    /// `backslash`. Writes `?`; None when unterminated (the rest of the text is not shown).
    fn string(&mut self, i: usize, quote: u8, backslash: bool) -> Option<usize> {
        self.token("?");
        let s = self.s;
        let mut j = i;
        while j < s.len() {
            let b = s[j];
            if backslash && b == b'\\' {
                j += 2;
            } else if b == quote {
                if s.get(j + 1) == Some(&quote) {
                    j += 2;
                } else {
                    return Some(j + 1);
                }
            } else {
                j += 1;
            }
        }
        None
    }

    /// `"name"` or `` `name` ``: kept when the name is plain, else `?`. None when unterminated.
    fn quoted_identifier(&mut self, i: usize) -> Option<usize> {
        let s = self.s;
        let quote = s[i];
        let mut j = i + 1;
        let mut plain = s.get(j).is_some_and(|&b| is_ident_start(b) && b < 0x80);
        while j < s.len() {
            if s[j] == quote {
                if s.get(j + 1) == Some(&quote) {
                    plain = false;
                    j += 2;
                    continue;
                }
                let len = j - i - 1;
                if plain && len <= 63 {
                    self.token_at(i, j + 1);
                } else {
                    self.token("?");
                }
                return Some(j + 1);
            }
            if !(s[j].is_ascii_alphanumeric() || s[j] == b'_' || s[j] == b'$') {
                plain = false;
            }
            j += 1;
        }
        self.token("?");
        None
    }

    /// `$1` (a placeholder), `$tag$…$tag$` or `$$…$$` (a string), or a lone `$`.
    fn dollar(&mut self, i: usize) -> Option<usize> {
        let s = self.s;
        let mut j = i + 1;
        if s.get(j).is_some_and(|b| b.is_ascii_digit()) {
            while s.get(j).is_some_and(|b| b.is_ascii_digit()) {
                j += 1;
            }
            self.token("?");
            return Some(j);
        }
        if s.get(j).is_some_and(|&b| is_ident_start(b) && b < 0x80) {
            while s
                .get(j)
                .is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'_')
            {
                j += 1;
            }
        }
        if s.get(j) != Some(&b'$') {
            // Not a dollar quote: the `$` alone is an operator; the tag is read again as a token.
            self.token("$");
            return Some(i + 1);
        }
        let tag = &s[i..=j];
        self.token("?");
        let body = j + 1;
        let end = s[body..]
            .windows(tag.len())
            .position(|w| w == tag)
            .map(|p| body + p + tag.len());
        end
    }

    fn number(&mut self, i: usize) -> usize {
        let s = self.s;
        let mut j = i;
        while j < s.len() {
            let b = s[j];
            let exponent_sign = (b == b'+' || b == b'-')
                && j > i
                && matches!(s[j - 1], b'e' | b'E')
                && !s[i..j].starts_with(b"0x")
                && !s[i..j].starts_with(b"0X");
            if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || exponent_sign {
                j += 1;
            } else {
                break;
            }
        }
        self.token("?");
        j
    }

    /// `%s`, `%d`, `%(name)s` (Python's DB-API) are placeholders; another `%` is the modulo operator.
    fn percent(&mut self, i: usize) -> usize {
        let s = self.s;
        match s.get(i + 1) {
            Some(b's' | b'd' | b'b' | b'f') => {
                self.token("?");
                i + 2
            }
            Some(b'(') => match s[i + 2..].iter().position(|&b| b == b')') {
                Some(p) if s[i + 2..i + 2 + p].iter().all(|&b| is_ident(b)) => {
                    let mut j = i + 2 + p + 1;
                    if s.get(j).is_some_and(|b| b.is_ascii_alphabetic()) {
                        j += 1;
                    }
                    self.token("?");
                    j
                }
                _ => {
                    self.token("%");
                    i + 1
                }
            },
            _ => {
                self.token("%");
                i + 1
            }
        }
    }

    /// `:name`, `:1` and `@name` are placeholders unless `:` follows a name or another `:` (`a::int`,
    /// `schema:table`); `@@version` is a system variable and kept.
    fn named_placeholder(&mut self, i: usize) -> usize {
        let s = self.s;
        let prev = if i > 0 { Some(s[i - 1]) } else { None };
        let next = s.get(i + 1).copied();
        let after_name = prev.is_some_and(|p| is_ident(p) || p == b':' || p == b'@');
        if after_name || !next.is_some_and(is_ident) {
            self.token_at(i, i + 1);
            return i + 1;
        }
        let mut j = i + 1;
        while s.get(j).is_some_and(|&b| is_ident(b)) {
            j += 1;
        }
        self.token("?");
        j
    }

    /// A name or keyword, kept; one directly followed by `'` is a literal's prefix (`E'…'`, `X'…'`,
    /// `_utf8mb4'…'`) and goes with it.
    fn identifier(&mut self, i: usize) -> Option<usize> {
        let s = self.s;
        let mut j = i;
        while j < s.len() && is_ident(s[j]) {
            j += 1;
        }
        if s.get(j) == Some(&b'\'') {
            let backslash = self.quoting == Quoting::MySql || s[i..j].eq_ignore_ascii_case(b"e");
            return self.string(j + 1, b'\'', backslash);
        }
        if s.get(j) == Some(&b'&')
            && s.get(j + 1) == Some(&b'\'')
            && s[i..j].eq_ignore_ascii_case(b"u")
        {
            return self.string(j + 2, b'\'', false);
        }
        self.token_at(i, j);
        Some(j)
    }

    /// A closing bracket: a list of nothing but `?` collapses to one, and a row `(?)` that repeats
    /// the one before it after a comma is dropped.
    fn close(&mut self, i: usize) {
        let closer = if self.s[i] == b')' { ")" } else { "]" };
        let Some(open) = self.open.pop() else {
            self.token(closer);
            return;
        };
        if self.full {
            return;
        }
        let inner = &self.out[open + 1..];
        let only_values =
            inner.contains('?') && inner.bytes().all(|b| matches!(b, b'?' | b',' | b' '));
        if !only_values {
            self.space = false;
            self.token(closer);
            return;
        }
        self.out.truncate(open + 1);
        self.out.push('?');
        self.out.push_str(closer);
        self.space = false;
        // `VALUES (?), (?)`: the row before this one is the same; drop this one and its comma.
        let row = if closer == ")" { "(?)" } else { "[?]" };
        let before = self.out[..open].trim_end();
        if let Some(b) = before.strip_suffix(',') {
            let b = b.trim_end();
            if b.ends_with(row) {
                let keep = b.len();
                self.out.truncate(keep);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(sql: &str) -> String {
        template(sql, Quoting::Standard)
    }

    #[test]
    fn literals_fold_and_statements_differing_in_them_are_one() {
        assert_eq!(
            t("SELECT * FROM users WHERE id = 42"),
            "SELECT * FROM users WHERE id = ?"
        );
        assert_eq!(
            t("SELECT * FROM users WHERE id = 42"),
            t("SELECT  *\n FROM users WHERE id = 7 -- by id")
        );
        assert_eq!(
            t("UPDATE t SET name = 'O''Brien', score = -1.5e-3, flag = 0x1F WHERE k = E'a\\'b'"),
            "UPDATE t SET name = ?, score = -?, flag = ? WHERE k = ?"
        );
        assert_eq!(
            t("select x from t where y = .5"),
            "select x from t where y = ?"
        );
        assert_eq!(t("SELECT $body$ it's $1 $body$, $$x$$"), "SELECT ?, ?");
        assert_eq!(
            t("SELECT a FROM t WHERE b = X'DEADBEEF' AND c = N'名前' AND d = U&'\\0041'"),
            "SELECT a FROM t WHERE b = ? AND c = ? AND d = ?"
        );
    }

    #[test]
    fn placeholders_become_the_same_mark() {
        assert_eq!(
            t("SELECT a FROM t WHERE b = $1 AND c = %s AND d = %(pk_1)s AND e = :name AND f = ? AND g = @p1"),
            "SELECT a FROM t WHERE b = ? AND c = ? AND d = ? AND e = ? AND f = ? AND g = ?"
        );
        // Casts, `%` as modulo, and names with digits stay.
        assert_eq!(
            t("SELECT a::int, b % 3, t2.c1 FROM t2"),
            "SELECT a::int, b % ?, t2.c1 FROM t2"
        );
    }

    #[test]
    fn lists_and_rows_collapse() {
        assert_eq!(
            t("SELECT * FROM t WHERE id IN (1, 2, 3, 4)"),
            "SELECT * FROM t WHERE id IN (?)"
        );
        assert_eq!(
            t("SELECT * FROM t WHERE id IN (1,2)"),
            t("SELECT * FROM t WHERE id IN ( 9 )")
        );
        assert_eq!(
            t("INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y'),(3,'z')"),
            "INSERT INTO t (a, b) VALUES (?)"
        );
        assert_eq!(
            t("SELECT * FROM t WHERE id = ANY(ARRAY[1, 2, 3])"),
            "SELECT * FROM t WHERE id = ANY(ARRAY[?])"
        );
        // A function call over columns is not a list of values.
        assert_eq!(
            t("SELECT coalesce(a, b) FROM t"),
            "SELECT coalesce(a, b) FROM t"
        );
    }

    #[test]
    fn malformed_text_never_shows_what_follows_an_open_literal() {
        assert_eq!(
            t("SELECT * FROM t WHERE a = 'secret"),
            "SELECT * FROM t WHERE a = ?"
        );
        assert_eq!(t("SELECT 1 /* open comment secret"), "SELECT ?");
        assert_eq!(t("SELECT $x$ never closed secret"), "SELECT ?");
        assert_eq!(t("SELECT \"col secret"), "SELECT ?");
        assert_eq!(t("SELECT 'a' 'b' ) ) ("), "SELECT ? ? ) ) (");
        assert_eq!(t("-- only a comment"), "");
        // A PostgreSQL standard string keeps its backslash: the next literal starts where it should.
        assert_eq!(t("SELECT 'C:\\', 'secret'"), "SELECT ?, ?");
    }

    #[test]
    fn quoted_identifiers_are_kept_only_when_plain() {
        assert_eq!(
            t("SELECT \"user\".\"id\" FROM \"user\" WHERE \"email\" = 'a@b.c'"),
            "SELECT \"user\".\"id\" FROM \"user\" WHERE \"email\" = ?"
        );
        assert_eq!(t("SELECT \"John Smith 1985\" FROM t"), "SELECT ? FROM t");
        // MySQL: double quotes make strings, backslashes escape, `#` comments.
        assert_eq!(
            template(
                "SELECT `name` FROM t WHERE a = \"x\\\"y\" AND b = 'z' # note 123",
                Quoting::MySql
            ),
            "SELECT `name` FROM t WHERE a = ? AND b = ?"
        );
    }

    #[test]
    fn long_statements_are_cut_at_a_token() {
        let cols: Vec<String> = (0..200).map(|i| format!("column_{i}")).collect();
        let sql = format!("SELECT {} FROM t WHERE id = 1", cols.join(", "));
        let out = t(&sql);
        assert!(
            out.len() <= TEMPLATE_LIMIT + '…'.len_utf8(),
            "{}",
            out.len()
        );
        assert!(out.ends_with('…'));
        assert!(out.starts_with("SELECT column_0, column_1"));
    }

    /// The fuzz target's properties on 200,000 pseudo-random statements over the characters that
    /// matter to the tokenizer (quotes, `$`, comment openers, digits, brackets, non-ASCII).
    #[test]
    fn random_text_never_yields_a_quote_or_a_number() {
        const ALPHABET: &[&str] = &[
            "'", "\"", "`", "$", "$$", "$a$", "--", "/*", "*/", "#", "\\", ":", "::", "%", "%s",
            "?", ".", ",", "(", ")", "[", "]", " ", "\n", "0", "7", "42", "1e5", "0x1F", "-", "+",
            "e", "E", "X", "N", "U&", "id", "SELECT", "IN", "VALUES", "_utf8", "é", "名",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut out = String::new();
        for _ in 0..200_000 {
            let len = (next() % 24) as usize;
            let text: String = (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                .collect();
            for quoting in [Quoting::Standard, Quoting::MySql] {
                template_into(&text, quoting, &mut out);
                assert!(!out.contains('\''), "{text:?} -> {out:?}");
                if quoting == Quoting::MySql {
                    assert!(!out.contains('"'), "{text:?} -> {out:?}");
                }
                let b = out.as_bytes();
                for (i, c) in b.iter().enumerate() {
                    if c.is_ascii_digit() {
                        let prev = if i > 0 { b[i - 1] } else { b' ' };
                        assert!(
                            prev.is_ascii_alphanumeric()
                                || prev == b'_'
                                || prev == b'$'
                                || prev >= 0x80,
                            "{text:?} -> {out:?}"
                        );
                    }
                }
            }
            // A secret in a well-formed literal between two pieces of clean text never shows.
            if !text.contains(['\'', '"', '`', '$', '\\', '#'])
                && !text.contains("--")
                && !text.contains("/*")
            {
                let cut = (next() as usize) % (text.len() + 1);
                let cut = (0..=cut)
                    .rev()
                    .find(|c| text.is_char_boundary(*c))
                    .unwrap_or(0);
                let sql = format!("{}'Zq7secret'{}", &text[..cut], &text[cut..]);
                for quoting in [Quoting::Standard, Quoting::MySql] {
                    assert!(!template(&sql, quoting).contains("Zq7secret"), "{sql:?}");
                }
            }
        }
    }
}
