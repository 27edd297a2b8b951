//! Fuzzes the OTLP/Protobuf logs decoder entry point and the ingest path behind it.
#![no_main]

mod common;

otlp_target!(opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest, Protobuf, logs);
