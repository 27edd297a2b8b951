//! Request bodies to OTLP messages: gzip inflated under a size limit (a bomb is refused while inflating),
//! then protobuf or OTLP/JSON. A trace export in protobuf is not decoded but read in place
//! ([`trace_view`]); its OTLP/JSON form is decoded by serde and read through the same view. A decoder
//! panic is an undecodable body, never a crash (the release build unwinds; see `Receiver::isolated` for
//! the rest of a request's handling).

use std::io::Read;

use serde::de::DeserializeOwned;

/// Body encodings OTLP/HTTP allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf`.
    Protobuf,
    /// `application/json` (OTLP/JSON).
    Json,
}

/// Why a body could not become a request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Larger than the limit, before or after inflating.
    #[error("request body exceeds the {limit}-byte limit (after decompression)")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Not valid for the declared encoding.
    #[error("cannot decode request body: {0}")]
    Undecodable(String),
    /// The memory budget could not hold the inflated body.
    #[error("the memory budget cannot hold the inflated body")]
    OverBudget(super::OverBudget),
}

/// Inflated bytes produced between two charges.
const INFLATE_STEP: usize = 64 << 10;

/// Inflates a gzip body, stopping as soon as the output would pass `limit`. `charge` is told of every
/// step the output grows by (twice the bytes: the buffer grows by doubling) before it grows, and
/// stops the inflating by refusing.
pub fn gunzip(
    body: &[u8],
    limit: usize,
    mut charge: impl FnMut(u64) -> Result<(), super::OverBudget>,
) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    let mut dec = flate2::read::GzDecoder::new(body).take(limit as u64 + 1);
    loop {
        charge(2 * INFLATE_STEP as u64).map_err(DecodeError::OverBudget)?;
        let before = out.len();
        (&mut dec)
            .take(INFLATE_STEP as u64)
            .read_to_end(&mut out)
            .map_err(|e| DecodeError::Undecodable(format!("gzip: {e}")))?;
        if out.len() > limit {
            return Err(DecodeError::TooLarge { limit });
        }
        if out.len() - before < INFLATE_STEP {
            return Ok(out);
        }
    }
}

/// Decodes an OTLP message.
pub fn decode<T>(bytes: &[u8], encoding: Encoding) -> Result<T, DecodeError>
where
    T: prost::Message + DeserializeOwned + Default,
{
    let run = || match encoding {
        Encoding::Protobuf => T::decode(bytes).map_err(|e| DecodeError::Undecodable(e.to_string())),
        Encoding::Json => serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::Undecodable(format!("JSON: {e}"))),
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|_| {
        Err(DecodeError::Undecodable(
            "decoder failed on this input".into(),
        ))
    })
}

