//! vitals: a sidecar that reads a target process through procfs and cgroups (and, through its OTLP
//! receiver, the app's own telemetry) and serves its vital signs on a Prometheus endpoint.
//!
//! Data flows one way: `target` chooses the process, `probe` reads it (and `receiver` takes the app's
//! OTLP data), `signal` derives, `store` holds metric families, `export` serves them; `cadence` says when
//! the samplers read; `server` is the connection handling the HTTP listeners (`/metrics` and OTLP/HTTP)
//! share; `bounded` is the map with a key limit and expiry that every holder of outside keys uses. `app`
//! wires these together for the binary.

#![deny(missing_docs)]

pub mod app;
pub mod bounded;
pub mod cadence;
pub mod catalogue;
pub mod config;
pub mod export;
pub mod inject;
pub mod language;
pub mod logging;
pub mod model;
pub mod pipeline;
pub mod probe;
pub mod profile;
pub mod receiver;
pub mod sampler;
pub mod server;
pub mod signal;
pub mod startup_pages;
pub mod store;
pub mod target;
