//! Checked time arithmetic for values a user, a broker or a peer controls.
//!
//! `Instant + Duration` and `SystemTime + Duration` panic on overflow, so a
//! `nack_after(Duration::MAX)`, a lease of `Duration::MAX` or a header saying
//! "not before year 300 million" would crash the process that reads it. Every
//! such sum in `mq` goes through these helpers instead: they clamp to a far
//! but representable point ([`FAR_FUTURE`] from now), which behaves as
//! "never" for any real process.

use std::time::{Duration, Instant, SystemTime};

/// The longest wait `mq` schedules: 100 years. Longer requests are clamped
/// to it, which is "forever" for any process while staying representable.
pub const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `duration`, at most [`FAR_FUTURE`].
pub fn clamp(duration: Duration) -> Duration {
    duration.min(FAR_FUTURE)
}

/// `Instant::now() + duration`, clamped instead of panicking.
pub fn instant_after(duration: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(clamp(duration))
        .or_else(|| now.checked_add(Duration::from_secs(24 * 3600)))
        .unwrap_or(now)
}

/// `tokio::time::Instant::now() + duration`, clamped instead of panicking.
pub fn tokio_instant_after(duration: Duration) -> tokio::time::Instant {
    tokio::time::Instant::from_std(instant_after(duration))
}

/// `SystemTime::now() + duration`, clamped instead of panicking.
pub fn system_time_after(duration: Duration) -> SystemTime {
    let now = SystemTime::now();
    now.checked_add(clamp(duration)).unwrap_or(now)
}

/// The time `millis` milliseconds after the Unix epoch, or `None` when that
/// is not representable on this platform (a peer's bogus timestamp).
pub fn from_unix_millis(millis: u64) -> Option<SystemTime> {
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(millis))
}

/// The time `secs` seconds after the Unix epoch, or `None` when that is not
/// representable (AMQP timestamps are seconds in a `u64`).
pub fn from_unix_secs(secs: u64) -> Option<SystemTime> {
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// How long until `at` (zero if it has passed), at most [`FAR_FUTURE`].
pub fn until(at: SystemTime) -> Duration {
    clamp(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The pause before retrying after `failures` consecutive failures of a
/// connection or a poll (reconnects, receive loops): 100 ms doubling up to
/// 5 s, with up to 25% random jitter so many clients do not retry in step.
/// Every backend and the worker use this one schedule ([`backoff_capped`]
/// where a user configures the longest pause).
pub fn backoff(failures: u32) -> Duration {
    backoff_capped(failures, Duration::from_secs(5))
}

/// [`backoff`] with the longest pause `max` (at least 100 ms, at most
/// [`FAR_FUTURE`]) instead of 5 s.
pub fn backoff_capped(failures: u32, max: Duration) -> Duration {
    let max = u64::try_from(clamp(max).as_millis())
        .unwrap_or(u64::MAX)
        .max(100);
    let base = 100u64
        .saturating_mul(1u64 << failures.saturating_sub(1).min(32))
        .min(max);
    Duration::from_millis(base.saturating_add(fastrand::u64(0..=base / 4)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extreme_durations_clamp_instead_of_panicking() {
        let far = instant_after(Duration::MAX);
        assert!(far > Instant::now() + Duration::from_secs(3600));
        let far = system_time_after(Duration::MAX);
        assert!(far > SystemTime::now() + Duration::from_secs(3600));
        let _ = tokio_instant_after(Duration::MAX);
        assert_eq!(clamp(Duration::MAX), FAR_FUTURE);
        assert_eq!(clamp(Duration::from_secs(1)), Duration::from_secs(1));
    }

    #[test]
    fn backoff_capped_honours_the_cap_and_extremes() {
        let ms = |n, max| backoff_capped(n, max).as_millis() as u64;
        assert!((750..=937).contains(&ms(10, Duration::from_millis(750))));
        assert!((100..=125).contains(&ms(1, Duration::ZERO)));
        assert!(ms(u32::MAX, Duration::MAX) >= 100);
        assert!((400..=500).contains(&ms(3, Duration::MAX)));
    }

    #[test]
    fn backoff_grows_caps_and_jitters_within_a_quarter() {
        let ms = |n| backoff(n).as_millis() as u64;
        assert!((100..=125).contains(&ms(1)), "{}", ms(1));
        assert!((200..=250).contains(&ms(2)));
        assert!((5_000..=6_250).contains(&ms(40)));
        assert!((5_000..=6_250).contains(&ms(u32::MAX)));
    }

    #[test]
    fn epoch_offsets_are_checked() {
        assert_eq!(from_unix_millis(0), Some(SystemTime::UNIX_EPOCH));
        // 584 million years fits the 64-bit seconds of a Unix SystemTime.
        #[cfg(unix)]
        assert!(from_unix_millis(u64::MAX).is_some());
        // u64::MAX seconds is past what SystemTime holds on every platform.
        assert_eq!(from_unix_secs(u64::MAX), None);
        assert!(until(SystemTime::UNIX_EPOCH).is_zero());
        assert!(until(system_time_after(Duration::MAX)) <= FAR_FUTURE);
    }
}
