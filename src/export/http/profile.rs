//! `GET /debug/pprof/profile?seconds=N[&format=folded]`: a CPU profile of the target, gzipped pprof by
//! default, or a polite refusal that says why (off, no target, not permitted and the fix, busy); the last
//! profile; and the continuous profiler's captures (`/debug/pprof/captures`, `/debug/pprof/capture/<id>`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_DISPOSITION, RETRY_AFTER};
use hyper::{Response, StatusCode};

use super::respond;
use crate::profile::continuous::{self, Continuous};
use crate::profile::{pprof, Profiler, Refusal};

/// Seconds sampled when the request does not say.
const DEFAULT_SECONDS: u64 = 30;

/// Highest sampling rate a request may ask for.
const MAX_HZ: u64 = 999;

/// What the query asks for.
#[derive(Debug, PartialEq, Eq)]
struct Query {
    seconds: u64,
    folded: bool,
    /// Samples per second of CPU time, when not the profiler's default.
    hz: Option<u64>,
}

fn parse_query(query: Option<&str>, max: Duration) -> Result<Query, String> {
    let mut q = Query {
        seconds: DEFAULT_SECONDS,
        folded: false,
        hz: None,
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "seconds" => {
                q.seconds = v
                    .parse()
                    .ok()
                    .filter(|s| (1..=max.as_secs()).contains(s))
                    .ok_or_else(|| format!("seconds={v}: give 1..{}", max.as_secs()))?
            }
            "hz" => {
                q.hz = Some(
                    v.parse()
                        .ok()
                        .filter(|h| (1..=MAX_HZ).contains(h))
                        .ok_or_else(|| format!("hz={v}: give 1..{MAX_HZ}"))?,
                )
            }
            "format" => match v {
                "folded" => q.folded = true,
                "pprof" | "proto" => q.folded = false,
                _ => return Err(format!("format={v}: give pprof or folded")),
            },
            _ => {}
        }
    }
    Ok(q)
}

/// Sets the profile's stop flag when the request is dropped (client gone, server shutting down).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Answers a profile request.
pub async fn answer(
    profiler: Option<&Arc<Profiler>>,
    query: Option<&str>,
) -> Response<Full<Bytes>> {
    let Some(profiler) = profiler else {
        return respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "profiling is not set up in this vitals\n",
        );
    };
    let q = match parse_query(query, profiler.settings.max_duration) {
        Ok(q) => q,
        Err(e) => return respond(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let _guard = StopOnDrop(stop.clone());
    let p = profiler.clone();
    let (seconds, folded, hz) = (q.seconds, q.folded, q.hz);
    let taken = tokio::task::spawn_blocking(move || {
        p.take_at(Duration::from_secs(seconds), hz, &stop)
            .map(|profile| {
                if folded {
                    Bytes::from(pprof::to_folded(&profile))
                } else {
                    Bytes::from(pprof::to_pprof_gzip(&profile))
                }
            })
    })
    .await;
    match taken {
        Ok(Ok(body)) => {
            if folded {
                respond(StatusCode::OK, "text/plain; charset=utf-8", body)
            } else {
                let mut r = respond(StatusCode::OK, "application/octet-stream", body);
                r.headers_mut().insert(
                    CONTENT_DISPOSITION,
                    HeaderValue::from_static("attachment; filename=\"cpu.pb.gz\""),
                );
                r
            }
        }
        Ok(Err(refusal)) => refused(&refusal, seconds),
        Err(_) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "the profile failed; see vitals' log\n",
        ),
    }
}

/// Where the live page takes the last profile's folded stacks.
const LAST_PROFILE_SLOT: &str = "<pre hidden id=\"profile-last\"></pre>";
/// Largest folded text put into the page; a larger profile is fetched by the page instead.
const INLINE_LIMIT: usize = 1 << 20;

/// The live page with the last profile's folded stacks in it (HTML-escaped), so the flame graph is drawn
/// as the page loads.
pub fn with_last(page: String, profiler: Option<&Arc<Profiler>>) -> String {
    let Some(profile) = profiler.and_then(|p| p.last()) else {
        return page;
    };
    let folded = pprof::to_folded(&profile);
    if folded.len() > INLINE_LIMIT {
        return page;
    }
    let mut escaped = String::with_capacity(folded.len() + 64);
    escaped.push_str("<pre hidden id=\"profile-last\">");
    for c in folded.chars() {
        match c {
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '&' => escaped.push_str("&amp;"),
            _ => escaped.push(c),
        }
    }
    escaped.push_str("</pre>");
    page.replacen(LAST_PROFILE_SLOT, &escaped, 1)
}

/// `GET /debug/pprof/last[?format=folded]`: the last profile taken (the live page draws it), or 404.
pub fn last(profiler: Option<&Arc<Profiler>>, query: Option<&str>) -> Response<Full<Bytes>> {
    let Some(profile) = profiler.and_then(|p| p.last()) else {
        return respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "no profile has been taken yet\n",
        );
    };
    let folded = query.unwrap_or("").split('&').any(|p| p == "format=folded");
    if folded {
        respond(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            pprof::to_folded(&profile),
        )
    } else {
        respond(
            StatusCode::OK,
            "application/octet-stream",
            pprof::to_pprof_gzip(&profile),
        )
    }
}

/// `GET /debug/pprof/captures`: the continuous profiler's ring and the captures it kept, as JSON.
pub fn captures(continuous: Option<&Arc<Continuous>>) -> Response<Full<Bytes>> {
    match continuous {
        Some(c) => respond(
            StatusCode::OK,
            "application/json",
            captures_json(c).to_string(),
        ),
        None => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "continuous profiling is off (--profile-continuous turns it on)\n",
        ),
    }
}

