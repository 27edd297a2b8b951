//! The OTLP specification's retry rules, written once for the forwarder and the pusher: which answers
//! are retried, how long to wait before the next attempt (the peer's Retry-After or RetryInfo, capped;
//! else exponential backoff with jitter), when to stop, and the loop that sends until one of those ends.
//!
//! OTLP/HTTP retries 429, 502, 503 and 504; OTLP/gRPC retries CANCELLED, DEADLINE_EXCEEDED, ABORTED,
//! OUT_OF_RANGE, UNAVAILABLE and DATA_LOSS, and RESOURCE_EXHAUSTED only when the server sent RetryInfo
//! (without it the server says the request can never fit). A peer's asked-for delay is honoured up to
//! [`RetryPolicy::max_asked_delay`]: a `Retry-After: 3600` from a confused proxy must not park the
//! forwarding queue for an hour.

use std::future::Future;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::upstream::Answer;
use crate::config::otlp::RetryPolicy;

/// True when an OTLP/HTTP answer with this status is to be retried.
pub fn http_status_retryable(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// True when an OTLP/gRPC answer with this code is to be retried; `retry_info` is whether the status
/// carried a `google.rpc.RetryInfo` detail.
pub fn grpc_code_retryable(code: tonic::Code, retry_info: bool) -> bool {
    use tonic::Code;
    match code {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => true,
        Code::ResourceExhausted => retry_info,
        _ => false,
    }
}

/// The delay a `Retry-After` header value asks for at `now`: delta-seconds or an HTTP-date (RFC 9110);
/// a date in the past asks for no delay. None when the value is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

impl RetryPolicy {
    /// The waits of one request's retries.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            policy: *self,
            next: self.first_backoff,
        }
    }
}

/// The retry waits of one request: each call to [`Backoff::wait`] is one retryable failure.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    next: Duration,
}

impl Backoff {
    /// The wait before the next attempt. `asked` is the peer's delay; `unit` a number in [0, 1) that
    /// places an unasked wait in the upper half of the current backoff ("equal jitter": senders that
    /// failed together spread out, and none retries at once).
    pub fn wait(&mut self, asked: Option<Duration>, unit: f64) -> Duration {
        let backoff = self.next;
        self.next = (self.next * 2).min(self.policy.max_backoff);
        match asked {
            // A zero asked delay still waits the jittered floor, so a peer answering
            // `Retry-After: 0` cannot spin the sender.
            Some(d) => d
                .min(self.policy.max_asked_delay)
                .max(self.policy.first_backoff / 2),
            None => backoff / 2 + backoff.mul_f64(unit.clamp(0.0, 1.0) / 2.0),
        }
    }
}

/// A number in [0, 1) from the standard library's randomly keyed hasher (no random crate needed for
/// jitter).
pub fn unit_random() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// What ends a request's retries besides an answer.
#[derive(Clone, Copy, Default)]
pub struct Bound<'a> {
    /// No attempt is started, and none waited for, past this instant.
    pub deadline: Option<Instant>,
    /// Stops at once when cancelled.
    pub stop: Option<&'a CancellationToken>,
}

/// How one request's delivery ended.
#[derive(Debug)]
pub enum Delivery {
    /// The peer took it; `rejected` items were refused by its partial success.
    Accepted {
        /// Items refused.
        rejected: u64,
        /// The peer's message about them.
        message: String,
    },
    /// The peer refused it for good.
    Refused {
        /// Short reason, stable per cause.
        reason: String,
    },
    /// The deadline came: during an attempt (`in_flight`), or the next wait would have passed it.
    OutOfTime {
        /// The deadline cut an attempt short.
        in_flight: bool,
    },
    /// The stop token fired.
    Stopped,
}