/// Reads a trace export body as the receiver reads it and hands the view to `read`: protobuf checked
/// and read in place, OTLP/JSON decoded by serde and read through the same view.
pub fn with_trace_view<T>(
    bytes: &[u8],
    encoding: Encoding,
    read: impl FnOnce(&crate::pipeline::TraceView<'_>) -> T,
) -> Result<T, DecodeError> {
    match encoding {
        Encoding::Protobuf => Ok(read(&trace_view(bytes)?)),
        Encoding::Json => {
            let request: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest =
                decode(bytes, Encoding::Json)?;
            Ok(read(&crate::pipeline::TraceView::decoded(&request)))
        }
    }
}

/// A trace export's protobuf bytes checked and read in place: refused exactly when prost's decode
/// would refuse them.
pub fn trace_view(bytes: &[u8]) -> Result<crate::pipeline::TraceView<'_>, DecodeError> {
    let run = || crate::pipeline::TraceView::parse(bytes);
    match std::panic::catch_unwind(run) {
        Ok(Ok(view)) => Ok(view),
        Ok(Err(e)) => Err(DecodeError::Undecodable(e.to_string())),
        Err(_) => Err(DecodeError::Undecodable(
            "decoder failed on this input".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_bomb_is_refused_while_inflating() {
        let bomb = gz(&vec![0u8; 64 << 20]);
        assert!(
            bomb.len() < 100 << 10,
            "64 MiB of zeros compresses to {} bytes",
            bomb.len()
        );
        let free = |_| Ok(());
        assert_eq!(
            gunzip(&bomb, 1 << 20, free),
            Err(DecodeError::TooLarge { limit: 1 << 20 })
        );
        assert_eq!(gunzip(&gz(b"hello"), 5, free).unwrap(), b"hello");
        assert!(matches!(
            gunzip(b"not gzip", 100, free),
            Err(DecodeError::Undecodable(_))
        ));
        // The charge stops the inflating: 256 KiB allowed, so the 64 MiB bomb stops there.
        let mut charged = 0u64;
        let r = gunzip(&bomb, 64 << 20, |n| {
            charged += n;
            if charged > 256 << 10 {
                Err(crate::receiver::OverBudget::Busy)
            } else {
                Ok(())
            }
        });
        assert_eq!(
            r,
            Err(DecodeError::OverBudget(crate::receiver::OverBudget::Busy))
        );
    }

    #[test]
    fn garbage_is_undecodable_not_a_panic() {
        for body in [&b"\xff\xff\xff\xff"[..], b"{", b"\x0a\x05\x0a\x03\x0a"] {
            let enc = if body[0] == b'{' {
                Encoding::Json
            } else {
                Encoding::Protobuf
            };
            assert!(matches!(
                decode::<ExportTraceServiceRequest>(body, enc),
                Err(DecodeError::Undecodable(_))
            ));
        }
        assert_eq!(
            decode::<ExportTraceServiceRequest>(b"", Encoding::Protobuf).unwrap(),
            ExportTraceServiceRequest::default()
        );
    }
}

/// Golden tests: bodies captured from the real OpenTelemetry Python SDK's OTLP/JSON exporter
/// (tests/fixtures/otlp/sdk-python-*.json, produced by tests/python/send.py). They pin down the JSON
/// quirks the serde support must get right: 64-bit integers as strings (`asInt`, `count`,
/// `bucketCounts`, times), hex ids, integer enums.
#[cfg(test)]
mod golden {
    use super::*;
    use crate::bounded::OverflowCounter;
    use crate::model::{Collector, Value};
    use crate::store::app_metrics::{AppMetrics, AppMetricsConfig};
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point};
    use std::time::Duration;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/otlp")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn python_sdk_traces() {
        let req: ExportTraceServiceRequest =
            decode(&fixture("sdk-python-traces.json"), Encoding::Json).unwrap();
        let spans: Vec<_> = req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .collect();
        assert_eq!(spans.len(), 18, "6 server + 6 client + 6 internal spans");
        let first = spans[0];
        assert_eq!(first.trace_id.len(), 16);
        assert_eq!(first.span_id.len(), 8);
        assert_eq!(first.kind, 2, "SERVER");
        assert_eq!(first.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(first.status.as_ref().unwrap().code, 2, "ERROR");
        let status_attr = first
            .attributes
            .iter()
            .find(|kv| kv.key == "http.response.status_code")
            .unwrap();
        assert_eq!(
            status_attr.value.as_ref().unwrap().value,
            Some(opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(503)),
            "intValue sent as a string"
        );
    }

    #[test]
    fn python_sdk_metrics_every_point_survives() {
        let reqs: Vec<ExportMetricsServiceRequest> = (1..=3)
            .map(|i| {
                decode(
                    &fixture(&format!("sdk-python-metrics-{i}.json")),
                    Encoding::Json,
                )
                .unwrap()
            })
            .collect();
        let metric = |r: &ExportMetricsServiceRequest, name: &str| {
            r.resource_metrics[0].scope_metrics[0]
                .metrics
                .iter()
                .find(|m| m.name == name)
                .cloned()
                .unwrap()
        };
        match metric(&reqs[0], "queue.size").data {
            Some(Data::Sum(s)) => assert_eq!(
                s.data_points[0].value,
                Some(number_data_point::Value::AsInt(5))
            ),
            other => panic!("{other:?}"),
        }
        match metric(&reqs[1], "orders").data {
            Some(Data::Sum(s)) => {
                assert_eq!(s.aggregation_temporality, 1, "delta");
                assert_eq!(
                    s.data_points.len(),
                    2,
                    "both label sets of the second round"
                );
            }
            other => panic!("{other:?}"),
        }
        match metric(&reqs[0], "http.server.request.duration").data {
            Some(Data::Histogram(h)) => {
                assert_eq!(h.data_points[0].bucket_counts, vec![1, 1, 1, 1]);
                assert_eq!(h.data_points[0].count, 4);
            }
            other => panic!("{other:?}"),
        }
        match metric(&reqs[0], "latency.exp").data {
            Some(Data::ExponentialHistogram(h)) => {
                let p = &h.data_points[0];
                assert_eq!(p.count, 4);
                assert_eq!(
                    p.positive
                        .as_ref()
                        .unwrap()
                        .bucket_counts
                        .iter()
                        .sum::<u64>(),
                    4
                );
            }
            other => panic!("{other:?}"),
        }
        // Through the store: the totals the SDK was told to record.
        let store = AppMetrics::new(
            AppMetricsConfig {
                series_limit: 100,
                family_limit: 100,
                ttl: Duration::from_secs(60),
                promote: vec![],
            },
            OverflowCounter::default(),
            std::sync::Arc::new(crate::export::prometheus::naming::PrometheusNames),
        );
        for r in &reqs {
            let out = store.ingest(r);
            assert_eq!(out.rejected, 0, "{}", out.message);
        }
        let mut fams = vec![];
        store.collect(&mut fams);
        let orders = fams.iter().find(|f| f.name == "orders").unwrap();
        let a = orders
            .points
            .iter()
            .find(|s| s.attributes.iter().any(|(k, v)| k == "route" && v == "/a"))
            .unwrap();
        assert_eq!(a.value, Value::Sum(7.0), "3 + 4 over two delta exports");
        let queue = fams.iter().find(|f| f.name == "queue.size").unwrap();
        assert_eq!(queue.points[0].value, Value::Sum(3.0));
    }

    #[test]
    fn python_sdk_logs() {
        let req: ExportLogsServiceRequest =
            decode(&fixture("sdk-python-logs.json"), Encoding::Json).unwrap();
        let sev: Vec<i32> = req.resource_logs[0].scope_logs[0]
            .log_records
            .iter()
            .map(|r| r.severity_number)
            .collect();
        assert_eq!(sev, vec![9, 9, 9, 13, 13, 17]);
    }

    #[test]
    fn node_sdk_payloads() {
        // The Node exporter writes 64-bit counts as JSON numbers where Python writes strings.
        let t: ExportTraceServiceRequest =
            decode(&fixture("sdk-node-traces.json"), Encoding::Json).unwrap();
        let spans: Vec<_> = t
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .collect();
        assert_eq!(spans.len(), 6);
        assert_eq!(
            spans.iter().filter(|s| s.kind == 5).count(),
            1,
            "one CONSUMER span"
        );
        let m: ExportMetricsServiceRequest =
            decode(&fixture("sdk-node-metrics.json"), Encoding::Json).unwrap();
        let metrics = &m.resource_metrics[0].scope_metrics[0].metrics;
        match &metrics
            .iter()
            .find(|x| x.name == "carts.created")
            .unwrap()
            .data
        {
            Some(Data::Sum(s)) => assert_eq!(
                s.data_points[0].value,
                Some(number_data_point::Value::AsDouble(20.0))
            ),
            other => panic!("{other:?}"),
        }
        match &metrics.iter().find(|x| x.name == "cart.size").unwrap().data {
            Some(Data::Histogram(h)) => {
                assert_eq!(h.data_points[0].bucket_counts, vec![1, 6, 3]);
                assert_eq!(h.data_points[0].count, 10);
                assert_eq!(h.data_points[0].sum, Some(6750.0));
            }
            other => panic!("{other:?}"),
        }
        let l: ExportLogsServiceRequest =
            decode(&fixture("sdk-node-logs.json"), Encoding::Json).unwrap();
        let sev: Vec<i32> = l.resource_logs[0].scope_logs[0]
            .log_records
            .iter()
            .map(|r| r.severity_number)
            .collect();
        assert_eq!(sev, vec![9, 9, 9, 9, 17]);
    }
}
