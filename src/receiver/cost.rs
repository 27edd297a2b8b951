//! What a request body will cost once decoded, found before decoding it: a walk over the protobuf wire
//! format or the JSON text that counts items (spans, data points, log records) and bounds the heap the
//! decoded message takes. Decoded OTLP can be far larger than its wire form (an empty span is 2 bytes on
//! the wire and a few hundred in memory), so the receiver's limits are checked against this, not the
//! body size.

use std::mem::size_of;

use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    exponential_histogram_data_point::Buckets, summary_data_point::ValueAtQuantile, Exemplar,
    ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};

use super::decode::{DecodeError, Encoding};
use super::Signal;

/// Deepest nesting walked; prost refuses deeper messages too (its recursion limit is 100).
const MAX_DEPTH: usize = 100;
/// Factor on the size of a repeated element: a vector grows by doubling, and while it moves the old
/// and the new block are both live, so n elements may briefly take 3n.
const GROWTH: u64 = 3;
/// Heap bytes charged per string or byte field on top of its length: allocator header and rounding.
const ALLOC_OVERHEAD: u64 = 16;
/// Bytes charged per JSON key or value that serde buffers (the `flatten`ed oneofs under a metric are
/// collected as `serde` content before they are decoded: two 32-byte content nodes per entry, plus
/// growth of the vectors holding them).
const JSON_BUFFERED_VALUE: u64 = 96;

/// What a body costs once decoded.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// Spans, data points or log records.
    pub items: u64,
    /// Upper bound of the heap bytes the decoded message and the decoding take.
    pub bytes: u64,
}

/// The OTLP message types, for the walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Msg {
    TraceRequest,
    ResourceSpans,
    ScopeSpans,
    Span,
    Event,
    Link,
    Status,
    MetricsRequest,
    ResourceMetrics,
    ScopeMetrics,
    Metric,
    Gauge,
    Sum,
    Histogram,
    ExpHistogram,
    Summary,
    NumberPoint,
    HistogramPoint,
    ExpHistogramPoint,
    Buckets,
    SummaryPoint,
    Quantile,
    Exemplar,
    LogsRequest,
    ResourceLogs,
    ScopeLogs,
    LogRecord,
    Resource,
    Scope,
    EntityRef,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
}

/// What a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// An embedded message.
    Msg(Msg),
    /// A string or bytes (heap of its length).
    Bytes,
    /// A repeated 64-bit number, packed or not: fixed-width on the wire.
    Fixed64s,
    /// A repeated 64-bit number, packed or not: varints on the wire.
    Varints,
    /// A number held inline in its message.
    Scalar,
    /// A field the decoder skips.
    Unknown,
}

impl Msg {
    fn for_signal(s: Signal) -> Msg {
        match s {
            Signal::Traces => Msg::TraceRequest,
            Signal::Metrics => Msg::MetricsRequest,
            Signal::Logs => Msg::LogsRequest,
        }
    }

    /// Bytes the decoded struct takes inside its parent.
    fn size(self) -> u64 {
        (match self {
            Msg::TraceRequest | Msg::MetricsRequest | Msg::LogsRequest => 24,
            Msg::ResourceSpans => size_of::<ResourceSpans>(),
            Msg::ScopeSpans => size_of::<ScopeSpans>(),
            Msg::Span => size_of::<Span>(),
            Msg::Event => size_of::<span::Event>(),
            Msg::Link => size_of::<span::Link>(),
            Msg::Status => size_of::<Status>(),
            Msg::ResourceMetrics => size_of::<ResourceMetrics>(),
            Msg::ScopeMetrics => size_of::<ScopeMetrics>(),
            Msg::Metric => size_of::<Metric>(),
            Msg::Gauge => size_of::<Gauge>(),
            Msg::Sum => size_of::<Sum>(),
            Msg::Histogram => size_of::<Histogram>(),
            Msg::ExpHistogram => size_of::<ExponentialHistogram>(),
            Msg::Summary => size_of::<Summary>(),
            Msg::NumberPoint => size_of::<NumberDataPoint>(),
            Msg::HistogramPoint => size_of::<HistogramDataPoint>(),
            Msg::ExpHistogramPoint => size_of::<ExponentialHistogramDataPoint>(),
            Msg::Buckets => size_of::<Buckets>(),
            Msg::SummaryPoint => size_of::<SummaryDataPoint>(),
            Msg::Quantile => size_of::<ValueAtQuantile>(),
            Msg::Exemplar => size_of::<Exemplar>(),
            Msg::ResourceLogs => size_of::<ResourceLogs>(),
            Msg::ScopeLogs => size_of::<ScopeLogs>(),
            Msg::LogRecord => size_of::<LogRecord>(),
            Msg::Resource => size_of::<Resource>(),
            Msg::Scope => size_of::<InstrumentationScope>(),
            Msg::EntityRef => size_of::<EntityRef>(),
            Msg::KeyValue => size_of::<KeyValue>(),
            Msg::AnyValue => size_of::<AnyValue>(),
            Msg::ArrayValue => size_of::<ArrayValue>(),
            Msg::KeyValueList => size_of::<KeyValueList>(),
        }) as u64
    }

