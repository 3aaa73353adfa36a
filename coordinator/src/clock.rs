//! The engine's only source of time. Production reads the system clock; tests follow Tokio's
//! clock, so `tokio::time::pause()` moves timeouts, retry delays, liveness and wall-clock
//! timestamps together and a test of a 15-second rule takes no 15 seconds.

use chrono::{DateTime, Utc};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, Default)]
pub enum Clock {
    /// Wall time from the system clock; intervals from Tokio's (the monotonic clock).
    #[default]
    System,
    /// Wall time derived from Tokio's clock, starting at `wall` when Tokio's clock read `at`.
    Tokio { wall: DateTime<Utc>, at: Instant },
}

impl Clock {
    /// A clock that follows Tokio's, starting now at `wall` (paused time moves it).
    pub fn tokio(wall: DateTime<Utc>) -> Clock {
        Clock::Tokio {
            wall,
            at: Instant::now(),
        }
    }

    /// Wall-clock time (timestamps, deadlines recorded in the store).
    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Tokio { wall, at } => {
                *wall + chrono::Duration::from_std(at.elapsed()).unwrap_or_default()
            }
        }
    }

    /// Monotonic time (liveness, grace periods).
    pub fn instant(&self) -> Instant {
        Instant::now()
    }

    /// Sleeps until a wall-clock time (at once if it has passed); forever without one.
    pub async fn sleep_until(&self, at: Option<DateTime<Utc>>) {
        match at {
            Some(at) => tokio::time::sleep((at - self.now()).to_std().unwrap_or_default()).await,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_moves_with_paused_time() {
        let start = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let clock = Clock::tokio(start);
        tokio::time::sleep(std::time::Duration::from_secs(90)).await;
        assert_eq!(clock.now(), start + chrono::Duration::seconds(90));
        let t0 = clock.instant();
        clock
            .sleep_until(Some(start + chrono::Duration::seconds(100)))
            .await;
        assert_eq!(clock.instant() - t0, std::time::Duration::from_secs(10));
    }
}