/// Sends with `send` until the peer takes or refuses the request, or `bound` ends it; after each
/// retryable answer, `on_retry(why, wait)` is told before the wait.
pub async fn deliver<S, F>(
    policy: &RetryPolicy,
    bound: Bound<'_>,
    mut send: S,
    mut on_retry: impl FnMut(&str, Duration),
) -> Delivery
where
    S: FnMut() -> F,
    F: Future<Output = Answer>,
{
    let stopped = async {
        match bound.stop {
            Some(s) => s.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stopped);
    let out_of_time = async {
        match bound.deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(out_of_time);
    let mut backoff = policy.backoff();
    loop {
        let answer = tokio::select! {
            a = send() => a,
            _ = &mut out_of_time => return Delivery::OutOfTime { in_flight: true },
            _ = &mut stopped => return Delivery::Stopped,
        };
        let (after, why) = match answer {
            Answer::Accepted { rejected, message } => {
                return Delivery::Accepted { rejected, message }
            }
            Answer::Permanent { reason } => return Delivery::Refused { reason },
            Answer::Retry { after, why } => (after, why),
        };
        let wait = backoff.wait(after, unit_random());
        on_retry(&why, wait);
        if bound.deadline.is_some_and(|d| Instant::now() + wait >= d) {
            return Delivery::OutOfTime { in_flight: false };
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut stopped => return Delivery::Stopped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tonic::Code;

    #[test]
    fn only_the_specified_http_statuses_are_retried() {
        for s in [429, 502, 503, 504] {
            assert!(http_status_retryable(s), "{s}");
        }
        for s in [200, 400, 401, 403, 404, 408, 413, 500, 501, 505] {
            assert!(!http_status_retryable(s), "{s}");
        }
    }

    #[test]
    fn grpc_codes_follow_the_specification_and_resource_exhausted_needs_retry_info() {
        let retryable = [
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unavailable,
            Code::DataLoss,
        ];
        for c in retryable {
            assert!(grpc_code_retryable(c, false), "{c:?}");
        }
        assert!(!grpc_code_retryable(Code::ResourceExhausted, false));
        assert!(grpc_code_retryable(Code::ResourceExhausted, true));
        for c in [
            Code::Unknown,
            Code::InvalidArgument,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::FailedPrecondition,
            Code::Unimplemented,
            Code::Internal,
            Code::Unauthenticated,
        ] {
            assert!(!grpc_code_retryable(c, true), "{c:?}");
        }
    }

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        // A date already past asks for no delay.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        for bad in ["", "-5", "1.5", "soon", "Sun, 32 Nov 1994 08:50:07 GMT"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn asked_delays_are_honoured_up_to_the_cap() {
        let p = RetryPolicy::OTLP;
        let mut b = p.backoff();
        assert_eq!(
            b.wait(Some(Duration::from_secs(3)), 0.5),
            Duration::from_secs(3)
        );
        assert_eq!(
            b.wait(Some(Duration::from_secs(3600)), 0.5),
            p.max_asked_delay
        );
        // Retry-After: 0 cannot make the sender spin.
        assert_eq!(b.wait(Some(Duration::ZERO), 0.0), p.first_backoff / 2);
    }

    #[test]
    fn unasked_waits_double_with_jitter_in_the_upper_half_up_to_the_largest_backoff() {
        let p = RetryPolicy::OTLP;
        let mut lo = p.backoff();
        let mut hi = p.backoff();
        let mut expected = p.first_backoff;
        for _ in 0..10 {
            let (a, b) = (lo.wait(None, 0.0), hi.wait(None, 0.999_999));
            assert_eq!(a, expected / 2);
            assert!(
                b < expected && b > expected.mul_f64(0.999),
                "{b:?} vs {expected:?}"
            );
            expected = (expected * 2).min(p.max_backoff);
        }
        assert_eq!(expected, Duration::from_secs(5));
        // Out-of-range randomness is clamped, never a wait beyond the backoff.
        assert!(p.backoff().wait(None, 7.0) <= p.first_backoff);
        let draws: Vec<f64> = (0..1000).map(|_| unit_random()).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        // Spread: 1000 draws cover each tenth of [0, 1) (chance of a miss about 1e-45).
        for tenth in 0..10 {
            let t = f64::from(tenth) / 10.0;
            assert!(draws.iter().any(|u| *u >= t && *u < t + 0.1), "{t}");
        }
    }

    fn retry(after: Option<Duration>) -> Answer {
        Answer::Retry {
            after,
            why: "HTTP 503".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_retries_until_accepted_and_waits_the_capped_asked_delay() {
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let mut waits = Vec::new();
        let got = deliver(
            &RetryPolicy::OTLP,
            Bound::default(),
            || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        retry(Some(Duration::from_secs(3600)))
                    } else {
                        Answer::Accepted {
                            rejected: 1,
                            message: "one bad".into(),
                        }
                    }
                }
            },
            |_, w| waits.push(w),
        )
        .await;
        assert!(matches!(got, Delivery::Accepted { rejected: 1, .. }));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(waits, vec![Duration::from_secs(60); 2]);
        assert_eq!(started.elapsed(), Duration::from_secs(120));
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_bounds_attempts_and_a_permanent_answer_ends_at_once() {
        let calls = AtomicU32::new(0);
        let deadline = Instant::now() + Duration::from_secs(10);
        let got = deliver(
            &RetryPolicy::OTLP,
            Bound {
                deadline: Some(deadline),
                stop: None,
            },
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { retry(Some(Duration::from_secs(3))) }
            },
            |_, _| {},
        )
        .await;
        // Attempts at 0, 3, 6 and 9 s; the wait after the fourth would pass the deadline.
        assert!(matches!(got, Delivery::OutOfTime { in_flight: false }));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert!(Instant::now() < deadline);

        // An attempt still in flight at the deadline is cut.
        let got = deliver(
            &RetryPolicy::OTLP,
            Bound {
                deadline: Some(Instant::now() + Duration::from_secs(1)),
                stop: None,
            },
            || async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                retry(None)
            },
            |_, _| {},
        )
        .await;
        assert!(matches!(got, Delivery::OutOfTime { in_flight: true }));

        let calls = AtomicU32::new(0);
        let got = deliver(
            &RetryPolicy::OTLP,
            Bound::default(),
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                async {
                    Answer::Permanent {
                        reason: "HTTP 400".into(),
                    }
                }
            },
            |_, _| {},
        )
        .await;
        assert!(matches!(got, Delivery::Refused { reason } if reason == "HTTP 400"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_a_wait() {
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            s.cancel();
        });
        let started = Instant::now();
        let got = deliver(
            &RetryPolicy::OTLP,
            Bound {
                deadline: None,
                stop: Some(&stop),
            },
            || async { retry(Some(Duration::from_secs(30))) },
            |_, _| {},
        )
        .await;
        assert!(matches!(got, Delivery::Stopped));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
