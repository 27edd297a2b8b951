//! OTLP leaving vitals: forwarding what the receiver accepted to an upstream OTLP endpoint, and pushing
//! vitals' own metrics to an OTLP endpoint.

pub mod forward;
pub mod metrics_request;
pub mod push;
pub mod push_resource;
pub mod retry;
pub mod tls;
pub mod upstream;
