//! Fuzzes the whole path from an OTLP metrics or trace request to the exposition: the body is costed
//! and decoded as the receiver does, ingested, then both formats are rendered and parsed back. Any
//! accepted input must give an exposition with valid names, no duplicate label names, no series twice,
//! HELP and TYPE at most once per family, every sample inside the family its TYPE line declared, and
//! cumulative buckets that never decrease.
#![no_main]

mod common;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use vitals::export::prometheus::{encode, Format};
use vitals::receiver::cost::cost;
use vitals::receiver::decode::{decode, with_trace_view, Encoding};
use vitals::receiver::Signal;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let enc = if selector & 1 == 0 { Encoding::Protobuf } else { Encoding::Json };
    let signal = if selector & 2 == 0 { Signal::Metrics } else { Signal::Traces };
    // The receiver refuses what its cost walk refuses; what it lets through must decode within it.
    let Ok(c) = cost(signal, body, enc) else {
        return;
    };
    let (receiver, registry) = common::receiver();
    match signal {
        Signal::Metrics => {
            if let Ok(req) = decode::<ExportMetricsServiceRequest>(body, enc) {
                let _ = receiver.deliver_decoded(&req);
            }
        }
        _ => {
            let _ = with_trace_view(body, enc, |view| receiver.deliver_traces(view));
        }
    }
    let _ = c;
    let families = registry.gather();
    for format in [Format::Text, Format::OpenMetrics] {
        let text = encode(&families, format);
        if let Err(e) = common::check_exposition(&text, format == Format::OpenMetrics) {
            panic!("{e}\n--- exposition ---\n{text}");
        }
    }
});
