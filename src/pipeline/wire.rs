//! The protobuf wire format read in place: varints, field keys, and a walk that checks a message
//! against a table of its known fields exactly as prost's decoder does, building nothing.
//!
//! Every rule here is prost 0.14's (`prost::encoding`), since the answer a client gets must not depend
//! on which decoder read its request: a varint is at most 10 bytes and its tenth byte at most 1; a key
//! above `u32::MAX`, a wire type of 6 or 7 or a field number of 0 is an error; a known field must come
//! with its own wire type (no repeated numeric field appears in the layouts read here, so packed
//! encodings never apply); strings must be UTF-8; a group must end with its own field number; and a
//! message may nest at most [`RECURSION_LIMIT`] deep, counted as prost counts it (every nested message,
//! and every field skipped inside a group, takes one level; at the last level even an unknown field is
//! refused).

/// prost's recursion limit: the budget the top-level message's fields are read with.
pub const RECURSION_LIMIT: u32 = 100;

/// A field's wire type, the low three bits of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireType {
    /// A varint.
    Varint,
    /// Eight bytes.
    SixtyFourBit,
    /// A length, then that many bytes.
    LengthDelimited,
    /// The start of a group (deprecated; skipped as prost skips it).
    StartGroup,
    /// The end of a group.
    EndGroup,
    /// Four bytes.
    ThirtyTwoBit,
}

/// Why bytes are not a valid message. The wording is prost's, which clients were answered with before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Longer than 10 bytes, past the end, or past 64 bits.
    #[error("invalid varint")]
    InvalidVarint,
    /// A key above `u32::MAX`.
    #[error("invalid key value: {0}")]
    InvalidKey(u64),
    /// Wire type 6 or 7.
    #[error("invalid wire type value: {0}")]
    InvalidWireType(u64),
    /// Field number 0.
    #[error("invalid tag value: 0")]
    InvalidTag,
    /// An end-group key without its start, or ending another group.
    #[error("unexpected end group tag")]
    UnexpectedEndGroup,
    /// A length or fixed-size value past the end of its message.
    #[error("buffer underflow")]
    BufferUnderflow,
    /// A known field with another wire type than its own.
    #[error("invalid wire type: {actual:?} (expected {expected:?})")]
    UnexpectedWireType {
        /// The wire type found.
        actual: WireType,
        /// The field's own.
        expected: WireType,
    },
    /// A string field that is not UTF-8.
    #[error("invalid string value: data is not UTF-8 encoded")]
    InvalidString,
    /// Nested deeper than [`RECURSION_LIMIT`].
    #[error("recursion limit reached")]
    RecursionLimit,
}

/// What a known field holds, and so which wire type it must come with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind<L> {
    /// int32, int64, uint32, bool or an enum.
    Varint,
    /// fixed32.
    Fixed32,
    /// fixed64 or double.
    Fixed64,
    /// bytes.
    Bytes,
    /// string: UTF-8.
    Str,
    /// A nested message of layout `L`.
    Message(L),
}

impl<L> Kind<L> {
    fn wire_type(&self) -> WireType {
        match self {
            Kind::Varint => WireType::Varint,
            Kind::Fixed32 => WireType::ThirtyTwoBit,
            Kind::Fixed64 => WireType::SixtyFourBit,
            Kind::Bytes | Kind::Str | Kind::Message(_) => WireType::LengthDelimited,
        }
    }
}

/// A table of message layouts: the known fields of each.
pub trait Layout: Copy {
    /// What field `tag` of this message holds, or None for a field the message does not know.
    fn field(self, tag: u32) -> Option<Kind<Self>>;

    /// True when `body` is known to be a valid message of this layout read with `budget` levels left,
    /// by a shortcut for a shape common enough to be worth one; false to have [`validate`] walk it
    /// (which finds any error). A shortcut must answer true only for bytes `validate` accepts, and the
    /// messages nested in a message it accepts are not told to `validate`'s `visit`.
    #[inline]
    fn known_valid(self, body: &[u8], budget: u32) -> bool {
        let _ = (body, budget);
        false
    }
}

/// One field's value as it sits on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// A varint.
    Varint(u64),
    /// Eight bytes, little-endian.
    Fixed64(u64),
    /// Length-delimited bytes.
    Bytes(&'a [u8]),
    /// Four bytes, little-endian.
    Fixed32(u32),
    /// A group, skipped.
    Group,
}

