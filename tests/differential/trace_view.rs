//! The differential check of the in-place trace reader against prost, shared by the test
//! `tests/trace_view_differential.rs` and the fuzz target `fuzz/fuzz_targets/traces_view.rs`: on any
//! input, prost decodes it exactly when the view accepts it; when both do, every field the trace
//! consumers read is the same, and the consumers (RED, database queries) answer and record the same
//! as they do reading prost's own encoding of what it decoded (where every merge is already resolved).

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use prost::Message;
use vitals::bounded::OverflowCounter;
use vitals::model::{Collector, Metric};
use vitals::pipeline::trace_view::{Attribute, AttributeValue};
use vitals::pipeline::{Consumer, PartialSuccess, TraceView};
use vitals::signal::latency::RedSignal;
use vitals::signal::n_plus_one::{NPlusOne, Rule};
use vitals::signal::query::{DbQueries, QuerySignal};

/// Whether prost and the view both accepted the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Both decode it.
    Accepted,
    /// Both refuse it.
    Refused,
}

/// Runs the check on one input; panics with what differs.
pub fn check(data: &[u8]) -> Verdict {
    let prost = ExportTraceServiceRequest::decode(data);
    let view = TraceView::parse(data);
    let (p, v) = match (prost, view) {
        (Ok(p), Ok(v)) => (p, v),
        (Err(_), Err(_)) => return Verdict::Refused,
        (p, v) => panic!(
            "prost and the view disagree on {data:?}: prost {:?}, view {:?}",
            p.err(),
            v.err()
        ),
    };
    same_fields(&p, &v);
    let canonical = p.encode_to_vec();
    let again = TraceView::parse(&canonical).expect("prost's own encoding reads");
    assert_eq!(outcome(&v), outcome(&again), "consumers differ on {data:?}");
    // The same request decoded (as an OTLP/JSON body is) reads the same through the view.
    let decoded = TraceView::decoded(&p);
    same_fields(&p, &decoded);
    assert_eq!(
        outcome(&v),
        outcome(&decoded),
        "consumers differ on {data:?} decoded"
    );
    Verdict::Accepted
}

/// The value prost decoded, as the view words it.
fn expected(kv: &KeyValue) -> AttributeValue<'_> {
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

fn same_attributes<'a>(want: &[KeyValue], got: impl Iterator<Item = Attribute<'a>>) {
    let got: Vec<_> = got.collect();
    assert_eq!(got.len(), want.len(), "attribute count");
    for (kv, a) in want.iter().zip(&got) {
        assert_eq!(a.key(), kv.key);
        match (expected(kv), a.value()) {
            (AttributeValue::Double(x), AttributeValue::Double(y)) => {
                assert_eq!(x.to_bits(), y.to_bits(), "{}", kv.key)
            }
            (x, y) => assert_eq!(x, y, "{}", kv.key),
        }
        assert_eq!(a.to_key_value().as_ref(), Some(kv), "{}", kv.key);
    }
}

fn same_fields(p: &ExportTraceServiceRequest, v: &TraceView<'_>) {
    let spans: usize = p
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    assert_eq!(v.span_count(), spans as u64, "span count");
    let resources: Vec<_> = v.resource_spans().collect();
    assert_eq!(resources.len(), p.resource_spans.len());
    for (pr, vr) in p.resource_spans.iter().zip(&resources) {
        let attrs = pr.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]);
        same_attributes(attrs, vr.resource_attributes());
        let scopes: Vec<_> = vr.scope_spans().collect();
        assert_eq!(scopes.len(), pr.scope_spans.len());
        for (ps, vs) in pr.scope_spans.iter().zip(&scopes) {
            let scope = ps.scope.clone().unwrap_or_default();
            assert_eq!(vs.scope_name(), scope.name);
            assert_eq!(vs.scope_version(), scope.version);
            let spans: Vec<_> = vs.spans().collect();
            assert_eq!(spans.len(), ps.spans.len());
            for (s, vs) in ps.spans.iter().zip(&spans) {
                assert_eq!(vs.trace_id, &s.trace_id[..]);
                assert_eq!(vs.span_id, &s.span_id[..]);
                assert_eq!(vs.parent_span_id, &s.parent_span_id[..]);
                assert_eq!(vs.name, s.name);
                assert_eq!(vs.kind, s.kind);
                assert_eq!(vs.start_time_unix_nano, s.start_time_unix_nano);
                assert_eq!(vs.end_time_unix_nano, s.end_time_unix_nano);
                assert_eq!(vs.status_code, s.status.as_ref().map_or(0, |st| st.code));
                same_attributes(&s.attributes, vs.attributes());
            }
        }
    }
}

/// What the trace consumers make of a request: their answers and what they recorded (start times,
/// which differ between two stores, set to zero), rendered as the Prometheus text exposition.
fn outcome(v: &TraceView<'_>) -> (PartialSuccess, PartialSuccess, String) {
    let o = OverflowCounter::default();
    let ttl = Duration::from_secs(3600);
    let red = RedSignal::new(50, ttl, o.clone());
    let db = DbQueries {
        store: Arc::new(QuerySignal::new(50, ttl, o.clone())),
        n_plus_one: Arc::new(NPlusOne::new(Rule::default(), 50, ttl, o)),
    };
    let answers = (red.consume(v), db.consume(v));
    let mut metrics: Vec<Metric> = Vec::new();
    red.collect(&mut metrics);
    db.store.collect(&mut metrics);
    db.n_plus_one.collect(&mut metrics);
    for m in &mut metrics {
        for p in &mut m.points {
            p.start_unix_nanos = 0;
        }
    }
    let text = vitals::export::prometheus::encode(
        &metrics,
        vitals::export::prometheus::Format::OpenMetrics,
    );
    (answers.0, answers.1, text)
}
