//! The borrowed view of an OTLP trace export that the trace consumers read: the request's protobuf
//! bytes, checked once as prost would decode them, then read in place, resource by resource and span
//! by span, with nothing allocated per span or attribute.
//!
//! Why not prost: measured on `cargo bench --bench otlp` (100 spans of an HTTP service per request),
//! decoding with prost into an owned `ExportTraceServiceRequest` and handing it to RED ran at
//! 0.89–0.93× of prost's decode alone; a profile of the gRPC handler put 53% of its time in prost's
//! decoding, 14% in freeing the decoded request, glibc's allocator ~35% of it all, RED's own work ~1%.
//! The consumers read a dozen fields of each span; building every string, vector and map of the
//! request to read them was nearly all the cost. The reader is written by hand from the OTLP
//! layouts (`LAYOUT`) rather than generated, because the one thing a generator would save, the field
//! table, is 40 lines, while the rules that matter (what prost refuses, how repeated occurrences of
//! a field merge) have to be prost's exactly and are checked against prost by a differential test and
//! a fuzz target (`fuzz/fuzz_targets/traces_view.rs`).
//!
//! Merging follows prost: a scalar field sent twice keeps the last value; a message field sent twice
//! (a span's `status`, a resource spans' `resource`, an attribute's `value`) is the merge of all its
//! occurrences, read here as the fields of every occurrence in order; repeated fields keep every
//! element. A oneof (`AnyValue`) holds its last variant.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use super::wire::{self, Fields, Kind, Layout, Reader, Value, WireError, RECURSION_LIMIT};

/// The OTLP messages a trace export holds, as prost 0.14's `opentelemetry-proto` 0.33 knows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Otlp {
    Request,
    ResourceSpans,
    Resource,
    EntityRef,
    ScopeSpans,
    Scope,
    Span,
    Event,
    Link,
    Status,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
}

impl Layout for Otlp {
    #[inline]
    fn field(self, tag: u32) -> Option<Kind<Otlp>> {
        use Kind::*;
        use Otlp::*;
        Some(match (self, tag) {
            (Request, 1) => Message(ResourceSpans),
            (ResourceSpans, 1) => Message(Resource),
            (ResourceSpans, 2) => Message(ScopeSpans),
            (ResourceSpans, 3) => Str,
            (Resource, 1) => Message(KeyValue),
            (Resource, 2) => Varint,
            (Resource, 3) => Message(EntityRef),
            (EntityRef, 1..=4) => Str,
            (ScopeSpans, 1) => Message(Scope),
            (ScopeSpans, 2) => Message(Span),
            (ScopeSpans, 3) => Str,
            (Scope, 1 | 2) => Str,
            (Scope, 3) => Message(KeyValue),
            (Scope, 4) => Varint,
            (Span, 1 | 2 | 4) => Bytes,
            (Span, 3 | 5) => Str,
            (Span, 6 | 10 | 12 | 14) => Varint,
            (Span, 7 | 8) => Fixed64,
            (Span, 9) => Message(KeyValue),
            (Span, 11) => Message(Event),
            (Span, 13) => Message(Link),
            (Span, 15) => Message(Status),
            (Span, 16) => Fixed32,
            (Event, 1) => Fixed64,
            (Event, 2) => Str,
            (Event, 3) => Message(KeyValue),
            (Event, 4) => Varint,
            (Link, 1 | 2) => Bytes,
            (Link, 3) => Str,
            (Link, 4) => Message(KeyValue),
            (Link, 5) => Varint,
            (Link, 6) => Fixed32,
            (Status, 2) => Str,
            (Status, 3) => Varint,
            (KeyValue, 1) => Str,
            (KeyValue, 2) => Message(AnyValue),
            (KeyValue, 3) => Varint,
            (AnyValue, 1) => Str,
            (AnyValue, 2 | 3 | 8) => Varint,
            (AnyValue, 4) => Fixed64,
            (AnyValue, 5) => Message(ArrayValue),
            (AnyValue, 6) => Message(KeyValueList),
            (AnyValue, 7) => Bytes,
            (ArrayValue, 1) => Message(AnyValue),
            (KeyValueList, 1) => Message(KeyValue),
            _ => return None,
        })
    }

    /// An attribute as every SDK sends it (a key, then one scalar value) is checked without the walk;
    /// it is most of a request's fields.
    #[inline]
    fn known_valid(self, body: &[u8], budget: u32) -> bool {
        // The value is a message a level down; its scalars need no level of their own.
        if self != Otlp::KeyValue || budget == 0 {
            return false;
        }
        let Some((key, any)) = plain_key_value(body) else {
            return false;
        };
        wire::utf8(key).is_ok()
            && match plain_any_value(any) {
                Some((1, Value::Bytes(s))) => wire::utf8(s).is_ok(),
                Some(_) => true,
                None => false,
            }
    }
}