/// A cursor over one message's bytes.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// True when every byte was read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Reads a varint.
    #[inline(always)]
    pub fn varint(&mut self) -> Result<u64, WireError> {
        let b = self.buf;
        match b.first() {
            Some(&first) if first < 0x80 => {
                self.buf = &b[1..];
                return Ok(u64::from(first));
            }
            Some(_) => {}
            None => return Err(WireError::InvalidVarint),
        }
        let mut value = 0u64;
        for (i, &byte) in b.iter().take(10).enumerate() {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                // The tenth byte holds bit 63 only.
                if i == 9 && byte >= 0x02 {
                    return Err(WireError::InvalidVarint);
                }
                self.buf = &b[i + 1..];
                return Ok(value);
            }
        }
        Err(WireError::InvalidVarint)
    }

    /// Reads a field key: its number and wire type.
    #[inline(always)]
    pub fn key(&mut self) -> Result<(u32, WireType), WireError> {
        let key = self.varint()?;
        if key > u64::from(u32::MAX) {
            return Err(WireError::InvalidKey(key));
        }
        let wire_type = match key & 7 {
            0 => WireType::Varint,
            1 => WireType::SixtyFourBit,
            2 => WireType::LengthDelimited,
            3 => WireType::StartGroup,
            4 => WireType::EndGroup,
            5 => WireType::ThirtyTwoBit,
            other => return Err(WireError::InvalidWireType(other)),
        };
        let tag = (key >> 3) as u32;
        if tag == 0 {
            return Err(WireError::InvalidTag);
        }
        Ok((tag, wire_type))
    }

    /// Takes the next `n` bytes.
    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.buf.len() {
            return Err(WireError::BufferUnderflow);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes the next byte when it is `byte` (a one-byte field key, say); false leaves the reader.
    #[inline]
    pub fn eat(&mut self, byte: u8) -> bool {
        match self.buf.split_first() {
            Some((&b, rest)) if b == byte => {
                self.buf = rest;
                true
            }
            _ => false,
        }
    }

    /// Reads a length and takes that many bytes.
    #[inline(always)]
    pub fn length_delimited(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.varint()?;
        if n > self.buf.len() as u64 {
            return Err(WireError::BufferUnderflow);
        }
        self.take(n as usize)
    }

    /// Reads eight bytes, little-endian.
    #[inline]
    pub fn fixed64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn fixed32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(b);
        Ok(u32::from_le_bytes(a))
    }

    /// Reads one field's value of wire type `wire_type` (a group is skipped with `budget` levels).
    #[inline(always)]
    pub fn value(
        &mut self,
        tag: u32,
        wire_type: WireType,
        budget: u32,
    ) -> Result<Value<'a>, WireError> {
        Ok(match wire_type {
            WireType::Varint => Value::Varint(self.varint()?),
            WireType::SixtyFourBit => Value::Fixed64(self.fixed64()?),
            WireType::LengthDelimited => Value::Bytes(self.length_delimited()?),
            WireType::ThirtyTwoBit => Value::Fixed32(self.fixed32()?),
            WireType::StartGroup | WireType::EndGroup => {
                self.skip(tag, wire_type, budget)?;
                Value::Group
            }
        })
    }

    /// Skips a field this message does not know, as prost's `skip_field` does: `budget` levels of
    /// recursion are left, and none left refuses even a varint.
    fn skip(&mut self, tag: u32, wire_type: WireType, budget: u32) -> Result<(), WireError> {
        if budget == 0 {
            return Err(WireError::RecursionLimit);
        }
        match wire_type {
            WireType::Varint => {
                self.varint()?;
            }
            WireType::SixtyFourBit => {
                self.take(8)?;
            }
            WireType::ThirtyTwoBit => {
                self.take(4)?;
            }
            WireType::LengthDelimited => {
                self.length_delimited()?;
            }
            WireType::StartGroup => loop {
                let (inner, inner_type) = self.key()?;
                if inner_type == WireType::EndGroup {
                    if inner != tag {
                        return Err(WireError::UnexpectedEndGroup);
                    }
                    break;
                }
                self.skip(inner, inner_type, budget - 1)?;
            },
            WireType::EndGroup => return Err(WireError::UnexpectedEndGroup),
        }
        Ok(())
    }
}

/// Checks that `s` is UTF-8; most strings in telemetry are ASCII, which is checked a word at a time.
#[inline]
pub fn utf8(s: &[u8]) -> Result<(), WireError> {
    if s.is_ascii() || std::str::from_utf8(s).is_ok() {
        Ok(())
    } else {
        Err(WireError::InvalidString)
    }
}

