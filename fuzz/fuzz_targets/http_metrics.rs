//! Fuzzes the metrics listener's request handling: any bytes a client sends (request lines, paths,
//! query strings, headers, `Accept` and `Accept-Encoding` negotiation, `Authorization`) go through hyper
//! into the real handler, with and without a web config that asks for basic auth. Beyond no panic and
//! no hang: with auth on, nothing but `/healthz` and `/readyz` is answered 200 unless the request
//! carried the right credentials, and every answer's status is one the handler is meant to give.
#![no_main]

mod common;
mod http_driver;

use std::sync::{Arc, OnceLock};

use hyper::body::Incoming;
use hyper::Request;
use vitals::export::http::web_config::WebConfig;
use vitals::export::http::{HttpState, MetricsService};

/// `prom:s3cret`, the one right credential.
const RIGHT: &str = "Basic cHJvbTpzM2NyZXQ=";

fn service(auth: bool) -> Arc<MetricsService> {
    static OPEN: OnceLock<Arc<MetricsService>> = OnceLock::new();
    static AUTH: OnceLock<Arc<MetricsService>> = OnceLock::new();
    let make = |auth: bool| {
        let (_, registry) = common::receiver();
        let web = auth.then(|| {
            // Cost 4: the fuzzer hashes on every wrong password it tries.
            let hash = bcrypt::hash("s3cret", 4).expect("hash");
            let yaml = format!("basic_auth_users:\n  prom: {hash}\n");
            Arc::new(WebConfig::parse(&yaml, std::path::Path::new("web.yml")).expect("config"))
        });
        let state = HttpState {
            registry: registry.clone(),
            status: Arc::new(Default::default()),
            live: None,
            web,
            // CPU profiles need perf_event_open; without a profiler /debug/pprof answers 404.
            profiler: None,
            continuous: None,
            cadence: None,
        };
        Arc::new(MetricsService::start(state).expect("render thread"))
    };
    if auth {
        AUTH.get_or_init(|| make(true)).clone()
    } else {
        OPEN.get_or_init(|| make(false)).clone()
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&selector, request)) = data.split_first() else {
        return;
    };
    let auth = selector & 1 == 1;
    let svc = service(auth);
    http_driver::exchange(
        move |req: Request<Incoming>| {
            let svc = svc.clone();
            async move {
                let path = req.uri().path().to_owned();
                let right = req
                    .headers()
                    .get(hyper::header::AUTHORIZATION)
                    .is_some_and(|v| v.as_bytes() == RIGHT.as_bytes());
                let resp = svc.answer(req).await?;
                let status = resp.status().as_u16();
                assert!(
                    [200, 401, 404, 405, 429, 503].contains(&status),
                    "unexpected status {status} for {path}"
                );
                if auth && status == 200 && !right {
                    assert!(
                        path == "/healthz" || path == "/readyz",
                        "{path} answered 200 without the right credentials"
                    );
                }
                Ok(resp)
            }
        },
        request,
    );
});
