//! JSON manifests (`kubectl get -o json`): one or more JSON values in a row. A value inject does not
//! change is copied byte for byte; a changed one is written again with its own key order (yaml_serde's
//! mapping keeps insertion order) and its own indentation. That is byte for byte for the layout kubectl
//! and serde_json write (`"key": value`, one key per line); other spacing is normalised in changed
//! documents only.

use serde::Serialize;
use serde_json::ser::{PrettyFormatter, Serializer};
use yaml_serde::Value;

use super::{apply_value, Decided, Refused};

/// Decides the changes to one document, given its number (from 1) and value.
pub type Decide<'a> = dyn FnMut(usize, &Value) -> Result<Vec<Decided>, Refused> + 'a;

/// Runs one pass over a JSON stream.
pub fn pass(input: &str, decide: &mut Decide<'_>) -> Result<String, Refused> {
    let mut out = String::with_capacity(input.len() + 4096);
    let mut stream = serde_json::Deserializer::from_str(input).into_iter::<Value>();
    let mut prev = 0;
    let mut n = 0;
    while let Some(next) = stream.next() {
        n += 1;
        let mut value = next.map_err(|e| Refused {
            document: format!("document {n}"),
            reason: format!("not valid JSON: {e}"),
        })?;
        let end = stream.byte_offset();
        let slice = &input[prev..end];
        let body = slice.trim_start();
        out.push_str(&slice[..slice.len() - body.len()]);
        prev = end;
        let decided = decide(n, &value)?;
        if decided.is_empty() {
            out.push_str(body);
            continue;
        }
        let label = super::json_label(n, &value);
        apply_value(&mut value, &decided).map_err(|reason| Refused {
            document: label,
            reason,
        })?;
        out.push_str(&write(&value, indent_of(body)).map_err(|e| Refused {
            document: format!("document {n}"),
            reason: format!("cannot write JSON: {e}"),
        })?);
    }
    out.push_str(&input[prev..]);
    Ok(out)
}

/// The indentation of a document's second line (None: all on one line).
fn indent_of(body: &str) -> Option<String> {
    let second = body.split('\n').nth(1)?;
    let second = second.trim_end_matches('\r');
    let ws = &second[..second.len() - second.trim_start().len()];
    Some(ws.to_owned())
}

fn write(value: &Value, indent: Option<String>) -> Result<String, serde_json::Error> {
    match indent {
        None => serde_json::to_string(value),
        Some(ind) => {
            let mut buf = Vec::new();
            let mut ser =
                Serializer::with_formatter(&mut buf, PrettyFormatter::with_indent(ind.as_bytes()));
            value.serialize(&mut ser)?;
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
    }
}