/// The usual shape of a `KeyValue`: its key once, then its value once, nothing else; their bytes.
/// None for any other shape, valid or not.
#[inline]
fn plain_key_value(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut r = Reader::new(body);
    if !r.eat(0x0a) {
        return None;
    }
    let key = r.length_delimited().ok()?;
    if !r.eat(0x12) {
        return None;
    }
    let any = r.length_delimited().ok()?;
    r.is_empty().then_some((key, any))
}

/// The usual shape of an `AnyValue`: nothing, or one string, bool, int, double or bytes variant and
/// nothing else; its field number (0 for none) and its wire value. None for any other shape, valid or
/// not. A string is not checked here.
#[inline]
fn plain_any_value(any: &[u8]) -> Option<(u32, Value<'_>)> {
    let mut r = Reader::new(any);
    let variant = if r.is_empty() {
        (0, Value::Group)
    } else if r.eat(0x0a) {
        (1, Value::Bytes(r.length_delimited().ok()?))
    } else if r.eat(0x10) {
        (2, Value::Varint(r.varint().ok()?))
    } else if r.eat(0x18) {
        (3, Value::Varint(r.varint().ok()?))
    } else if r.eat(0x21) {
        (4, Value::Fixed64(r.fixed64().ok()?))
    } else if r.eat(0x3a) {
        (7, Value::Bytes(r.length_delimited().ok()?))
    } else {
        return None;
    };
    r.is_empty().then_some(variant)
}

/// Why bytes are not an OTLP trace export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("failed to decode Protobuf message: {0}")]
pub struct InvalidTraces(pub WireError);

/// An OTLP trace export request (`ExportTraceServiceRequest`): its protobuf bytes checked and read in
/// place, or (from OTLP/JSON) a request serde already decoded, read through the same view so that
/// every consumer reads one form and neither is encoded into the other to be read.
#[derive(Debug, Clone, Copy)]
pub struct TraceView<'a> {
    source: Part<'a, ExportTraceServiceRequest>,
    spans: u64,
}

/// What a view reads: a message's protobuf bytes, or the message decoded.
#[derive(Debug)]
enum Part<'a, T: ?Sized> {
    Wire(&'a [u8]),
    Decoded(&'a T),
}

impl<T: ?Sized> Clone for Part<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: ?Sized> Copy for Part<'_, T> {}

impl<T: ?Sized + PartialEq> PartialEq for Part<'_, T> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Part::Wire(a), Part::Wire(b)) => a == b,
            (Part::Decoded(a), Part::Decoded(b)) => a == b,
            _ => false,
        }
    }
}

/// One of two iterators of the same items: a view's wire reading or its decoded one.
enum Either<A, B> {
    Wire(A),
    Decoded(B),
}

impl<T, A: Iterator<Item = T>, B: Iterator<Item = T>> Iterator for Either<A, B> {
    type Item = T;

    #[inline]
    fn next(&mut self) -> Option<T> {
        match self {
            Either::Wire(a) => a.next(),
            Either::Decoded(b) => b.next(),
        }
    }
}

impl<'a> TraceView<'a> {
    /// Checks `bytes` as prost would decode an `ExportTraceServiceRequest`: refused exactly when prost
    /// refuses them.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, InvalidTraces> {
        let mut spans = 0u64;
        let mut count = |layout: Otlp, tag: u32| {
            if layout == Otlp::ScopeSpans && tag == 2 {
                spans += 1;
            }
        };
        wire::validate(bytes, Otlp::Request, RECURSION_LIMIT, &mut count).map_err(InvalidTraces)?;
        Ok(TraceView {
            source: Part::Wire(bytes),
            spans,
        })
    }

    /// A request already decoded (an OTLP/JSON body), read through the view.
    pub fn decoded(request: &'a ExportTraceServiceRequest) -> Self {
        let scopes = request.resource_spans.iter().flat_map(|r| &r.scope_spans);
        TraceView {
            source: Part::Decoded(request),
            spans: scopes.map(|s| s.spans.len() as u64).sum(),
        }
    }

    /// The request's protobuf bytes when it came as protobuf.
    pub fn wire_bytes(&self) -> Option<&'a [u8]> {
        match self.source {
            Part::Wire(b) => Some(b),
            Part::Decoded(_) => None,
        }
    }

    /// The request in protobuf, as the forwarder takes it: a copy of the bytes it came as, or the
    /// decoded request encoded.
    pub fn to_protobuf(&self) -> bytes::Bytes {
        match self.source {
            Part::Wire(b) => bytes::Bytes::copy_from_slice(b),
            Part::Decoded(r) => prost::Message::encode_to_vec(r).into(),
        }
    }

    /// Spans in the request: the items partial success counts.
    pub fn span_count(&self) -> u64 {
        self.spans
    }

    /// The request's resource spans, in order.
    pub fn resource_spans(&self) -> impl Iterator<Item = ResourceSpansView<'a>> {
        match self.source {
            Part::Wire(b) => Either::Wire(messages(b, 1).map(|b| ResourceSpansView {
                part: Part::Wire(b),
            })),
            Part::Decoded(r) => {
                Either::Decoded(r.resource_spans.iter().map(|r| ResourceSpansView {
                    part: Part::Decoded(r),
                }))
            }
        }
    }
}

