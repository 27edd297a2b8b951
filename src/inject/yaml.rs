//! Edits YAML manifests as text, so comments, key order, quoting and blank lines outside the edit stay
//! byte for byte.
//!
//! No Rust YAML library keeps comments through a parse and re-emit (yaml_serde and yaml-rust2 drop them;
//! the event parsers give where a node starts but not where a block ends). So yaml_serde parses each
//! document to decide what to change, and this file finds the lines to change by indentation: the keys
//! of a block mapping sit at one column, the items of a block sequence start with `-` at one column, and
//! a block ends at the first content line left of that column. Every edit is then checked: the edited
//! text is parsed again and must equal the intended structural edit (`pod::add`/`pod::remove` applied to
//! the parsed value), or the document is refused rather than written wrong.

use yaml_serde::{Mapping, Value};

use super::pod::{self, Created, Plan, ANNOTATION};

/// One document of a multi-document stream: its text (with the `---` line that opened it) and the line
/// it starts on (1-based), for messages.
pub struct Piece<'a> {
    /// The document's text.
    pub text: &'a str,
    /// Its first line in the input, from 1.
    pub line: usize,
}

/// Splits a stream at its `---` lines; each piece keeps the separator that opened it, so the pieces
/// joined are the input.
pub fn split(input: &str) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (n, line) in input.split_inclusive('\n').enumerate() {
        if offset > 0 && is_separator(line) {
            pieces.push(Piece {
                text: &input[start..offset],
                line: start_line,
            });
            start = offset;
            start_line = n + 1;
        }
        offset += line.len();
    }
    pieces.push(Piece {
        text: &input[start..],
        line: start_line,
    });
    pieces
}

fn is_separator(line: &str) -> bool {
    let l = line.trim_end_matches(['\n', '\r']);
    l == "---" || l.starts_with("--- ") || l.starts_with("---\t")
}

/// A document's lines without their terminators.
pub struct Lines {
    lines: Vec<String>,
    nl: &'static str,
    final_newline: bool,
}

/// A node's block: its content starts at `col` on line `first` and runs to line `end` (exclusive).
#[derive(Debug, Clone, Copy)]
pub struct Block {
    first: usize,
    col: usize,
    end: usize,
}

/// A key of a block mapping and its value.
#[derive(Debug, Clone, Copy)]
struct KeyAt {
    line: usize,
    col: usize,
    value: Option<Block>,
}

/// One text change: replace `remove` lines at line `at` with `insert`.
#[derive(Debug)]
struct Edit {
    at: usize,
    remove: usize,
    insert: Vec<String>,
}

/// How the document lays out nested blocks, copied into the lines inject writes.
#[derive(Debug, Clone, Copy)]
struct Style {
    /// Columns a nested mapping is indented by.
    step: usize,
    /// Columns a sequence's `-` is indented by under its key (0 for the `key:\n- item` style).
    seq_offset: usize,
    /// Columns from `-` to the item's content.
    gap: usize,
}

impl Lines {
    /// Reads a document's text.
    pub fn new(text: &str) -> Lines {
        let crlf = text.contains("\r\n");
        let final_newline = text.ends_with('\n');
        let body = text.strip_suffix('\n').unwrap_or(text);
        let lines = if text.is_empty() {
            Vec::new()
        } else {
            body.split('\n')
                .map(|l| {
                    if crlf {
                        l.strip_suffix('\r').unwrap_or(l).to_owned()
                    } else {
                        l.to_owned()
                    }
                })
                .collect()
        };
        Lines {
            lines,
            nl: if crlf { "\r\n" } else { "\n" },
            final_newline,
        }
    }

    fn text(&self) -> String {
        let mut out = self.lines.join(self.nl);
        if self.final_newline && !self.lines.is_empty() {
            out.push_str(self.nl);
        }
        out
    }

