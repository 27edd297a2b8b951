//! Fuzzes the SQL templater: for any text, in both quotings, the template holds no quote that
//! opens a string, no number (a digit not continuing a name), stays within its length bound, and
//! never shows a string literal put between two arbitrary pieces of statement.
#![no_main]

use vitals::signal::sql_template::{template, Quoting, TEMPLATE_LIMIT};

fn check(out: &str, quoting: Quoting) {
    assert!(out.len() <= TEMPLATE_LIMIT + '…'.len_utf8(), "{} bytes", out.len());
    assert!(!out.contains('\''), "a quote in {out:?}");
    if quoting == Quoting::MySql {
        assert!(!out.contains('"'), "a string quote in {out:?}");
    }
    let b = out.as_bytes();
    for (i, c) in b.iter().enumerate() {
        if c.is_ascii_digit() {
            let prev = if i > 0 { b[i - 1] } else { b' ' };
            assert!(
                prev.is_ascii_alphanumeric() || prev == b'_' || prev == b'$' || prev >= 0x80,
                "a number in {out:?}"
            );
        }
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for quoting in [Quoting::Standard, Quoting::MySql] {
        check(&template(text, quoting), quoting);
    }
    // A secret in a well-formed string literal between two pieces of the input: the pieces may hold
    // anything but quotes, `$` and comment openers (which would make the literal something else).
    let mut parts = text.splitn(2, '\u{0}');
    let (Some(prefix), Some(suffix)) = (parts.next(), parts.next()) else {
        return;
    };
    let clean = |s: &str| {
        !s.contains(['\'', '"', '`', '$', '\\', '#']) && !s.contains("--") && !s.contains("/*")
    };
    if !clean(prefix) || !clean(suffix) {
        return;
    }
    let secret = "Zq7secretVALUE";
    if prefix.contains(secret) || suffix.contains(secret) {
        return;
    }
    let sql = format!("{prefix}'{secret}'{suffix}");
    for quoting in [Quoting::Standard, Quoting::MySql] {
        let out = template(&sql, quoting);
        check(&out, quoting);
        assert!(!out.contains(secret), "the literal in {out:?}");
    }
});