/// Where the live page takes the captures listing.
const CAPTURES_SLOT: &str = "<pre hidden id=\"captures-json\"></pre>";

/// The live page with the captures listing in it (HTML-escaped JSON), so it is drawn as the page loads.
pub fn with_captures(page: String, continuous: Option<&Arc<Continuous>>) -> String {
    let Some(c) = continuous else {
        return page;
    };
    let json = captures_json(c).to_string();
    let mut escaped = String::with_capacity(json.len() + 64);
    escaped.push_str("<pre hidden id=\"captures-json\">");
    for ch in json.chars() {
        match ch {
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '&' => escaped.push_str("&amp;"),
            _ => escaped.push(ch),
        }
    }
    escaped.push_str("</pre>");
    page.replacen(CAPTURES_SLOT, &escaped, 1)
}

/// The ring's state and the kept captures, newest first.
fn captures_json(c: &Continuous) -> serde_json::Value {
    let secs = |ns: u128| ns as f64 / 1e9;
    let ring = c.ring_state();
    let list: Vec<serde_json::Value> = c
        .captures()
        .iter()
        .rev()
        .map(|k| {
            let first = k.causes.first();
            serde_json::json!({
                "id": k.id,
                "alert": first.map(|c| c.alert.as_str()),
                "severity": first.map(|c| c.severity.as_str()),
                "value": first.and_then(|c| c.value),
                "threshold": first.map(|c| c.threshold),
                "at": first.map(|c| secs(c.at_ns)),
                "also": k.causes.iter().skip(1).map(|c| c.alert.as_str()).collect::<Vec<_>>(),
                "from": secs(k.from_ns),
                "to": secs(k.to_ns),
                "samples": k.samples,
                "bytes": k.pprof_gz.len(),
                "top": k.top.iter().map(|(f, s)| serde_json::json!({"function": f, "share": s})).collect::<Vec<_>>(),
                "url": format!("debug/pprof/capture/{}", k.id),
            })
        })
        .collect();
    let pending: Vec<serde_json::Value> = c
        .pending()
        .into_iter()
        .map(|(id, alert, at)| serde_json::json!({"id": id, "alert": alert, "at": secs(at)}))
        .collect();
    serde_json::json!({
        "continuous": {
            "hz": c.settings.hz,
            "segment_seconds": continuous::SEGMENT.as_secs(),
            "before_seconds": continuous::BEFORE.as_secs(),
            "after_seconds": continuous::AFTER.as_secs(),
            "window_seconds": c.settings.window.as_secs(),
            "ring_limit_bytes": c.settings.ring_bytes,
            "ring_bytes": ring.bytes,
            "ring_seconds": ring.span_seconds,
            "segments": ring.segments,
            "evicted_segments": ring.evicted,
            "dropped_samples": ring.dropped_samples,
            "leaf_only_samples": ring.leaf_only_samples,
            "captures_bytes": c.captures_bytes(),
            "max_captures": continuous::MAX_CAPTURES,
        },
        "pending": pending,
        "captures": list,
    })
}

/// `GET /debug/pprof/capture/<id>[?format=folded]`: one kept capture as gzipped pprof (or folded stacks).
pub fn capture(
    continuous: Option<&Arc<Continuous>>,
    id: &str,
    query: Option<&str>,
) -> Response<Full<Bytes>> {
    let Some(c) = continuous else {
        return respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "continuous profiling is off (--profile-continuous turns it on)\n",
        );
    };
    let Ok(n) = id.parse::<u64>() else {
        return respond(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "give a capture number, as listed at /debug/pprof/captures\n",
        );
    };
    let Some(k) = c.capture(n) else {
        return respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("capture {n} is not kept (see /debug/pprof/captures)\n"),
        );
    };
    if query.unwrap_or("").split('&').any(|p| p == "format=folded") {
        return match pprof::folded_from_gzip(&k.pprof_gz) {
            Some(text) => respond(StatusCode::OK, "text/plain; charset=utf-8", text),
            None => respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                "the capture could not be read back\n",
            ),
        };
    }
    let mut r = respond(
        StatusCode::OK,
        "application/octet-stream",
        Bytes::from(k.pprof_gz.clone()),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"capture-{n}.pb.gz\"")) {
        r.headers_mut().insert(CONTENT_DISPOSITION, v);
    }
    r
}

fn refused(refusal: &Refusal, seconds: u64) -> Response<Full<Bytes>> {
    let text = format!("{refusal}\n");
    let (status, retry) = match refusal {
        Refusal::Off => (StatusCode::NOT_FOUND, None),
        Refusal::NoTarget => (StatusCode::SERVICE_UNAVAILABLE, Some(5)),
        Refusal::Busy => (StatusCode::TOO_MANY_REQUESTS, Some(seconds.max(1))),
        Refusal::NotPermitted(_) => (StatusCode::FORBIDDEN, None),
    };
    let mut r = respond(status, "text/plain; charset=utf-8", text);
    if let Some(s) = retry {
        if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
            r.headers_mut().insert(RETRY_AFTER, v);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_and_bad_ones_are_named() {
        let max = Duration::from_secs(300);
        assert_eq!(
            parse_query(None, max),
            Ok(Query {
                seconds: 30,
                folded: false,
                hz: None
            })
        );
        assert_eq!(
            parse_query(Some("seconds=5&format=folded&hz=499"), max),
            Ok(Query {
                seconds: 5,
                folded: true,
                hz: Some(499)
            })
        );
        assert!(parse_query(Some("seconds=0"), max)
            .unwrap_err()
            .contains("seconds=0"));
        assert!(parse_query(Some("seconds=301"), max).is_err());
        assert!(parse_query(Some("hz=1000"), max).is_err());
        assert!(parse_query(Some("format=svg"), max)
            .unwrap_err()
            .contains("format=svg"));
    }
}
