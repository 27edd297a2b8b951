//! OTLP attribute values as text, for every consumer that keys or labels by them: scalar values written
//! out, and text cut to a byte bound without splitting a character.

use std::borrow::Cow;

use opentelemetry_proto::tonic::common::v1::any_value;

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