    fn indent(&self, i: usize) -> usize {
        self.lines[i].len() - self.lines[i].trim_start_matches(' ').len()
    }

    fn is_content(&self, i: usize) -> bool {
        let l = &self.lines[i];
        let t = l.trim();
        if t.is_empty() || t.starts_with('#') {
            return false;
        }
        // Document markers and directives, at column 0 only.
        !(l.starts_with('%') || is_separator(l) || l == "..." || l.starts_with("... "))
    }

    fn is_comment(&self, i: usize) -> bool {
        self.lines[i].trim_start().starts_with('#')
    }

    fn is_dash(&self, i: usize, col: usize) -> bool {
        let rest = self.lines[i].get(col..).unwrap_or("");
        rest == "-" || rest.starts_with("- ")
    }

    fn next_content(&self, from: usize, end: usize) -> Option<usize> {
        (from..end.min(self.lines.len())).find(|&i| self.is_content(i))
    }

    fn last_content(&self, b: Block) -> usize {
        (b.first..b.end)
            .rev()
            .find(|&i| self.is_content(i))
            .unwrap_or(b.first)
    }

    /// The document's root node.
    pub fn root(&self) -> Option<Block> {
        let first = self.next_content(0, self.lines.len())?;
        Some(Block {
            first,
            col: self.indent(first),
            end: self.lines.len(),
        })
    }

    /// The key `name` of the block mapping `b`.
    fn key(&self, b: Block, name: &str) -> Option<KeyAt> {
        for i in b.first..b.end {
            if i != b.first && (!self.is_content(i) || self.indent(i) != b.col) {
                continue;
            }
            let text = self.lines[i].get(b.col..).unwrap_or("");
            let rest = [name.to_owned(), format!("\"{name}\""), format!("'{name}'")]
                .iter()
                .find_map(|k| {
                    text.strip_prefix(k.as_str())
                        .and_then(|r| r.strip_prefix(':'))
                })
                .filter(|r| r.is_empty() || r.starts_with([' ', '\t']));
            let Some(rest) = rest else { continue };
            let rest = rest.trim();
            let value = if rest.is_empty() || rest.starts_with('#') {
                self.block_after(i, b.col, b.end)
            } else {
                None
            };
            return Some(KeyAt {
                line: i,
                col: b.col,
                value,
            });
        }
        None
    }

    /// The block value of a key at (`line`, `col`): the lines below it indented further, or a sequence
    /// whose `-` sits at the key's own column.
    fn block_after(&self, line: usize, col: usize, end: usize) -> Option<Block> {
        let n = self.next_content(line + 1, end)?;
        let ind = self.indent(n);
        let seq = self.is_dash(n, ind);
        if ind < col || (ind == col && !seq) {
            return None;
        }
        let stop = (n + 1..end)
            .find(|&j| {
                self.is_content(j) && {
                    let d = self.indent(j);
                    d < ind || (d == ind && seq && !self.is_dash(j, d))
                }
            })
            .unwrap_or(end);
        Some(Block {
            first: n,
            col: ind,
            end: stop,
        })
    }

    /// The items of block sequence `b`: each item's `-` line and its content block.
    fn items(&self, b: Block) -> Vec<(usize, Block)> {
        let dashes: Vec<usize> = (b.first..b.end)
            .filter(|&i| {
                (i == b.first || (self.is_content(i) && self.indent(i) == b.col))
                    && self.is_dash(i, b.col)
            })
            .collect();
        let mut out = Vec::new();
        for (k, &d) in dashes.iter().enumerate() {
            let end = dashes.get(k + 1).copied().unwrap_or(b.end);
            let after = &self.lines[d][b.col + 1..];
            let spaces = after.len() - after.trim_start_matches(' ').len();
            let inline = after.trim();
            let block = if !inline.is_empty() && !inline.starts_with('#') {
                Block {
                    first: d,
                    col: b.col + 1 + spaces,
                    end,
                }
            } else {
                match self.next_content(d + 1, end) {
                    Some(n) => Block {
                        first: n,
                        col: self.indent(n),
                        end,
                    },
                    None => Block {
                        first: d,
                        col: b.col + 2,
                        end,
                    },
                }
            };
            out.push((d, block));
        }
        out
    }