/// The length-delimited occurrences of field `tag` in a checked message.
fn messages(body: &[u8], tag: u32) -> impl Iterator<Item = &[u8]> {
    Fields::new(body).filter_map(move |(t, v)| match v {
        Value::Bytes(b) if t == tag => Some(b),
        _ => None,
    })
}

/// The fields of every occurrence of message field `tag` in `body`: the fields of their merge.
fn merged(body: &[u8], tag: u32) -> impl Iterator<Item = (u32, Value<'_>)> {
    messages(body, tag).flat_map(Fields::new)
}

/// One resource's spans (`ResourceSpans`).
#[derive(Debug, Clone, Copy)]
pub struct ResourceSpansView<'a> {
    part: Part<'a, ResourceSpans>,
}

impl<'a> ResourceSpansView<'a> {
    /// The resource's attributes, in order.
    pub fn resource_attributes(&self) -> impl Iterator<Item = Attribute<'a>> {
        match self.part {
            Part::Wire(body) => Either::Wire(merged(body, 1).filter_map(|(t, v)| match v {
                Value::Bytes(b) if t == 1 => Some(Attribute::read(b)),
                _ => None,
            })),
            Part::Decoded(r) => Either::Decoded(
                r.resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .map(Attribute::decoded),
            ),
        }
    }

    /// The resource's spans by instrumentation scope.
    pub fn scope_spans(&self) -> impl Iterator<Item = ScopeSpansView<'a>> {
        match self.part {
            Part::Wire(body) => Either::Wire(messages(body, 2).map(|b| ScopeSpansView {
                part: Part::Wire(b),
            })),
            Part::Decoded(r) => Either::Decoded(r.scope_spans.iter().map(|s| ScopeSpansView {
                part: Part::Decoded(s),
            })),
        }
    }

    /// Every span of the resource, scope after scope.
    pub fn spans(&self) -> impl Iterator<Item = SpanView<'a>> {
        self.scope_spans().flat_map(|s| s.spans())
    }

    /// Every span of the resource with what `P` picked of its attributes in the same walk (None when
    /// they were not offered: walk [`SpanView::attributes`] if they are needed).
    pub fn spans_picking<P: AttributePick<'a>>(
        &self,
    ) -> impl Iterator<Item = (SpanView<'a>, Option<P>)> {
        self.scope_spans().flat_map(|s| s.spans_picking())
    }
}

/// One instrumentation scope's spans (`ScopeSpans`).
#[derive(Debug, Clone, Copy)]
pub struct ScopeSpansView<'a> {
    part: Part<'a, ScopeSpans>,
}

impl<'a> ScopeSpansView<'a> {
    /// The scope's name (empty when not sent).
    pub fn scope_name(&self) -> &'a str {
        match self.part {
            Part::Wire(body) => last_str(merged(body, 1), 1),
            Part::Decoded(s) => s.scope.as_ref().map_or("", |s| s.name.as_str()),
        }
    }

    /// The scope's version (empty when not sent).
    pub fn scope_version(&self) -> &'a str {
        match self.part {
            Part::Wire(body) => last_str(merged(body, 1), 2),
            Part::Decoded(s) => s.scope.as_ref().map_or("", |s| s.version.as_str()),
        }
    }

    /// The scope's spans, in order.
    pub fn spans(&self) -> impl Iterator<Item = SpanView<'a>> {
        match self.part {
            Part::Wire(body) => Either::Wire(messages(body, 2).map(SpanView::read)),
            Part::Decoded(s) => Either::Decoded(s.spans.iter().map(SpanView::decoded)),
        }
    }

    /// The scope's spans with what `P` picked of their attributes (see
    /// [`ResourceSpansView::spans_picking`]).
    pub fn spans_picking<P: AttributePick<'a>>(
        &self,
    ) -> impl Iterator<Item = (SpanView<'a>, Option<P>)> {
        match self.part {
            Part::Wire(body) => Either::Wire(messages(body, 2).map(SpanView::read_picking)),
            Part::Decoded(s) => {
                Either::Decoded(s.spans.iter().map(|s| (SpanView::decoded(s), None)))
            }
        }
    }
}

