//! The series store: bounded, expiring holders of what came from outside (the app's OTLP metrics, log
//! counts), in the neutral model of [`crate::model`]. Each holder is a [`crate::model::Collector`]; exporters
//! read them through the registry and never see how they are kept.

pub mod app_metrics;
pub mod logs;