    /// Spans, data points and log records are the items the OTLP partial success counts.
    fn is_item(self) -> bool {
        matches!(
            self,
            Msg::Span
                | Msg::NumberPoint
                | Msg::HistogramPoint
                | Msg::ExpHistogramPoint
                | Msg::SummaryPoint
                | Msg::LogRecord
        )
    }

    /// The field with protobuf number `n`.
    fn field(self, n: u64) -> Field {
        use Field::{Bytes as B, Fixed64s as F, Msg as M, Scalar as S, Unknown as U, Varints as V};
        match (self, n) {
            (Msg::TraceRequest, 1) => M(Msg::ResourceSpans),
            (Msg::ResourceSpans, 1) => M(Msg::Resource),
            (Msg::ResourceSpans, 2) => M(Msg::ScopeSpans),
            (Msg::ScopeSpans, 1) => M(Msg::Scope),
            (Msg::ScopeSpans, 2) => M(Msg::Span),
            (Msg::ResourceSpans | Msg::ScopeSpans, 3) => B,
            (Msg::Span, 1..=5) => B,
            (Msg::Span, 9) => M(Msg::KeyValue),
            (Msg::Span, 11) => M(Msg::Event),
            (Msg::Span, 13) => M(Msg::Link),
            (Msg::Span, 15) => M(Msg::Status),
            (Msg::Span, 6..=16) => S,
            (Msg::Event, 2) => B,
            (Msg::Event, 3) => M(Msg::KeyValue),
            (Msg::Event, 1 | 4) => S,
            (Msg::Link, 1..=3) => B,
            (Msg::Link, 4) => M(Msg::KeyValue),
            (Msg::Link, 5 | 6) => S,
            (Msg::Status, 2) => B,
            (Msg::Status, 3) => S,
            (Msg::MetricsRequest, 1) => M(Msg::ResourceMetrics),
            (Msg::ResourceMetrics, 1) => M(Msg::Resource),
            (Msg::ResourceMetrics, 2) => M(Msg::ScopeMetrics),
            (Msg::ScopeMetrics, 1) => M(Msg::Scope),
            (Msg::ScopeMetrics, 2) => M(Msg::Metric),
            (Msg::ResourceMetrics | Msg::ScopeMetrics, 3) => B,
            (Msg::Metric, 1..=3) => B,
            (Msg::Metric, 5) => M(Msg::Gauge),
            (Msg::Metric, 7) => M(Msg::Sum),
            (Msg::Metric, 9) => M(Msg::Histogram),
            (Msg::Metric, 10) => M(Msg::ExpHistogram),
            (Msg::Metric, 11) => M(Msg::Summary),
            (Msg::Metric, 12) => M(Msg::KeyValue),
            (Msg::Gauge | Msg::Sum, 1) => M(Msg::NumberPoint),
            (Msg::Histogram, 1) => M(Msg::HistogramPoint),
            (Msg::ExpHistogram, 1) => M(Msg::ExpHistogramPoint),
            (Msg::Summary, 1) => M(Msg::SummaryPoint),
            (Msg::Sum | Msg::Histogram | Msg::ExpHistogram, 2 | 3) => S,
            (Msg::NumberPoint, 7) => M(Msg::KeyValue),
            (Msg::NumberPoint, 5) => M(Msg::Exemplar),
            (Msg::NumberPoint, 2..=8) => S,
            (Msg::HistogramPoint, 9) => M(Msg::KeyValue),
            (Msg::HistogramPoint, 6 | 7) => F,
            (Msg::HistogramPoint, 8) => M(Msg::Exemplar),
            (Msg::HistogramPoint, 2..=12) => S,
            (Msg::ExpHistogramPoint, 1) => M(Msg::KeyValue),
            (Msg::ExpHistogramPoint, 8 | 9) => M(Msg::Buckets),
            (Msg::ExpHistogramPoint, 11) => M(Msg::Exemplar),
            (Msg::ExpHistogramPoint, 2..=14) => S,
            (Msg::Buckets, 1) => S,
            (Msg::Buckets, 2) => V,
            (Msg::SummaryPoint, 7) => M(Msg::KeyValue),
            (Msg::SummaryPoint, 6) => M(Msg::Quantile),
            (Msg::SummaryPoint, 2..=8) => S,
            (Msg::Quantile, 1 | 2) => S,
            (Msg::Exemplar, 7) => M(Msg::KeyValue),
            (Msg::Exemplar, 4 | 5) => B,
            (Msg::Exemplar, 2..=6) => S,
            (Msg::LogsRequest, 1) => M(Msg::ResourceLogs),
            (Msg::ResourceLogs, 1) => M(Msg::Resource),
            (Msg::ResourceLogs, 2) => M(Msg::ScopeLogs),
            (Msg::ScopeLogs, 1) => M(Msg::Scope),
            (Msg::ScopeLogs, 2) => M(Msg::LogRecord),
            (Msg::ResourceLogs | Msg::ScopeLogs, 3) => B,
            (Msg::LogRecord, 3 | 9 | 10 | 12) => B,
            (Msg::LogRecord, 5) => M(Msg::AnyValue),
            (Msg::LogRecord, 6) => M(Msg::KeyValue),
            (Msg::LogRecord, 1..=11) => S,
            (Msg::Resource, 1) => M(Msg::KeyValue),
            (Msg::Resource, 3) => M(Msg::EntityRef),
            (Msg::Resource, 2) => S,
            (Msg::Scope, 1 | 2) => B,
            (Msg::Scope, 3) => M(Msg::KeyValue),
            (Msg::Scope, 4) => S,
            (Msg::EntityRef, 1..=4) => B,
            (Msg::KeyValue, 1) => B,
            (Msg::KeyValue, 2) => M(Msg::AnyValue),
            (Msg::KeyValue, 3) => S,
            (Msg::AnyValue, 1 | 7) => B,
            (Msg::AnyValue, 5) => M(Msg::ArrayValue),
            (Msg::AnyValue, 6) => M(Msg::KeyValueList),
            (Msg::AnyValue, 2..=8) => S,
            (Msg::ArrayValue, 1) => M(Msg::AnyValue),
            (Msg::KeyValueList, 1) => M(Msg::KeyValue),
            _ => U,
        }
    }

