//! Durations on the command line and in `FACTOTUM_*` variables.
//!
//! A bare decimal is seconds (`15`, `0.1`: what every flag took before units), anything else a
//! duration with units as `humantime` reads them (`500ms`, `15s`, `2m`, `1h30m`). Each flag
//! states its range with a [`DurationRange`], and every range speaks with the same error text.

use std::time::Duration;

/// Parses `15`, `0.1` (seconds), `500ms`, `15s`, `2m`, `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("an empty duration".into());
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return match s.parse::<f64>() {
            Ok(v) if v.is_finite() && v < 1e12 => Ok(Duration::from_secs_f64(v)),
            _ => Err(format!("'{text}' is not a number of seconds")),
        };
    }
    // humantime's own words list every unit it knows; ours name the forms people use.
    humantime::parse_duration(s).map_err(|_| format!("'{text}' is not a duration"))
}

/// No practical maximum (about 31 years).
const UNBOUNDED: Duration = Duration::from_secs(1_000_000_000);

/// The durations a flag accepts, from `min` up to `max`, both included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationRange {
    pub min: Duration,
    pub max: Duration,
}

impl DurationRange {
    /// Anything from zero (a flag where 0 means "at once" or "never").
    pub const ANY: DurationRange = DurationRange::from(Duration::ZERO);
    /// From 10 ms: intervals and timeouts, where zero would spin.
    pub const POSITIVE: DurationRange = DurationRange::from(Duration::from_millis(10));

    /// From `min` up, with no practical maximum (about 31 years).
    pub const fn from(min: Duration) -> DurationRange {
        DurationRange {
            min,
            max: UNBOUNDED,
        }
    }

    /// Parses `text` and checks it is in range; the one error text every flag gives.
    pub fn parse(&self, text: &str) -> Result<Duration, String> {
        let d = parse_duration(text).and_then(|d| {
            if d < self.min || d > self.max {
                Err(format!("'{text}' is out of range"))
            } else {
                Ok(d)
            }
        });
        d.map_err(|why| {
            let range = if self.max >= UNBOUNDED {
                format!("from {} up", show(self.min))
            } else {
                format!("from {} up to {}", show(self.min), show(self.max))
            };
            format!(
                "{why}: expected a duration {range}, like 15 (seconds), 500ms, 15s, 2m or 1h30m"
            )
        })
    }

    /// A clap `value_parser` for this range.
    pub fn parser(self) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync {
        move |s: &str| self.parse(s)
    }
}

/// A duration as a person writes it: `0s`, `10ms`, `15s`, `1h 30m`.
pub fn show(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_decimals_are_seconds() {
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("0.1"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration(" 2 "), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn units_are_read_as_operators_write_them() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn nonsense_is_refused_with_the_text_given() {
        for bad in ["", "abc", "5x", "-1", "1..2", "nan"] {
            let e = DurationRange::ANY.parse(bad).unwrap_err();
            assert!(e.contains("like 15 (seconds), 500ms"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_range_is_checked_with_one_error_text() {
        let r = DurationRange::POSITIVE;
        assert_eq!(r.parse("10ms"), Ok(Duration::from_millis(10)));
        let e = r.parse("0").unwrap_err();
        assert_eq!(
            e,
            "'0' is out of range: expected a duration from 10ms up, like 15 (seconds), 500ms, 15s, 2m or 1h30m"
        );
        assert!(DurationRange::ANY.parse("0").is_ok());
        let capped = DurationRange {
            min: Duration::ZERO,
            max: Duration::from_secs(60),
        };
        assert!(capped.parse("61s").unwrap_err().contains("up to 1m"));
    }
}
