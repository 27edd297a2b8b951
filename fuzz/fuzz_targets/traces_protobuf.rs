//! Fuzzes the OTLP/Protobuf traces decoder entry point and the ingest path behind it.
#![no_main]

mod common;

traces_target!(Protobuf);