    /// The field named `key` in OTLP/JSON (lowerCamelCase, as the serde support spells them).
    fn json_field(self, key: &str) -> Field {
        let n = match (self, key) {
            (Msg::TraceRequest, "resourceSpans") => 1,
            (Msg::MetricsRequest, "resourceMetrics") => 1,
            (Msg::LogsRequest, "resourceLogs") => 1,
            (Msg::ResourceSpans | Msg::ResourceMetrics | Msg::ResourceLogs, "resource") => 1,
            (Msg::ResourceSpans, "scopeSpans") => 2,
            (Msg::ResourceMetrics, "scopeMetrics") => 2,
            (Msg::ResourceLogs, "scopeLogs") => 2,
            (Msg::ScopeSpans | Msg::ScopeMetrics | Msg::ScopeLogs, "scope") => 1,
            (Msg::ScopeSpans, "spans") => 2,
            (Msg::ScopeMetrics, "metrics") => 2,
            (Msg::ScopeLogs, "logRecords") => 2,
            (Msg::Span, "events") => 11,
            (Msg::Span, "links") => 13,
            (Msg::Span, "status") => 15,
            (Msg::Metric, "gauge") => 5,
            (Msg::Metric, "sum") => 7,
            (Msg::Metric, "histogram") => 9,
            (Msg::Metric, "exponentialHistogram") => 10,
            (Msg::Metric, "summary") => 11,
            (Msg::Metric, "metadata") => 12,
            (
                Msg::Gauge | Msg::Sum | Msg::Histogram | Msg::ExpHistogram | Msg::Summary,
                "dataPoints",
            ) => 1,
            (Msg::NumberPoint | Msg::HistogramPoint | Msg::ExpHistogramPoint, "exemplars") => {
                return Field::Msg(Msg::Exemplar)
            }
            (Msg::HistogramPoint, "bucketCounts" | "explicitBounds") => 6,
            (Msg::ExpHistogramPoint, "positive" | "negative") => 8,
            (Msg::Buckets, "bucketCounts") => 2,
            (Msg::SummaryPoint, "quantileValues") => 6,
            (Msg::Exemplar, "filteredAttributes") => 7,
            (Msg::LogRecord, "body") => 5,
            (Msg::KeyValue, "value") => 2,
            (Msg::AnyValue, "arrayValue") => 5,
            (Msg::AnyValue, "kvlistValue") => 6,
            (Msg::ArrayValue | Msg::KeyValueList, "values") => 1,
            (Msg::Resource, "entityRefs") => 3,
            (_, "attributes") => return Field::Msg(Msg::KeyValue),
            _ => return Field::Scalar,
        };
        self.field(n)
    }
}

