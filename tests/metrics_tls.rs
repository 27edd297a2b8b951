//! `/metrics` over TLS with basic auth from an exporter-toolkit web config: a certificate made by
//! openssl, a bcrypt hash, and a real Prometheus that scrapes with the right password (up = 1), a wrong
//! one (up = 0) and plain HTTP (up = 0).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{query, require_tool, start_prometheus_config, Vitals};

/// A Prometheus with three jobs against `target`: right password, wrong password, plain HTTP.
fn prometheus(target: &str, ca: &std::path::Path) -> common::Prometheus {
    let job = |name: &str, scheme: &str, password: &str| {
        format!(
            "  - job_name: {name}\n    scheme: {scheme}\n    tls_config:\n      ca_file: {}\n      server_name: localhost\n    basic_auth:\n      username: prom\n      password: {password}\n    static_configs:\n      - targets: ['{target}']\n",
            ca.display()
        )
    };
    start_prometheus_config(&format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n{}{}{}",
        job("good", "https", "s3cret"),
        job("wrong", "https", "guess"),
        job("plain", "http", "s3cret"),
    ))
}

#[test]
fn prometheus_scrapes_over_tls_with_basic_auth() {
    let openssl = require_tool("openssl", "apt-get install -y openssl");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ok = Command::new(openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success(), "openssl req failed");
    let hash = bcrypt::hash("s3cret", 10).unwrap();
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        format!("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\nbasic_auth_users:\n  prom: {hash}\n"),
    )
    .unwrap();
    let v = Vitals::start(&["--web-config-file", web.to_str().unwrap()]);
    let target = v.metrics.to_string();
    // Plain HTTP to a TLS listener gets no HTTP answer.
    assert!(ureq::get(&format!("http://{target}/healthz"))
        .timeout(Duration::from_secs(3))
        .call()
        .is_err());

    let p = prometheus(&target, &cert);
    let deadline = Instant::now() + Duration::from_secs(30);
    let up = |job: &str| query(&p, &format!("up{{job=\"{job}\"}}"));
    loop {
        if up("good") == Some(1.0) && up("wrong").is_some() && up("plain").is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no scrapes: good={:?}",
            up("good")
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(up("wrong"), Some(0.0), "a wrong password must not scrape");
    assert_eq!(up("plain"), Some(0.0), "plain HTTP must not scrape");
    assert!(
        query(&p, "vitals_exporter_series{job=\"good\"}").unwrap_or(0.0) > 0.0,
        "vitals' own series arrive over TLS"
    );
}
