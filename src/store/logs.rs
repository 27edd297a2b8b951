//! Log records counted by service and severity (`vitals_log_records_total`); the records are not kept.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;

use crate::bounded::{LimitedMap, OverflowCounter};
use crate::catalogue;
use crate::catalogue::OVERFLOW_LABEL;
use crate::model::{Collector, Metric, Value};
use crate::pipeline::attributes::service_name;

/// The severity word of an OTLP severity number (1-4 trace … 21-24 fatal).
pub fn severity_label(number: i32) -> &'static str {
    match number {
        1..=4 => "trace",
        5..=8 => "debug",
        9..=12 => "info",
        13..=16 => "warn",
        17..=20 => "error",
        21..=24 => "fatal",
        _ => "unspecified",
    }
}

/// Log record counters, bounded by service.
pub struct LogCounts {
    inner: Mutex<LimitedMap<String, (String, &'static str, u64)>>,
    ttl: Duration,
}

impl LogCounts {
    /// Counts kept for at most `limit` (service, severity) pairs.
    pub fn new(limit: usize, ttl: Duration, overflow: OverflowCounter) -> Self {
        LogCounts {
            inner: Mutex::new(LimitedMap::new(limit, overflow)),
            ttl,
        }
    }

    /// Counts a request's records; returns how many there were.
    pub fn ingest(&self, req: &ExportLogsServiceRequest) -> u64 {
        let now = Instant::now();
        let mut total = 0;
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = String::new();
        for rl in &req.resource_logs {
            let service = service_name(
                rl.resource
                    .as_ref()
                    .map(|r| r.attributes.as_slice())
                    .unwrap_or(&[]),
            );
            for sl in &rl.scope_logs {
                for rec in &sl.log_records {
                    let sev = severity_label(rec.severity_number);
                    // Severity labels never hold the separator, so the key splits one way only.
                    key.clear();
                    key.push_str(&service);
                    key.push('\u{1f}');
                    key.push_str(sev);
                    let (entry, _) = map.entry(
                        key.as_str(),
                        || key.clone(),
                        || (service.clone(), sev, 0),
                        now,
                    );
                    entry.2 += 1;
                    total += 1;
                }
            }
        }
        total
    }
}

impl LogCounts {
    /// Drops counts not updated within the TTL; runs on a timer, not inside a scrape.
    pub fn expire(&self, now: Instant) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.expire(now, self.ttl);
    }

    /// True while any count (or the overflow count) is held: expiry has work to come.
    pub fn holds(&self) -> bool {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        !map.is_empty()
    }
}

impl Collector for LogCounts {
    fn collect(&self, out: &mut Vec<Metric>) {
        let now = Instant::now();
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<_> = map.iter_live(now, self.ttl).map(|(_, v)| v).collect();
        let overflow = map.overflow_live(now, self.ttl);
        if rows.is_empty() && overflow.is_none() {
            return;
        }
        let mut fam = catalogue::LOG_RECORDS.metric();
        rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        for (svc, sev, n) in rows {
            fam.push(
                &[("service", svc), ("severity", sev)],
                Value::Sum(*n as f64),
            );
        }
        if let Some((_, _, n)) = overflow {
            fam.push(&[OVERFLOW_LABEL], Value::Sum(*n as f64));
        }
        out.push(fam);
    }
}

/// The log counts as a consumer of the receiver's log exports: every record is counted.
impl crate::pipeline::Consumer<ExportLogsServiceRequest> for LogCounts {
    fn consume(&self, request: &ExportLogsServiceRequest) -> crate::pipeline::PartialSuccess {
        self.ingest(request);
        crate::pipeline::PartialSuccess::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_ranges() {
        assert_eq!(severity_label(9), "info");
        assert_eq!(severity_label(17), "error");
        assert_eq!(severity_label(24), "fatal");
        assert_eq!(severity_label(0), "unspecified");
        assert_eq!(severity_label(99), "unspecified");
    }
}
