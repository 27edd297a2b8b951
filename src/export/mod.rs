//! Where signals leave: the Prometheus endpoint and its HTTP server, the live page, and vitals' own health
//! metrics.

pub mod http;
pub mod otlp;
pub mod prometheus;
pub mod self_metrics;
