//! OTLP attribute values as text, for every consumer that keys or labels by them: scalar values written
//! out, any value rendered as a label value, text cut to a byte bound without splitting a character, and
//! a resource's `service.name`.

use std::borrow::Cow;

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};

/// A scalar attribute value as text: a string as it is, a boolean, integer or double as Rust writes it;
/// None for bytes, arrays and maps, which each consumer renders (or leaves out) its own way.
pub fn scalar_text(v: &any_value::Value) -> Option<Cow<'_, str>> {
    Some(match v {
        any_value::Value::StringValue(s) => Cow::Borrowed(s.as_str()),
        any_value::Value::BoolValue(b) => Cow::Owned(b.to_string()),
        any_value::Value::IntValue(i) => Cow::Owned(i.to_string()),
        any_value::Value::DoubleValue(d) => Cow::Owned(d.to_string()),
        _ => return None,
    })
}

/// The longest prefix of `s` within `max` bytes that ends on a character boundary.
pub fn cut_to(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Longest label value kept (bytes); longer values are cut at a character boundary. The app metric store
/// labels by it and RED, the database queries and N+1 bound their services and operations by it.
pub const MAX_LABEL_VALUE: usize = 1024;

/// Renders an attribute value as a label value: scalars as text, bytes as hex, arrays and maps as JSON.
pub fn any_value_string(v: Option<&AnyValue>) -> String {
    let Some(v) = v.and_then(|v| v.value.as_ref()) else {
        return String::new();
    };
    if let Some(text) = scalar_text(v) {
        return text.into_owned();
    }
    match v {
        any_value::Value::BytesValue(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
        other => serde_json::to_string(&AnyValue {
            value: Some(other.clone()),
        })
        .unwrap_or_default(),
    }
}

/// `s` cut to [`MAX_LABEL_VALUE`] bytes at a character boundary, in place.
pub fn cut_string(mut s: String) -> String {
    let keep = cut_str(&s).len();
    s.truncate(keep);
    s
}

/// The longest prefix of `s` within [`MAX_LABEL_VALUE`] bytes that ends on a character boundary.
pub fn cut_str(s: &str) -> &str {
    cut_to(s, MAX_LABEL_VALUE)
}

/// `service.name` of a resource (cut to [`MAX_LABEL_VALUE`]), or the SDKs' default.
pub fn service_name(attrs: &[KeyValue]) -> String {
    attrs
        .iter()
        .find(|kv| kv.key == "service.name")
        .map(|kv| cut_string(any_value_string(kv.value.as_ref())))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown_service".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_never_split_a_character_and_scalars_read_as_written() {
        assert_eq!(cut_to("héllo", 2), "h");
        assert_eq!(cut_to("héllo", 3), "hé");
        assert_eq!(cut_to("abc", 10), "abc");
        assert_eq!(
            scalar_text(&any_value::Value::DoubleValue(0.5)).as_deref(),
            Some("0.5")
        );
        assert_eq!(
            scalar_text(&any_value::Value::IntValue(-3)).as_deref(),
            Some("-3")
        );
        assert_eq!(scalar_text(&any_value::Value::BytesValue(vec![1])), None);
    }
}