/// Walks `body` (already inflated) and returns its decoded cost, or why it cannot be decoded.
pub fn cost(signal: Signal, body: &[u8], encoding: Encoding) -> Result<Cost, DecodeError> {
    let mut c = Cost {
        items: 0,
        bytes: body.len() as u64 / 8,
    };
    match encoding {
        Encoding::Protobuf => walk_protobuf(Msg::for_signal(signal), body, 0, &mut c)?,
        Encoding::Json => {
            JsonWalk { text: body, at: 0 }.document(Msg::for_signal(signal), &mut c)?
        }
    }
    Ok(c)
}

fn bad(what: &str) -> DecodeError {
    DecodeError::Undecodable(what.to_owned())
}

fn varint(buf: &[u8], at: &mut usize) -> Result<u64, DecodeError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at).ok_or_else(|| bad("truncated varint"))?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err(bad("varint longer than 10 bytes"))
}

fn skip(buf: &[u8], at: &mut usize, n: usize) -> Result<(), DecodeError> {
    if buf.len() - *at < n {
        return Err(bad("field runs past the end of its message"));
    }
    *at += n;
    Ok(())
}

/// Adds the cost of the fields of one `msg` encoded in `buf`.
fn walk_protobuf(msg: Msg, buf: &[u8], depth: usize, c: &mut Cost) -> Result<(), DecodeError> {
    if depth > MAX_DEPTH {
        return Err(bad("message nested too deeply"));
    }
    let mut at = 0;
    while at < buf.len() {
        let key = varint(buf, &mut at)?;
        let field = msg.field(key >> 3);
        match key & 7 {
            0 => {
                varint(buf, &mut at)?;
            }
            1 => skip(buf, &mut at, 8)?,
            5 => skip(buf, &mut at, 4)?,
            2 => {
                let len = usize::try_from(varint(buf, &mut at)?)
                    .map_err(|_| bad("length does not fit in memory"))?;
                let start = at;
                skip(buf, &mut at, len)?;
                match field {
                    Field::Msg(child) => {
                        if child.is_item() {
                            c.items += 1;
                        }
                        c.bytes += GROWTH * child.size();
                        walk_protobuf(child, &buf[start..at], depth + 1, c)?;
                    }
                    Field::Bytes if len > 0 => c.bytes += len as u64 + ALLOC_OVERHEAD,
                    // Packed numbers, 8 bytes each decoded.
                    Field::Fixed64s => c.bytes += GROWTH * len as u64,
                    Field::Varints => {
                        let n = buf[start..at].iter().filter(|b| **b < 0x80).count();
                        c.bytes += GROWTH * 8 * n as u64;
                    }
                    _ => {}
                }
            }
            _ => return Err(bad("protobuf groups and wire types 6-7 are not OTLP")),
        }
        if matches!(field, Field::Fixed64s | Field::Varints) && key & 7 != 2 {
            c.bytes += GROWTH * 8;
        }
    }
    Ok(())
}

