//! OTLP leaving vitals: forwarding what the receiver accepted to an upstream OTLP endpoint.

pub mod forward;
pub mod tls;
pub mod upstream;