/// Checks that `buf` is a message of `layout` that prost would decode, read with `budget` levels of
/// recursion left ([`RECURSION_LIMIT`] for a top-level message). `visit` is told of every nested
/// message: the layout holding it and its field number.
pub fn validate<L: Layout>(
    buf: &[u8],
    layout: L,
    budget: u32,
    visit: &mut impl FnMut(L, u32),
) -> Result<(), WireError> {
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        let (tag, wire_type) = r.key()?;
        let Some(kind) = layout.field(tag) else {
            r.skip(tag, wire_type, budget)?;
            continue;
        };
        let expected = kind.wire_type();
        if wire_type != expected {
            return Err(WireError::UnexpectedWireType {
                actual: wire_type,
                expected,
            });
        }
        match kind {
            Kind::Varint => {
                r.varint()?;
            }
            Kind::Fixed32 => {
                r.take(4)?;
            }
            Kind::Fixed64 => {
                r.take(8)?;
            }
            Kind::Bytes => {
                r.length_delimited()?;
            }
            Kind::Str => utf8(r.length_delimited()?)?,
            Kind::Message(inner) => {
                if budget == 0 {
                    return Err(WireError::RecursionLimit);
                }
                let body = r.length_delimited()?;
                visit(layout, tag);
                if !inner.known_valid(body, budget - 1) {
                    validate(body, inner, budget - 1, visit)?;
                }
            }
        }
    }
    Ok(())
}

/// The fields of a message already checked by [`validate`], in wire order. It stops at the first
/// malformed field, which a checked message does not have.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    r: Reader<'a>,
}