/// A single pass over OTLP/JSON text that follows the schema by key names.
struct JsonWalk<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> JsonWalk<'a> {
    fn document(&mut self, msg: Msg, c: &mut Cost) -> Result<(), DecodeError> {
        self.value(Field::Msg(msg), false, 0, c)?;
        self.ws();
        if self.at != self.text.len() {
            return Err(bad("JSON: trailing characters"));
        }
        Ok(())
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.text.get(self.at) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Result<u8, DecodeError> {
        self.ws();
        self.text
            .get(self.at)
            .copied()
            .ok_or_else(|| bad("JSON: unexpected end"))
    }

    fn expect(&mut self, b: u8) -> Result<(), DecodeError> {
        if self.peek()? != b {
            return Err(bad("JSON: unexpected character"));
        }
        self.at += 1;
        Ok(())
    }

    /// Skips a string and returns its raw contents (escapes left as they are).
    fn string(&mut self) -> Result<&'a [u8], DecodeError> {
        self.expect(b'"')?;
        let start = self.at;
        loop {
            match self.text.get(self.at) {
                None => return Err(bad("JSON: unterminated string")),
                Some(b'"') => break,
                Some(b'\\') => self.at += 2,
                Some(_) => self.at += 1,
            }
        }
        let text: &'a [u8] = self.text;
        let s = &text[start..self.at];
        self.at += 1;
        Ok(s)
    }

    /// One value that decodes into `field`. `buffered` is true under a metric, where serde buffers
    /// every key and value before decoding it.
    fn value(
        &mut self,
        field: Field,
        buffered: bool,
        depth: usize,
        c: &mut Cost,
    ) -> Result<(), DecodeError> {
        if depth > MAX_DEPTH {
            return Err(bad("JSON nested too deeply"));
        }
        if buffered {
            c.bytes += JSON_BUFFERED_VALUE;
        }
        match self.peek()? {
            b'{' => {
                self.at += 1;
                let msg = match field {
                    Field::Msg(m) => Some(m),
                    _ => None,
                };
                let buffered = buffered || msg == Some(Msg::Metric);
                if self.peek()? == b'}' {
                    self.at += 1;
                    return Ok(());
                }
                loop {
                    let key = self.string()?;
                    if buffered {
                        c.bytes += JSON_BUFFERED_VALUE + key.len() as u64;
                    }
                    self.expect(b':')?;
                    let child = match msg {
                        Some(m) => std::str::from_utf8(key)
                            .map(|k| m.json_field(k))
                            .unwrap_or(Field::Unknown),
                        None => Field::Unknown,
                    };
                    self.element(child, buffered, depth, c)?;
                    match self.peek()? {
                        b',' => self.at += 1,
                        b'}' => {
                            self.at += 1;
                            return Ok(());
                        }
                        _ => return Err(bad("JSON: expected , or } in an object")),
                    }
                }
            }
            b'[' => {
                self.at += 1;
                if self.peek()? == b']' {
                    self.at += 1;
                    return Ok(());
                }
                loop {
                    self.element(field, buffered, depth, c)?;
                    match self.peek()? {
                        b',' => self.at += 1,
                        b']' => {
                            self.at += 1;
                            return Ok(());
                        }
                        _ => return Err(bad("JSON: expected , or ] in an array")),
                    }
                }
            }
            b'"' => {
                let len = self.string()?.len() as u64;
                c.bytes += len + ALLOC_OVERHEAD;
                Ok(())
            }
            _ => {
                let start = self.at;
                while let Some(b) = self.text.get(self.at) {
                    if matches!(b, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t') {
                        break;
                    }
                    self.at += 1;
                }
                if self.at == start {
                    return Err(bad("JSON: expected a value"));
                }
                Ok(())
            }
        }
    }

    /// A value in a field or an array: charges the struct a message becomes, or 8 bytes per number.
    fn element(
        &mut self,
        field: Field,
        buffered: bool,
        depth: usize,
        c: &mut Cost,
    ) -> Result<(), DecodeError> {
        match field {
            Field::Msg(m) if self.peek()? == b'{' => {
                if m.is_item() {
                    c.items += 1;
                }
                c.bytes += GROWTH * m.size();
            }
            Field::Fixed64s | Field::Varints => c.bytes += GROWTH * 8,
            _ => {}
        }
        self.value(field, buffered, depth + 1, c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    fn empty_spans(n: usize) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span::default(); n],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn empty_spans_are_counted_at_their_decoded_size() {
        let body = empty_spans(1000).encode_to_vec();
        assert!(body.len() < 2100, "{} bytes on the wire", body.len());
        let c = cost(Signal::Traces, &body, Encoding::Protobuf).unwrap();
        assert_eq!(c.items, 1000);
        assert!(c.bytes >= 3000 * size_of::<Span>() as u64, "{c:?}");
        let json = b"{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[{},{},{}]}]}]}";
        let c = cost(Signal::Traces, json, Encoding::Json).unwrap();
        assert_eq!(c.items, 3);
        assert!(c.bytes >= 9 * size_of::<Span>() as u64, "{c:?}");
    }

    #[test]
    fn malformed_bodies_are_undecodable() {
        for (body, enc) in [
            (&b"\x0a\x05\x0a\x03"[..], Encoding::Protobuf),
            (b"\x0b", Encoding::Protobuf),
            (
                b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
                Encoding::Protobuf,
            ),
            (b"{\"resourceSpans\":[", Encoding::Json),
            (b"{} x", Encoding::Json),
            (b"{\"a\" 1}", Encoding::Json),
        ] {
            assert!(
                matches!(
                    cost(Signal::Traces, body, enc),
                    Err(DecodeError::Undecodable(_))
                ),
                "{body:?}"
            );
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(cost(Signal::Logs, deep.as_bytes(), Encoding::Json).is_err());
    }
}