/// What a consumer picks from a span's attributes, offered them in order while the span is read, so
/// that the attributes are walked once with the span rather than again after it.
pub trait AttributePick<'a>: Default {
    /// Whether a span of `kind` (as read so far: a kind after the attributes on the wire is seen only
    /// later) needs its attributes picked.
    fn wanted(kind: i32) -> bool;

    /// Takes one attribute.
    fn offer(&mut self, attribute: Attribute<'a>);
}

/// Picks nothing.
impl<'a> AttributePick<'a> for () {
    fn wanted(_: i32) -> bool {
        false
    }

    fn offer(&mut self, _: Attribute<'a>) {}
}

/// The last string field `tag` among `fields`, or empty.
fn last_str<'a>(fields: impl Iterator<Item = (u32, Value<'a>)>, tag: u32) -> &'a str {
    let mut out: &[u8] = &[];
    for (t, v) in fields {
        if let (true, Value::Bytes(b)) = (t == tag, v) {
            out = b;
        }
    }
    std::str::from_utf8(out).unwrap_or_default()
}

/// One span: the fields the trace consumers read, and its attributes on demand.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpanView<'a> {
    /// 16 bytes when valid.
    pub trace_id: &'a [u8],
    /// 8 bytes when valid.
    pub span_id: &'a [u8],
    /// 8 bytes, or empty for a root span.
    pub parent_span_id: &'a [u8],
    /// The span's name.
    pub name: &'a str,
    /// `SpanKind` as sent (0 when not sent).
    pub kind: i32,
    /// Start, Unix nanoseconds.
    pub start_time_unix_nano: u64,
    /// End, Unix nanoseconds.
    pub end_time_unix_nano: u64,
    /// `StatusCode` as sent (0, unset, when the span has no status).
    pub status_code: i32,
    /// The span's bytes from its first attribute to the end of its last, or its decoded attributes.
    attributes: Part<'a, [KeyValue]>,
}

impl<'a> SpanView<'a> {
    /// Checks `bytes` as prost would decode a `Span` on its own and reads it (tests, benchmarks).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, InvalidTraces> {
        wire::validate(bytes, Otlp::Span, RECURSION_LIMIT, &mut |_, _| {})
            .map_err(InvalidTraces)?;
        Ok(SpanView::read(bytes))
    }

    /// Reads a checked span: one pass over its fields.
    fn read(body: &'a [u8]) -> Self {
        Self::read_picking::<()>(body).0
    }

    /// Reads a checked span and, in the same walk, offers its attributes to a `P` when the span's kind
    /// as read so far is one `P` wants (or not read yet); the `P` when it was offered every attribute,
    /// None when the caller must walk [`SpanView::attributes`] itself.
    fn read_picking<P: AttributePick<'a>>(body: &'a [u8]) -> (Self, Option<P>) {
        let mut picked: Option<Option<P>> = None;
        let mut s = SpanView {
            trace_id: &[],
            span_id: &[],
            parent_span_id: &[],
            name: "",
            kind: 0,
            start_time_unix_nano: 0,
            end_time_unix_nano: 0,
            status_code: 0,
            attributes: Part::Wire(&[]),
        };
        let mut name: &[u8] = &[];
        let mut fields = Fields::new(body);
        let mut before = fields.rest();
        // The bytes from the first attribute on, and those after the last one.
        let mut first_attribute: &[u8] = &[];
        let mut after_attributes: &[u8] = &[];
        while let Some((tag, v)) = fields.next() {
            match (tag, v) {
                (1, Value::Bytes(b)) => s.trace_id = b,
                (2, Value::Bytes(b)) => s.span_id = b,
                (4, Value::Bytes(b)) => s.parent_span_id = b,
                (5, Value::Bytes(b)) => name = b,
                (6, Value::Varint(k)) => s.kind = k as i32,
                (7, Value::Fixed64(t)) => s.start_time_unix_nano = t,
                (8, Value::Fixed64(t)) => s.end_time_unix_nano = t,
                (9, v) => {
                    if first_attribute.is_empty() {
                        first_attribute = before;
                    }
                    after_attributes = fields.rest();
                    // Decided once, at the first attribute: offer all of them or none.
                    let pick = picked.get_or_insert_with(|| P::wanted(s.kind).then(P::default));
                    if let (Some(p), Value::Bytes(b)) = (pick, v) {
                        p.offer(Attribute::read(b));
                    }
                }
                (15, Value::Bytes(status)) => {
                    for (t, v) in Fields::new(status) {
                        if let (3, Value::Varint(c)) = (t, v) {
                            s.status_code = c as i32;
                        }
                    }
                }
                _ => {}
            }
            before = fields.rest();
        }
        s.name = std::str::from_utf8(name).unwrap_or_default();
        // Only the span's attributes are walked again, not its events, links or status after them.
        s.attributes =
            Part::Wire(&first_attribute[..first_attribute.len() - after_attributes.len()]);
        // A span without attributes was offered all of them, none.
        let picked = picked.unwrap_or_else(|| Some(P::default()));
        (s, picked)
    }

    /// A decoded span, read through the view.
    pub fn decoded(span: &'a Span) -> Self {
        SpanView {
            trace_id: &span.trace_id,
            span_id: &span.span_id,
            parent_span_id: &span.parent_span_id,
            name: &span.name,
            kind: span.kind,
            start_time_unix_nano: span.start_time_unix_nano,
            end_time_unix_nano: span.end_time_unix_nano,
            status_code: span.status.as_ref().map_or(0, |s| s.code),
            attributes: Part::Decoded(&span.attributes),
        }
    }

    /// The span's attributes, in order.
    pub fn attributes(&self) -> impl Iterator<Item = Attribute<'a>> {
        match self.attributes {
            Part::Wire(b) => Either::Wire(messages(b, 9).map(Attribute::read)),
            Part::Decoded(kvs) => Either::Decoded(kvs.iter().map(Attribute::decoded)),
        }
    }
}

