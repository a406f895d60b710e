//! When to retry and how long to wait.

use std::time::Duration;

use backon::BackoffBuilder;

/// How the delay grows between attempts.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Backoff {
    /// No delay.
    Immediate,
    /// The same delay every time.
    Fixed(Duration),
    /// `initial * factor^(n-1)`, capped at `max`, plus up to 100% random
    /// jitter when `jitter` is set (spreads retries of a failed batch).
    Exponential {
        /// Delay after the first failure.
        initial: Duration,
        /// Growth per failure.
        factor: f32,
        /// Largest delay.
        max: Duration,
        /// Add random jitter.
        jitter: bool,
    },
}

/// A retry policy: backoff, attempt limits and how many attempts run in process.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    backoff: Backoff,
    max_attempts: u32,
    in_process_attempts: u32,
    max_elapsed: Option<Duration>,
}

impl Default for RetryPolicy {
    /// Exponential from 1 s (factor 2, max 5 min, jitter), 5 attempts, no in-process retries.
    fn default() -> Self {
        RetryPolicy::exponential(Duration::from_secs(1))
    }
}

impl RetryPolicy {
    /// Retries immediately.
    pub fn immediate() -> Self {
        Self::with_backoff(Backoff::Immediate)
    }

    /// Waits `delay` between attempts.
    pub fn fixed(delay: Duration) -> Self {
        Self::with_backoff(Backoff::Fixed(delay))
    }

    /// Waits `initial`, then doubles each time up to 5 minutes, with jitter.
    pub fn exponential(initial: Duration) -> Self {
        Self::with_backoff(Backoff::Exponential {
            initial,
            factor: 2.0,
            max: Duration::from_secs(300),
            jitter: true,
        })
    }

    /// A policy with `backoff`, 5 attempts, every retry through the broker.
    pub fn with_backoff(backoff: Backoff) -> Self {
        RetryPolicy {
            backoff,
            max_attempts: 5,
            in_process_attempts: 1,
            max_elapsed: None,
        }
    }

    /// Total attempts before dead-lettering (at least 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Attempts per delivery before handing the retry to the broker (at least 1;
    /// 1 means every retry is a broker redelivery).
    pub fn in_process_attempts(mut self, n: u32) -> Self {
        self.in_process_attempts = n.max(1);
        self
    }

    /// Dead-letter instead of retrying once the message is older than
    /// `limit` (measured from its send time, where the broker reports it).
    pub fn max_elapsed(mut self, limit: Duration) -> Self {
        self.max_elapsed = Some(limit);
        self
    }

    /// Sets the exponential growth factor and cap (no effect on other backoffs).
    pub fn factor_and_max(mut self, factor: f32, max: Duration) -> Self {
        if let Backoff::Exponential {
            factor: f, max: m, ..
        } = &mut self.backoff
        {
            *f = factor;
            *m = max;
        }
        self
    }

    /// Turns jitter off (for predictable delays, e.g. in tests).
    pub fn without_jitter(mut self) -> Self {
        if let Backoff::Exponential { jitter, .. } = &mut self.backoff {
            *jitter = false;
        }
        self
    }

    /// The backoff.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// Total attempts allowed.
    pub fn get_max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Attempts per delivery.
    pub fn get_in_process_attempts(&self) -> u32 {
        self.in_process_attempts
    }

    /// The age limit, if any.
    pub fn get_max_elapsed(&self) -> Option<Duration> {
        self.max_elapsed
    }

    /// The delay after the `failures`-th failure (1-based).
    pub fn delay(&self, failures: u32) -> Duration {
        let n = failures.max(1) as usize;
        match &self.backoff {
            Backoff::Immediate => Duration::ZERO,
            Backoff::Fixed(d) => *d,
            Backoff::Exponential {
                initial,
                factor,
                max,
                jitter,
            } => {
                let mut builder = backon::ExponentialBuilder::default()
                    .with_min_delay(*initial)
                    .with_factor(*factor)
                    .with_max_delay(*max)
                    .without_max_times();
                if *jitter {
                    builder = builder.with_jitter();
                }
                let d = builder.build().nth(n - 1).unwrap_or(*max);
                // backon multiplies in f32 (40 ms * 2 = 79.999 ms): round to
                // whole milliseconds, or microseconds below one millisecond.
                let unit = if d >= Duration::from_millis(1) {
                    1_000
                } else {
                    1
                };
                let micros = (d.as_secs_f64() * 1e6 / f64::from(unit)).round() * f64::from(unit);
                Duration::from_micros(micros as u64)
            }
        }
    }
}
