//! Fuzzes the OTLP/Protobuf metrics decoder entry point and the ingest path behind it.
#![no_main]

mod common;

otlp_target!(opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest, Protobuf, metrics);