/// One attribute (`KeyValue`), read in place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Attribute<'a> {
    /// The key's bytes (UTF-8: checked).
    pub key: &'a [u8],
    /// Where its value is read from, when asked for: most attributes are passed over by their key.
    source: AttributeSource<'a>,
}

/// Where an attribute's value is read from.
#[derive(Debug, Clone, Copy, PartialEq)]
enum AttributeSource<'a> {
    /// The whole `KeyValue` on the wire, and its value's `AnyValue` bytes when the value came once, as
    /// it does from every SDK; when it came more than once, `merged` is set and the value is read from
    /// the merge of all its occurrences.
    Wire {
        raw: &'a [u8],
        any: &'a [u8],
        merged: bool,
    },
    /// A decoded `KeyValue`.
    Decoded(&'a KeyValue),
}

/// An attribute's value, borrowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttributeValue<'a> {
    /// No value, or an `AnyValue` without one.
    Empty,
    /// `string_value`.
    Str(&'a str),
    /// `bool_value`.
    Bool(bool),
    /// `int_value`.
    Int(i64),
    /// `double_value`.
    Double(f64),
    /// `bytes_value`.
    Bytes(&'a [u8]),
    /// `array_value`, `kvlist_value` or `string_value_strindex`: read through
    /// [`Attribute::to_key_value`] when needed.
    Other,
}

impl<'a> Attribute<'a> {
    #[inline]
    fn read(raw: &'a [u8]) -> Self {
        if let Some((key, any)) = plain_key_value(raw) {
            let merged = false;
            let source = AttributeSource::Wire { raw, any, merged };
            return Attribute { key, source };
        }
        let (mut key, mut any, mut values): (&[u8], &[u8], u32) = (&[], &[], 0);
        for (tag, v) in Fields::new(raw) {
            match (tag, v) {
                (1, Value::Bytes(b)) => key = b,
                (2, Value::Bytes(b)) => {
                    any = b;
                    values += 1;
                }
                _ => {}
            }
        }
        let merged = values > 1;
        let source = AttributeSource::Wire { raw, any, merged };
        Attribute { key, source }
    }

    fn decoded(kv: &'a KeyValue) -> Self {
        Attribute {
            key: kv.key.as_bytes(),
            source: AttributeSource::Decoded(kv),
        }
    }

    /// The key.
    pub fn key(&self) -> &'a str {
        std::str::from_utf8(self.key).unwrap_or_default()
    }

    /// The value.
    pub fn value(&self) -> AttributeValue<'a> {
        // The value's last variant across every occurrence of the value: its field number in
        // `AnyValue` (0 for none) and its wire value.
        let (raw, any, merged_value) = match self.source {
            AttributeSource::Wire { raw, any, merged } => (raw, any, merged),
            AttributeSource::Decoded(kv) => return decoded_value(kv),
        };
        let plain = match merged_value {
            false => plain_any_value(any),
            true => None,
        };
        let variant = plain.unwrap_or_else(|| {
            let mut variant = (0, Value::Group);
            for (t, v) in merged(raw, 2) {
                if (1..=8).contains(&t) {
                    variant = (t, v);
                }
            }
            variant
        });
        match variant {
            (1, Value::Bytes(b)) => AttributeValue::Str(std::str::from_utf8(b).unwrap_or_default()),
            (2, Value::Varint(v)) => AttributeValue::Bool(v != 0),
            (3, Value::Varint(v)) => AttributeValue::Int(v as i64),
            (4, Value::Fixed64(v)) => AttributeValue::Double(f64::from_bits(v)),
            (7, Value::Bytes(b)) => AttributeValue::Bytes(b),
            (5 | 6 | 8, _) => AttributeValue::Other,
            _ => AttributeValue::Empty,
        }
    }

    /// The attribute decoded by prost, for the rare reader that needs a value of another kind
    /// (allocates).
    pub fn to_key_value(&self) -> Option<KeyValue> {
        match self.source {
            AttributeSource::Wire { raw, .. } => prost::Message::decode(raw).ok(),
            AttributeSource::Decoded(kv) => Some(kv.clone()),
        }
    }
}