    /// The block of a key's value, or an error naming the key when it is missing or not in block style.
    fn block_of(&self, b: Block, name: &str) -> Result<(KeyAt, Block), String> {
        let k = self
            .key(b, name)
            .ok_or_else(|| format!("cannot find the line of key {name}"))?;
        let v = k.value.ok_or_else(|| {
            format!("{name} (line {}) is not in block style; write it as an indented block to let vitals inject edit it in place", k.line + 1)
        })?;
        Ok((k, v))
    }

    /// Moves an insertion point up over the comment lines directly above it, which belong to the key below.
    fn above_comments(&self, mut at: usize, floor: usize) -> usize {
        while at > floor && self.is_comment(at - 1) {
            at -= 1;
        }
        at
    }
}

/// Renders a mapping as block YAML lines, each with its indentation.
fn render_map(m: &Mapping, style: Style) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (k, v) in m {
        let key = scalar(k);
        match v {
            Value::Mapping(inner) if !inner.is_empty() => {
                out.push((0, format!("{key}:")));
                out.extend(
                    render_map(inner, style)
                        .into_iter()
                        .map(|(i, t)| (i + style.step, t)),
                );
            }
            Value::Sequence(inner) if !inner.is_empty() => {
                out.push((0, format!("{key}:")));
                out.extend(
                    render_seq(inner, style)
                        .into_iter()
                        .map(|(i, t)| (i + style.seq_offset, t)),
                );
            }
            other => out.push((0, format!("{key}: {}", scalar(other)))),
        }
    }
    out
}

fn render_seq(s: &[Value], style: Style) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for item in s {
        let inner = match item {
            Value::Mapping(m) if !m.is_empty() => render_map(m, style),
            Value::Sequence(q) if !q.is_empty() => render_seq(q, style),
            other => vec![(0, scalar(other))],
        };
        for (n, (i, t)) in inner.into_iter().enumerate() {
            if n == 0 {
                out.push((0, format!("-{}{t}", " ".repeat(style.gap - 1))));
            } else {
                out.push((i + style.gap, t));
            }
        }
    }
    out
}

/// One scalar as YAML: yaml_serde's quoting for one-line strings, single-quoted where yaml_serde writes
/// plain what a YAML 1.1 reader would take for other than a string, and JSON's (a valid YAML
/// double-quoted scalar) for multi-line strings.
fn scalar(v: &Value) -> String {
    match v {
        Value::Mapping(m) if m.is_empty() => "{}".to_owned(),
        Value::Sequence(s) if s.is_empty() => "[]".to_owned(),
        Value::String(s) if s.contains(['\n', '\r']) => {
            serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
        }
        other => {
            let text = yaml_serde::to_string(other)
                .map(|t| t.trim_end_matches('\n').to_owned())
                .unwrap_or_default();
            match other {
                Value::String(s) if text == *s && yaml11_not_a_string(s) => {
                    format!("'{}'", s.replace('\'', "''"))
                }
                _ => text,
            }
        }
    }
}

/// Whether a YAML 1.1 reader could read plain `s` as other than a string. yaml_serde follows YAML 1.2
/// and writes `on`, `yes`, `y`, `0777`, `1:20`, `1_000` or `2001-12-14` plain, but kubectl (go-yaml v2
/// under sigs.k8s.io/yaml) and PyYAML resolve by YAML 1.1: booleans, octal, base 60, an integer, a date.
/// Any string made only of the characters of 1.1's numbers, dates and times, with a digit, is counted,
/// so this quotes some strings that needed no quotes, never the other way round.
fn yaml11_not_a_string(s: &str) -> bool {
    const WORDS: [&str; 28] = [
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
        "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF", "~", "null", "Null", "NULL", "<<",
        "=",
    ];
    WORDS.contains(&s)
        || (s.bytes().any(|b| b.is_ascii_digit())
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() || b" +-._:xXoObBtTzZ".contains(&b)))
}

