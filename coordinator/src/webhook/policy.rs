//! What one delivery attempt's answer means, and how long to wait before the next: pure (the
//! time and the randomness are arguments), so the rules are tested without a network.
//!
//! - 2xx: delivered.
//! - A connection error, a timeout, 408, 429 or 5xx: retried with exponential backoff and full
//!   jitter (200ms doubling to 5 minutes), or after `Retry-After` when the answer has one,
//!   until the event's horizon (`--webhook-retry-for` after its transition) would pass.
//! - 410 Gone: the endpoint is disabled (until `factotum webhooks enable`).
//! - Any other answer (other 4xx, 3xx, 1xx): permanent for this event.

use std::time::{Duration, SystemTime};

pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What an attempt's answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Try again; after this long if the receiver said so.
    Retry {
        error: String,
        after: Option<Duration>,
    },
    /// This event will never be accepted: dead-letter it.
    Permanent(String),
    /// The endpoint is gone: disable it.
    Gone(String),
}

/// The meaning of an HTTP answer. `retry_after` is the header's text, `now` the time it came.
pub fn answer(status: u16, retry_after: Option<&str>, now: SystemTime) -> Outcome {
    let error = format!("HTTP {status}{}", reason(status));
    match status {
        200..=299 => Outcome::Delivered,
        408 | 429 | 500..=599 => Outcome::Retry {
            after: retry_after.and_then(|v| parse_retry_after(v, now)),
            error,
        },
        410 => Outcome::Gone(error),
        _ => Outcome::Permanent(error),
    }
}

/// A request that got no answer (refused, reset, timed out) is retried.
pub fn no_answer(error: String) -> Outcome {
    Outcome::Retry { error, after: None }
}

fn reason(status: u16) -> String {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .map(|r| format!(" {r}"))
        .unwrap_or_default()
}

/// `Retry-After`: delay-seconds or an HTTP date (a date in the past means now).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The wait before retry number `failures` (1 for the first retry): full jitter up to the
/// exponential backoff (`jitter` in [0, 1]), or what the receiver asked for when it asked for
/// more.
pub fn wait(failures: u32, asked: Option<Duration>, jitter: f64) -> Duration {
    let ceiling = FIRST_BACKOFF
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
        .min(MAX_BACKOFF);
    // Half fixed, half random: never a burst of zero waits.
    let backoff = ceiling.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
    match asked {
        Some(a) => a.max(FIRST_BACKOFF),
        None => backoff,
    }
}

/// Whether another attempt after `wait` still falls inside the event's horizon: `retry_for`
/// after its transition at `ttm_ms` (so a new leader keeps the same horizon).
pub fn within_horizon(ttm_ms: i64, retry_for: Duration, now: SystemTime, wait: Duration) -> bool {
    let Ok(since) = now.duration_since(SystemTime::UNIX_EPOCH) else {
        return true;
    };
    let deadline = Duration::from_millis(u64::try_from(ttm_ms).unwrap_or(0)) + retry_for;
    since + wait <= deadline
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(answer(200, None, t(0)), Outcome::Delivered);
        assert_eq!(answer(204, None, t(0)), Outcome::Delivered);
        for s in [408, 429, 500, 502, 503, 599] {
            assert!(
                matches!(answer(s, None, t(0)), Outcome::Retry { .. }),
                "{s}"
            );
        }
        assert_eq!(
            answer(410, None, t(0)),
            Outcome::Gone("HTTP 410 Gone".into())
        );
        for s in [301, 400, 401, 403, 404, 413, 422] {
            assert!(
                matches!(answer(s, None, t(0)), Outcome::Permanent(_)),
                "{s}"
            );
        }
        assert_eq!(
            answer(404, None, t(0)),
            Outcome::Permanent("HTTP 404 Not Found".into())
        );
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(
            answer(429, Some("7"), t(0)),
            Outcome::Retry {
                error: "HTTP 429 Too Many Requests".into(),
                after: Some(Duration::from_secs(7))
            }
        );
        let now = t(1_445_412_480);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_a_ceiling_and_honours_the_receiver() {
        assert_eq!(wait(1, None, 1.0), Duration::from_millis(200));
        assert_eq!(wait(1, None, 0.0), Duration::from_millis(100));
        assert_eq!(wait(3, None, 1.0), Duration::from_millis(800));
        assert_eq!(wait(40, None, 1.0), MAX_BACKOFF);
        assert_eq!(
            wait(1, Some(Duration::from_secs(20)), 0.3),
            Duration::from_secs(20)
        );
        assert_eq!(wait(9, Some(Duration::ZERO), 0.3), FIRST_BACKOFF);
    }

    #[test]
    fn the_horizon_counts_from_the_transition() {
        let day = Duration::from_secs(86_400);
        let ttm = 1_000_000; // ms
        assert!(within_horizon(ttm, day, t(1_000), Duration::from_secs(1)));
        assert!(!within_horizon(
            ttm,
            day,
            t(1_000 + 86_400),
            Duration::from_secs(1)
        ));
        assert!(!within_horizon(
            ttm,
            Duration::ZERO,
            t(1_000),
            Duration::from_millis(1)
        ));
    }
}