impl<'a> Fields<'a> {
    /// The fields of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Fields {
            r: Reader::new(buf),
        }
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.r.buf
    }

    #[inline(always)]
    fn field(&mut self) -> Result<(u32, Value<'a>), WireError> {
        let (tag, wire_type) = self.r.key()?;
        Ok((tag, self.r.value(tag, wire_type, RECURSION_LIMIT)?))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = (u32, Value<'a>);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.r.is_empty() {
            return None;
        }
        match self.field() {
            Ok(f) => Some(f),
            Err(_) => {
                self.r = Reader::new(&[]);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layout of one message: field 1 a string, 2 a varint, 3 itself, 4 fixed32, 5 fixed64, 6 bytes.
    #[derive(Clone, Copy)]
    struct Nest;

    impl Layout for Nest {
        fn field(self, tag: u32) -> Option<Kind<Nest>> {
            match tag {
                1 => Some(Kind::Str),
                2 => Some(Kind::Varint),
                3 => Some(Kind::Message(Nest)),
                4 => Some(Kind::Fixed32),
                5 => Some(Kind::Fixed64),
                6 => Some(Kind::Bytes),
                _ => None,
            }
        }
    }

    fn check(buf: &[u8]) -> Result<(), WireError> {
        validate(buf, Nest, RECURSION_LIMIT, &mut |_, _| {})
    }

    #[test]
    fn varints_follow_prost() {
        let read = |b: &[u8]| Reader::new(b).varint();
        assert_eq!(read(&[0x05]), Ok(5));
        assert_eq!(read(&[0x80, 0x00]), Ok(0), "overlong but valid");
        assert_eq!(read(&[0xac, 0x02]), Ok(300));
        let mut max = [0xff; 10];
        max[9] = 0x01;
        assert_eq!(read(&max), Ok(u64::MAX));
        max[9] = 0x02;
        assert_eq!(read(&max), Err(WireError::InvalidVarint), "past 64 bits");
        assert_eq!(read(&[0xff; 11]), Err(WireError::InvalidVarint), "11 bytes");
        assert_eq!(read(&[0x80, 0x80]), Err(WireError::InvalidVarint), "cut");
        assert_eq!(read(&[]), Err(WireError::InvalidVarint));
    }

    #[test]
    fn keys_follow_prost() {
        let key = |b: &[u8]| Reader::new(b).key();
        assert_eq!(key(&[0x08]), Ok((1, WireType::Varint)));
        assert_eq!(key(&[0x06]), Err(WireError::InvalidWireType(6)));
        assert_eq!(key(&[0x0f]), Err(WireError::InvalidWireType(7)));
        assert_eq!(key(&[0x02]), Err(WireError::InvalidTag));
        assert_eq!(
            key(&[0x80, 0x80, 0x80, 0x80, 0x10]),
            Err(WireError::InvalidKey(1 << 32))
        );
    }

    #[test]
    fn unknown_fields_of_every_wire_type_are_skipped() {
        // 7: varint, 8: fixed64, 9: bytes, 10: group holding a varint and a nested group, 11: fixed32.
        let mut b = vec![0x38, 0x96, 0x01];
        b.extend([0x41, 1, 2, 3, 4, 5, 6, 7, 8]);
        b.extend([0x4a, 0x02, 0xff, 0xfe]);
        b.extend([0x53, 0x08, 0x01, 0x5b, 0x5c, 0x54]);
        b.extend([0x5d, 1, 2, 3, 4]);
        assert_eq!(check(&b), Ok(()));
        // A group ended by another field number, or an end without a start.
        assert_eq!(
            check(&[0x53, 0x5c]),
            Err(WireError::UnexpectedEndGroup),
            "group 10 ended as 11"
        );
        assert_eq!(check(&[0x54]), Err(WireError::UnexpectedEndGroup));
        assert_eq!(check(&[0x53]), Err(WireError::InvalidVarint), "never ended");
        assert_eq!(check(&[0x41, 1, 2]), Err(WireError::BufferUnderflow));
        assert_eq!(check(&[0x5d, 1]), Err(WireError::BufferUnderflow));
        assert_eq!(check(&[0x4a, 0x05, 1]), Err(WireError::BufferUnderflow));
    }

    #[test]
    fn known_fields_need_their_own_wire_type_and_strings_utf8() {
        assert_eq!(check(&[0x0a, 0x02, b'o', b'k']), Ok(()));
        assert_eq!(
            check(&[0x0a, 0x02, 0xc3, 0x28]),
            Err(WireError::InvalidString)
        );
        // A string sent as a varint; a varint sent packed (length-delimited); a fixed32 as fixed64.
        assert!(matches!(
            check(&[0x08, 0x01]),
            Err(WireError::UnexpectedWireType { .. })
        ));
        assert!(matches!(
            check(&[0x12, 0x01, 0x01]),
            Err(WireError::UnexpectedWireType { .. })
        ));
        assert!(matches!(
            check(&[0x21, 1, 2, 3, 4, 5, 6, 7, 8]),
            Err(WireError::UnexpectedWireType { .. })
        ));
        // Bytes are not checked as UTF-8; empty and zero-length values are fine.
        assert_eq!(check(&[0x32, 0x02, 0xc3, 0x28]), Ok(()));
        assert_eq!(check(&[]), Ok(()));
        assert_eq!(check(&[0x0a, 0x00, 0x1a, 0x00]), Ok(()));
        // A nested message that overruns its parent.
        assert_eq!(
            check(&[0x1a, 0x03, 0x0a, 0x05, b'a']),
            Err(WireError::BufferUnderflow)
        );
    }

    /// `depth` messages nested in field 3, the innermost holding `inner`.
    fn nested(depth: usize, inner: &[u8]) -> Vec<u8> {
        let mut b = inner.to_vec();
        for _ in 0..depth {
            let mut outer = vec![0x1a];
            let mut n = b.len();
            while n >= 0x80 {
                outer.push((n as u8 & 0x7f) | 0x80);
                n >>= 7;
            }
            outer.push(n as u8);
            outer.extend(b);
            b = outer;
        }
        b
    }

    #[test]
    fn nesting_stops_where_prost_stops() {
        // 100 nested messages decode; the 101st does not.
        assert_eq!(check(&nested(100, &[])), Ok(()));
        assert_eq!(check(&nested(101, &[])), Err(WireError::RecursionLimit));
        // At the last level known scalars are read, but even an unknown varint is refused.
        assert_eq!(check(&nested(100, &[0x10, 0x01])), Ok(()));
        assert_eq!(
            check(&nested(100, &[0x38, 0x01])),
            Err(WireError::RecursionLimit)
        );
        assert_eq!(check(&nested(99, &[0x38, 0x01])), Ok(()));
        // Each field inside a group takes a level.
        assert_eq!(check(&nested(99, &[0x53, 0x54])), Ok(()));
        assert_eq!(
            check(&nested(99, &[0x53, 0x08, 0x01, 0x54])),
            Err(WireError::RecursionLimit)
        );
    }

    #[test]
    fn fields_iterate_in_wire_order_and_skip_groups() {
        let b = [0x08, 0x07, 0x53, 0x08, 0x01, 0x54, 0x0a, 0x01, b'x'];
        let got: Vec<_> = Fields::new(&b).collect();
        assert_eq!(
            got,
            vec![
                (1, Value::Varint(7)),
                (10, Value::Group),
                (1, Value::Bytes(b"x"))
            ]
        );
    }
}