fn lines_at(rendered: Vec<(usize, String)>, col: usize) -> Vec<String> {
    rendered
        .into_iter()
        .map(|(i, t)| format!("{}{t}", " ".repeat(col + i)))
        .collect()
}

/// Where an object's pod template is in the text: the template block, and the column of its `spec` key
/// (the template itself for a Pod).
fn template_block(lines: &Lines, object: Block, path: &[&str]) -> Result<Block, String> {
    let mut b = object;
    for k in path {
        b = lines.block_of(b, k)?.1;
    }
    Ok(b)
}

fn style_of(lines: &Lines, template: Block, spec: Block, containers: (KeyAt, Block)) -> Style {
    let step = spec.col.saturating_sub(template.col);
    let (key, value) = containers;
    let gap = lines
        .items(value)
        .first()
        .map(|(d, b)| if b.first == *d { b.col - value.col } else { 2 })
        .unwrap_or(2);
    Style {
        step: if step == 0 { 2 } else { step },
        seq_offset: value.col - key.col,
        gap: gap.max(2),
    }
}

/// The text edits that add `plan` to the template in block `template`.
fn add_edits(lines: &Lines, template: Block, plan: &Plan) -> Result<Vec<Edit>, String> {
    let c = plan.created;
    let (spec_key, spec) = lines.block_of(template, "spec")?;
    let containers = lines.block_of(spec, "containers")?;
    let style = style_of(lines, template, spec, containers);
    let item = |dash_col: usize| {
        lines_at(
            render_seq(std::slice::from_ref(&plan.container), style),
            dash_col,
        )
    };
    let mut edits = Vec::new();
    // Appended items first: an insertion before `containers` at the same line comes after them.
    if !(c.native && c.init_containers) {
        let list = if c.native {
            lines.block_of(spec, "initContainers")?.1
        } else {
            containers.1
        };
        edits.push(Edit {
            at: lines.last_content(list) + 1,
            remove: 0,
            insert: item(list.col),
        });
    }
    let mut before = Vec::new();
    if c.share_process_namespace {
        before.push(format!(
            "{}shareProcessNamespace: true",
            " ".repeat(spec.col)
        ));
    }
    if c.native && c.init_containers {
        before.push(format!("{}initContainers:", " ".repeat(spec.col)));
        before.extend(item(spec.col + style.seq_offset));
    }
    if !before.is_empty() {
        edits.push(Edit {
            at: lines.above_comments(containers.0.line, spec.first),
            remove: 0,
            insert: before,
        });
    }
    let note = format!(
        "{ANNOTATION}: {}",
        scalar(&Value::String(plan.record.clone()))
    );
    let indent = |n: usize| " ".repeat(n);
    if c.metadata {
        let t = template.col;
        edits.push(Edit {
            at: lines.above_comments(spec_key.line, template.first),
            remove: 0,
            insert: vec![
                format!("{}metadata:", indent(t)),
                format!("{}annotations:", indent(t + style.step)),
                format!("{}{note}", indent(t + 2 * style.step)),
            ],
        });
    } else {
        let (_, meta) = lines.block_of(template, "metadata")?;
        if c.annotations {
            edits.push(Edit {
                at: lines.last_content(meta) + 1,
                remove: 0,
                insert: vec![
                    format!("{}annotations:", indent(meta.col)),
                    format!("{}{note}", indent(meta.col + style.step)),
                ],
            });
        } else {
            let (_, notes) = lines.block_of(meta, "annotations")?;
            edits.push(Edit {
                at: lines.last_content(notes) + 1,
                remove: 0,
                insert: vec![format!("{}{note}", indent(notes.col))],
            });
        }
    }
    Ok(edits)
}

