//! The rate limit of a replay: a token bucket of one token refilled every
//! `1 / rate` seconds on an absolute schedule, so time spent sending counts
//! against the interval (no drift from sleeping after each message) and a
//! slow send is never made up by a burst.

use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};

/// Paces sends to at most `rate` per second.
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    next: Option<Instant>,
}

impl Pacer {
    /// At most `per_second` messages per second (`> 0`, finite; at most one
    /// per nanosecond).
    pub fn new(per_second: f64) -> Result<Self> {
        if !per_second.is_finite() || per_second <= 0.0 {
            return Err(Error::config(format!(
                "a rate must be a positive number of messages per second, not {per_second}"
            )));
        }
        let interval = Duration::try_from_secs_f64(1.0 / per_second)
            .map_err(|e| Error::config(format!("rate {per_second} is out of range: {e}")))?;
        Ok(Pacer {
            interval,
            next: None,
        })
    }

    /// Waits for the next token: the first at once, then one per interval.
    pub async fn ready(&mut self) {
        let now = Instant::now();
        let due = self.next.map_or(now, |n| n.max(now));
        tokio::time::sleep_until(due).await;
        self.next = Some(due.checked_add(self.interval).unwrap_or(due));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn twenty_at_ten_per_second_take_one_point_nine_seconds() {
        let mut p = Pacer::new(10.0).expect("rate");
        let start = Instant::now();
        for _ in 0..20 {
            p.ready().await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(1900));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_send_is_not_made_up_by_a_burst() {
        let mut p = Pacer::new(10.0).expect("rate");
        p.ready().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = Instant::now();
        p.ready().await;
        p.ready().await;
        assert_eq!(t.elapsed(), Duration::from_millis(100));
    }

    #[test]
    fn refuses_nonsense() {
        for r in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-300] {
            assert!(Pacer::new(r).is_err(), "{r}");
        }
    }
}
