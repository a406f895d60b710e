//! Wall-clock time to the millisecond, read cheaply: every message id
//! carries the time it was made (UUIDv7), and the memory broker stamps
//! every message it stores, so a clock read is paid per message.
//!
//! On Linux this is `CLOCK_REALTIME_COARSE`: the wall clock as of the
//! kernel's last tick (1-4 ms behind, following every clock adjustment),
//! read in about 3 ns against 21-30 ns for `SystemTime::now` on the
//! benchmark machine. Elsewhere it is `SystemTime::now`. Durations are
//! never measured with it: they use `Instant`. The call goes through
//! glibc (rustix's `use-libc`): rustix's own vDSO lookup crashes a process
//! run under valgrind, as `callgrind` on `mq bench` showed.

use std::time::SystemTime;

/// The current wall-clock time, up to one kernel tick (1-4 ms) behind.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn now_coarse() -> SystemTime {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    let since_epoch = u64::try_from(ts.tv_sec)
        .ok()
        .zip(u32::try_from(ts.tv_nsec).ok())
        .map(|(secs, nanos)| std::time::Duration::new(secs, nanos));
    // A clock before 1970 or out of range: the precise clock says what it is.
    since_epoch
        .and_then(|d| SystemTime::UNIX_EPOCH.checked_add(d))
        .unwrap_or_else(SystemTime::now)
}

/// The current wall-clock time.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn now_coarse() -> SystemTime {
    SystemTime::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Never ahead of the precise clock, and at most a few ticks behind it.
    #[test]
    fn coarse_time_is_now_to_a_few_milliseconds() {
        for _ in 0..1000 {
            let coarse = now_coarse();
            let precise = SystemTime::now();
            let behind = precise.duration_since(coarse).unwrap_or_else(|e| {
                panic!(
                    "coarse clock ahead of the precise one by {:?}",
                    e.duration()
                )
            });
            assert!(
                behind < std::time::Duration::from_millis(50),
                "{behind:?} behind"
            );
        }
    }
}