fn range(at: usize, end: usize) -> Edit {
    Edit {
        at,
        remove: end - at,
        insert: Vec::new(),
    }
}

/// The text edits that take away what the record `c` says inject added to `template` (whose parsed value
/// is `value`).
fn remove_edits(
    lines: &Lines,
    template: Block,
    value: &Mapping,
    c: Created,
) -> Result<Vec<Edit>, String> {
    let (_, spec) = lines.block_of(template, "spec")?;
    let list_name = if c.native {
        "initContainers"
    } else {
        "containers"
    };
    let spec_value = value.get("spec").unwrap_or(&Value::Null);
    let listed = spec_value
        .get(list_name)
        .and_then(Value::as_sequence)
        .ok_or_else(|| format!("{list_name} is not a list"))?;
    let index = listed
        .iter()
        .rposition(|i| i.get("name").and_then(Value::as_str) == Some(pod::CONTAINER_NAME))
        .ok_or_else(|| format!("{list_name} has no container named {}", pod::CONTAINER_NAME))?;
    let (list_key, list) = lines.block_of(spec, list_name)?;
    let items = lines.items(list);
    if items.len() != listed.len() {
        return Err(format!(
            "{list_name} (line {}) is not a block list of {} items",
            list_key.line + 1,
            listed.len()
        ));
    }
    let mut edits = Vec::new();
    if c.native && c.init_containers && listed.len() == 1 {
        edits.push(range(list_key.line, lines.last_content(list) + 1));
    } else {
        let (dash, block) = items[index];
        edits.push(range(dash, lines.last_content(block) + 1));
    }
    if c.share_process_namespace {
        let k = lines
            .key(spec, "shareProcessNamespace")
            .ok_or("cannot find the line of shareProcessNamespace")?;
        edits.push(range(k.line, k.line + 1));
    }
    let (meta_key, meta) = lines.block_of(template, "metadata")?;
    let (notes_key, notes) = lines.block_of(meta, "annotations")?;
    let meta_value = value.get("metadata").unwrap_or(&Value::Null);
    let notes_count = meta_value
        .get("annotations")
        .and_then(Value::as_mapping)
        .map_or(0, Mapping::len);
    let meta_count = meta_value.as_mapping().map_or(0, Mapping::len);
    if c.metadata && meta_count == 1 && notes_count == 1 {
        edits.push(range(meta_key.line, lines.last_content(meta) + 1));
    } else if (c.annotations || c.metadata) && notes_count == 1 {
        edits.push(range(notes_key.line, lines.last_content(notes) + 1));
    } else {
        let k = lines
            .key(notes, ANNOTATION)
            .ok_or_else(|| format!("cannot find the line of annotation {ANNOTATION}"))?;
        edits.push(range(k.line, k.line + 1));
    }
    Ok(edits)
}

/// Applies edits (non-overlapping; insertions at one line in the order given).
fn apply(lines: &mut Lines, mut edits: Vec<Edit>) -> Result<(), String> {
    // Stable sort by position, then apply from the bottom so earlier positions stay valid.
    edits.sort_by_key(|e| e.at);
    for w in edits.windows(2) {
        if w[0].at + w[0].remove > w[1].at && !(w[0].remove == 0 && w[1].remove == 0) {
            return Err("two edits overlap".to_owned());
        }
    }
    for e in edits.into_iter().rev() {
        let end = (e.at + e.remove).min(lines.lines.len());
        lines.lines.splice(e.at..end, e.insert);
    }
    Ok(())
}

/// What to do to one object of a document: its place (None for the document itself, Some(i) for item i
/// of a List) and the template's path in it.
pub struct ObjectEdit<'p> {
    /// Item index in a List, or None.
    pub item: Option<usize>,
    /// Keys from the object to its pod template.
    pub path: &'static [&'static str],
    /// The change.
    pub change: Change<'p>,
}