/// A decoded attribute's value, as the view words it.
fn decoded_value(kv: &KeyValue) -> AttributeValue<'_> {
    use any_value::Value as V;
    match kv.value.as_ref().and_then(|a| a.value.as_ref()) {
        None => AttributeValue::Empty,
        Some(V::StringValue(s)) => AttributeValue::Str(s),
        Some(V::BoolValue(b)) => AttributeValue::Bool(*b),
        Some(V::IntValue(i)) => AttributeValue::Int(*i),
        Some(V::DoubleValue(d)) => AttributeValue::Double(*d),
        Some(V::BytesValue(b)) => AttributeValue::Bytes(b),
        Some(V::ArrayValue(_) | V::KvlistValue(_) | V::StringValueStrindex(_)) => {
            AttributeValue::Other
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
    use prost::Message;

    fn kv(k: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn request(spans: Vec<Span>, resource: Vec<KeyValue>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: resource,
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// A field key and a length prefix.
    fn len_field(tag: u32, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, &mut out);
        prost::encoding::encode_varint(body.len() as u64, &mut out);
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn reads_what_prost_decodes() {
        let span = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            parent_span_id: vec![3; 8],
            name: "GET /x".into(),
            kind: 2,
            start_time_unix_nano: 10,
            end_time_unix_nano: 20,
            attributes: vec![
                kv("http.route", any_value::Value::StringValue("/x".into())),
                kv("n", any_value::Value::IntValue(-5)),
                kv("b", any_value::Value::BoolValue(true)),
                kv("d", any_value::Value::DoubleValue(0.5)),
                kv("y", any_value::Value::BytesValue(vec![9])),
            ],
            status: Some(Status {
                code: 2,
                message: "boom".into(),
            }),
            ..Default::default()
        };
        let req = request(
            vec![span, Span::default()],
            vec![kv(
                "service.name",
                any_value::Value::StringValue("shop".into()),
            )],
        );
        let bytes = req.encode_to_vec();
        let view = TraceView::parse(&bytes).unwrap();
        assert_eq!(view.span_count(), 2);
        let rs: Vec<_> = view.resource_spans().collect();
        assert_eq!(rs.len(), 1);
        let res: Vec<_> = rs[0].resource_attributes().collect();
        assert_eq!(res[0].key(), "service.name");
        assert_eq!(res[0].value(), AttributeValue::Str("shop"));
        let spans: Vec<_> = rs[0].spans().collect();
        let s = spans[0];
        assert_eq!(s.trace_id, &[1; 16]);
        assert_eq!(s.parent_span_id, &[3; 8]);
        assert_eq!((s.name, s.kind, s.status_code), ("GET /x", 2, 2));
        assert_eq!((s.start_time_unix_nano, s.end_time_unix_nano), (10, 20));
        let values: Vec<_> = s.attributes().map(|a| a.value()).collect();
        assert_eq!(
            values,
            vec![
                AttributeValue::Str("/x"),
                AttributeValue::Int(-5),
                AttributeValue::Bool(true),
                AttributeValue::Double(0.5),
                AttributeValue::Bytes(&[9]),
            ]
        );
        assert_eq!(spans[1].attributes().count(), 0);
        assert_eq!(spans[1].name, "");
        // An empty request and an empty body.
        assert_eq!(TraceView::parse(&[]).unwrap().span_count(), 0);
        assert_eq!(TraceView::parse(&[0x0a, 0x00]).unwrap().span_count(), 0);
    }

    #[test]
    fn repeated_fields_merge_as_prost_merges() {
        // A span whose name, kind and end come twice (the last wins), whose status comes twice (the
        // two merge: the code of the first stays when the second has none), and whose attribute value
        // comes twice (the last variant wins, an empty one changes nothing).
        let mut span = Span {
            trace_id: vec![1; 16],
            name: "first".into(),
            kind: 1,
            end_time_unix_nano: 5,
            status: Some(Status {
                code: 2,
                message: String::new(),
            }),
            attributes: vec![kv("k", any_value::Value::StringValue("a".into()))],
            ..Default::default()
        }
        .encode_to_vec();
        span.extend(
            Span {
                name: "second".into(),
                kind: 3,
                end_time_unix_nano: 7,
                status: Some(Status {
                    code: 0,
                    message: "m".into(),
                }),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        // Field 9 (the attribute) again: key "k", value {int 4}, then value {} (empty).
        let mut attr = len_field(1, b"k");
        attr.extend(len_field(2, &[0x18, 0x04]));
        attr.extend(len_field(2, &[]));
        span.extend(len_field(9, &attr));
        let req = len_field(1, &len_field(2, &len_field(2, &span)));
        let want = ExportTraceServiceRequest::decode(&req[..]).unwrap();
        let p = &want.resource_spans[0].scope_spans[0].spans[0];
        let view = TraceView::parse(&req).unwrap();
        let v = view
            .resource_spans()
            .next()
            .unwrap()
            .spans()
            .next()
            .unwrap();
        assert_eq!(v.name, p.name);
        assert_eq!(v.kind, p.kind);
        assert_eq!(v.end_time_unix_nano, p.end_time_unix_nano);
        assert_eq!(v.trace_id, &p.trace_id[..]);
        assert_eq!(v.status_code, p.status.as_ref().unwrap().code);
        assert_eq!(
            v.status_code, 2,
            "an unset code in the second status merges"
        );
        let attrs: Vec<_> = v.attributes().collect();
        assert_eq!(attrs.len(), p.attributes.len());
        assert_eq!(attrs[1].value(), AttributeValue::Int(4));
        assert_eq!(
            p.attributes[1].value.as_ref().unwrap().value,
            Some(any_value::Value::IntValue(4))
        );
        assert_eq!(attrs[1].to_key_value().as_ref(), Some(&p.attributes[1]));
    }

    #[test]
    fn resources_sent_twice_merge_their_attributes() {
        let a = Resource {
            attributes: vec![kv("x", any_value::Value::IntValue(1))],
            ..Default::default()
        }
        .encode_to_vec();
        let b = Resource {
            attributes: vec![kv(
                "service.name",
                any_value::Value::StringValue("late".into()),
            )],
            ..Default::default()
        }
        .encode_to_vec();
        let mut rs = len_field(1, &a);
        rs.extend(len_field(1, &b));
        let req = len_field(1, &rs);
        let want = ExportTraceServiceRequest::decode(&req[..]).unwrap();
        let view = TraceView::parse(&req).unwrap();
        let keys: Vec<_> = view
            .resource_spans()
            .next()
            .unwrap()
            .resource_attributes()
            .map(|a| a.key().to_owned())
            .collect();
        let prost_keys: Vec<_> = want.resource_spans[0]
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .map(|kv| kv.key.clone())
            .collect();
        assert_eq!(keys, prost_keys);
        assert_eq!(keys, vec!["x", "service.name"]);
    }

    #[test]
    fn refuses_what_prost_refuses() {
        let ok = request(
            vec![Span {
                name: "n".into(),
                ..Default::default()
            }],
            vec![],
        )
        .encode_to_vec();
        assert!(TraceView::parse(&ok).is_ok());
        // The span name (field 5) made invalid UTF-8; a span name sent as a varint; the request cut.
        let bad_utf8 = {
            let span = [0x2a, 0x01, 0xff];
            len_field(1, &len_field(2, &len_field(2, &span)))
        };
        let wrong_type = len_field(1, &len_field(2, &len_field(2, &[0x28, 0x01])));
        for bytes in [&bad_utf8[..], &wrong_type[..], &ok[..ok.len() - 1]] {
            assert!(ExportTraceServiceRequest::decode(bytes).is_err());
            assert!(TraceView::parse(bytes).is_err(), "{bytes:?}");
        }
        // Unknown fields anywhere are skipped, as prost skips them.
        let mut unknown = ok.clone();
        unknown.extend([0x78, 0x01, 0x81, 0x01, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(ExportTraceServiceRequest::decode(&unknown[..]).is_ok());
        assert!(TraceView::parse(&unknown).is_ok());
    }

    #[test]
    fn the_attribute_shortcut_agrees_with_the_walk_and_with_prost() {
        let kv = |key: &[u8], any: &[u8]| {
            let mut b = len_field(1, key);
            b.extend(len_field(2, any));
            b
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (kv(b"k", &len_field(1, b"v")), "string"),
            (kv(b"k\xff", &len_field(1, b"v")), "key not UTF-8"),
            (kv(b"k", &len_field(1, b"\xc3\x28")), "string not UTF-8"),
            (
                kv(b"k", &len_field(7, b"\xc3\x28")),
                "bytes need not be UTF-8",
            ),
            (kv(b"k", &[0x18, 0x96, 0x01]), "int"),
            (
                kv(
                    b"k",
                    &[
                        0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
                    ],
                ),
                "int past 64 bits",
            ),
            (kv(b"k", &[0x10, 0x01]), "bool"),
            (kv(b"k", &[0x21, 0, 0, 0, 0, 0, 0, 0xe0, 0x3f]), "double"),
            (kv(b"k", &[0x21, 0, 0, 0]), "double cut"),
            (kv(b"k", &[]), "empty value"),
            (
                kv(b"k", &[0x18, 0x01, 0x0a, 0x01, b'x']),
                "two variants, the last wins",
            ),
            (kv(b"k", &[0x18]), "int cut"),
            (kv(b"k", &[0x28, 0x01]), "array sent as a varint"),
            (
                [len_field(2, &[0x18, 0x01]), len_field(1, b"k")].concat(),
                "value before key",
            ),
            (
                [kv(b"k", &[0x18, 0x01]), vec![0x18, 0x01]].concat(),
                "key_strindex after",
            ),
            (
                [kv(b"k", &[0x18, 0x01]), len_field(2, &[0x10, 0x01])].concat(),
                "value twice",
            ),
        ];
        for (body, what) in &cases {
            for budget in [0, 1, 2, RECURSION_LIMIT] {
                let walked = wire::validate(body, Otlp::KeyValue, budget, &mut |_, _| {});
                if Otlp::KeyValue.known_valid(body, budget) {
                    assert_eq!(walked, Ok(()), "{what} at budget {budget}");
                }
            }
            let req = len_field(1, &len_field(2, &len_field(2, &len_field(9, body))));
            let prost = ExportTraceServiceRequest::decode(&req[..]);
            let view = TraceView::parse(&req);
            assert_eq!(prost.is_ok(), view.is_ok(), "{what}");
            if let (Ok(p), Ok(v)) = (prost, view) {
                let want = &p.resource_spans[0].scope_spans[0].spans[0].attributes[0];
                let rs = v.resource_spans().next().unwrap();
                let got = rs.spans().next().unwrap().attributes().next().unwrap();
                assert_eq!(got.key(), want.key, "{what}");
                assert_eq!(got.to_key_value().as_ref(), Some(want), "{what}");
                let value = match want.value.as_ref().and_then(|a| a.value.as_ref()) {
                    None => AttributeValue::Empty,
                    Some(any_value::Value::StringValue(s)) => AttributeValue::Str(s),
                    Some(any_value::Value::IntValue(i)) => AttributeValue::Int(*i),
                    Some(any_value::Value::BoolValue(b)) => AttributeValue::Bool(*b),
                    Some(any_value::Value::DoubleValue(d)) => AttributeValue::Double(*d),
                    Some(any_value::Value::BytesValue(b)) => AttributeValue::Bytes(b),
                    Some(_) => AttributeValue::Other,
                };
                assert_eq!(got.value(), value, "{what}");
            }
        }
    }

    /// An attribute whose value is `depth` arrays nested.
    fn deep_attribute(depth: usize) -> Vec<u8> {
        let mut any: Vec<u8> = vec![0x18, 0x01];
        for _ in 0..depth {
            let array = len_field(1, &any);
            any = len_field(5, &array);
        }
        let mut kv = len_field(1, b"deep");
        kv.extend(len_field(2, &any));
        let span = len_field(9, &kv);
        len_field(1, &len_field(2, &len_field(2, &span)))
    }

    #[test]
    fn nesting_limit_is_prosts() {
        // Request, ResourceSpans, ScopeSpans, Span, KeyValue and AnyValue are 5 levels below the top;
        // each array adds two.
        for depth in 40..52 {
            let bytes = deep_attribute(depth);
            assert_eq!(
                ExportTraceServiceRequest::decode(&bytes[..]).is_ok(),
                TraceView::parse(&bytes).is_ok(),
                "{depth} arrays deep"
            );
        }
        assert!(TraceView::parse(&deep_attribute(47)).is_ok());
        assert_eq!(
            TraceView::parse(&deep_attribute(48)).err(),
            Some(InvalidTraces(WireError::RecursionLimit))
        );
    }
}
