//! Fuzzes the OTLP/Protobuf traces decoder entry point and the ingest path behind it.
#![no_main]

mod common;

otlp_target!(opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest, Protobuf, traces);