/// A change to one template.
pub enum Change<'p> {
    /// Add the sidecar.
    Add(&'p Plan),
    /// Take away what inject added.
    Remove(Created),
}

/// Applies the changes to a document's text and checks the result against the same changes applied to
/// its parsed value; returns the new text.
pub fn edit(text: &str, value: &Value, changes: &[ObjectEdit<'_>]) -> Result<String, String> {
    let mut lines = Lines::new(text);
    let root = lines.root().ok_or("the document is empty")?;
    let mut expected = value.clone();
    let mut edits = Vec::new();
    for ch in changes {
        let object = match ch.item {
            None => root,
            Some(i) => {
                let (_, list) = lines.block_of(root, "items")?;
                let items = lines.items(list);
                items
                    .get(i)
                    .map(|(_, b)| *b)
                    .ok_or_else(|| format!("cannot find item {i} of items"))?
            }
        };
        let template = template_block(&lines, object, ch.path)?;
        let target = match ch.item {
            None => &mut expected,
            Some(i) => expected
                .get_mut("items")
                .and_then(|v| v.get_mut(i))
                .ok_or("items changed")?,
        };
        let tv = pod::template_mut(target, ch.path).ok_or("no template mapping")?;
        match &ch.change {
            Change::Add(plan) => {
                edits.extend(add_edits(&lines, template, plan)?);
                pod::add(tv, plan)?;
            }
            Change::Remove(c) => {
                edits.extend(remove_edits(&lines, template, tv, *c)?);
                pod::remove(tv, *c)?;
            }
        }
    }
    apply(&mut lines, edits)?;
    let out = lines.text();
    let reparsed: Value = yaml_serde::from_str(&out).map_err(|e| {
        format!("the edited text does not parse ({e}); the layout is one vitals inject cannot edit in place")
    })?;
    if reparsed != expected {
        return Err("editing the text in place would change more than the pod template (an unusual layout: flow style, anchors, tabs or multi-line keys); edit this document by hand".to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_every_byte() {
        let input = "# head\na: 1\n---\nb: 2\n--- # c\nc: 3\n---\n";
        let pieces = split(input);
        assert_eq!(pieces.len(), 4);
        assert_eq!(pieces.iter().map(|p| p.text).collect::<String>(), input);
        assert_eq!(
            pieces.iter().map(|p| p.line).collect::<Vec<_>>(),
            [1, 3, 5, 7]
        );
        // A `---` inside a line is no separator.
        assert_eq!(split("a: ---\nb: 1\n").len(), 1);
    }

    #[test]
    fn blocks_follow_indentation() {
        let text = "spec:\n  # c\n  containers:\n  - name: a\n    image: x\n\n  - name: b\n  volumes: []\nend: 1\n";
        let l = Lines::new(text);
        let root = l.root().unwrap();
        let (_, spec) = l.block_of(root, "spec").unwrap();
        assert_eq!((spec.first, spec.col, spec.end), (2, 2, 8));
        let (k, c) = l.block_of(spec, "containers").unwrap();
        assert_eq!((k.line, c.first, c.col, c.end), (2, 3, 2, 7));
        let items = l.items(c);
        assert_eq!(items.len(), 2);
        assert_eq!((items[0].0, items[0].1.col, items[0].1.end), (3, 4, 6));
        assert_eq!(l.last_content(items[0].1), 4);
        assert!(
            l.block_of(spec, "volumes").is_err(),
            "flow style is refused"
        );
        assert_eq!(l.text(), text);
    }

    #[test]
    fn crlf_and_missing_final_newline_survive() {
        for text in ["a: 1\r\nb:\r\n  c: 2\r\n", "a: 1\nb: 2"] {
            assert_eq!(Lines::new(text).text(), text);
        }
    }
}
