//! Fuzzes the OTLP/Json logs decoder entry point and the ingest path behind it.
#![no_main]

mod common;

otlp_target!(opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest, Json, logs);
