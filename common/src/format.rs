//! Time and duration formats used on the console and in webhook payloads (Factotum 0.7's).

use chrono::{DateTime, Utc};
use std::time::Duration;

/// `2026-11-22T22:25:39.188Z`: the `startTime` / `started` format of the webhooks.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// ISO-8601 duration with seconds only, as Factotum's chrono printed it: `PT2.144S`,
/// `PT0.003965582S`, `P1DT5.250S`, `PT0S`. The fraction uses 3, 6 or 9 digits, the fewest that
/// are exact.
pub fn iso8601(d: Duration) -> String {
    const DAY: u64 = 86_400;
    let days = d.as_secs() / DAY;
    let secs = d.as_secs() % DAY;
    let nanos = d.subsec_nanos();
    let mut out = String::from("P");
    if days != 0 {
        out.push_str(&format!("{days}D"));
    }
    if secs != 0 || nanos != 0 || days == 0 {
        if nanos == 0 {
            out.push_str(&format!("T{secs}S"));
        } else if nanos.is_multiple_of(1_000_000) {
            out.push_str(&format!("T{secs}.{:03}S", nanos / 1_000_000));
        } else if nanos.is_multiple_of(1_000) {
            out.push_str(&format!("T{secs}.{:06}S", nanos / 1_000));
        } else {
            out.push_str(&format!("T{secs}.{nanos:09}S"));
        }
    }
    out
}

/// Console durations: `4.2s` under a minute, `3m, 7s` under an hour, `1h, 2m, 3s` beyond.
pub fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if secs < 3600 {
        format!("{}m, {}s", secs / 60, secs % 60)
    } else {
        format!("{}h, {}m, {}s", secs / 3600, (secs % 3600) / 60, secs % 60)
    }
}

/// The console's "was started at" time (chrono's `DateTime<Utc>` display, as Factotum printed).
pub fn console_time(t: DateTime<Utc>) -> String {
    t.to_string()
}

/// An error with its sources, `outer: inner: innermost`, for messages a person reads.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn iso8601_matches_factotum() {
        assert_eq!(iso8601(Duration::from_millis(2144)), "PT2.144S");
        assert_eq!(iso8601(Duration::new(0, 3_965_582)), "PT0.003965582S");
        assert_eq!(iso8601(Duration::new(86_405, 250_000_000)), "P1DT5.250S");
        assert_eq!(iso8601(Duration::ZERO), "PT0S");
        assert_eq!(iso8601(Duration::from_secs(86_400)), "P1D");
        assert_eq!(iso8601(Duration::from_micros(1_500)), "PT0.001500S");
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_millis(4_250)), "4.2s");
        assert_eq!(human(Duration::from_secs(187)), "3m, 7s");
        assert_eq!(human(Duration::from_secs(3723)), "1h, 2m, 3s");
        assert_eq!(human(Duration::ZERO), "0.0s");
    }

    #[test]
    fn timestamps_have_millis() {
        let t = Utc.with_ymd_and_hms(2026, 11, 22, 22, 25, 39).unwrap()
            + chrono::Duration::microseconds(188_999);
        assert_eq!(timestamp(t), "2026-11-22T22:25:39.188Z");
    }
}
