//! Where signals leave: the Prometheus endpoint and its HTTP endpoints, the live page, OTLP forwarding
//! and push.

pub mod http;
pub mod otlp;
pub mod prometheus;
