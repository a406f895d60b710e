//! What a worker did: counters shared by the worker, its layers and any
//! [`WorkerStats`] handle the application holds while the worker runs.
//!
//! Layers report what only they know (a duplicate suppressed, an in-process
//! retry, a timeout, a panic) through `record`, which finds the counters
//! of the worker running the current handler through a task-local: no
//! wrapping, no extra argument, nothing to forget.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

tokio::task_local! {
    static CURRENT: Arc<Counters>;
}

/// Something a layer decided about the current message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// The dedup layer acked a duplicate without running the handler.
    Duplicate,
    /// The retry layer ran the handler again in process.
    RetriedInProcess,
    /// An attempt hit the timeout layer's limit.
    Timeout,
    /// The handler panicked (caught; the message is retried).
    Panic,
}

/// Counts `event` for the worker running the current handler, if any.
pub(crate) fn record(event: Event) {
    let _ = CURRENT.try_with(|c| {
        let counter = match event {
            Event::Duplicate => &c.duplicates,
            Event::RetriedInProcess => &c.retried_in_process,
            Event::Timeout => &c.timeouts,
            Event::Panic => &c.panics,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    });
}

/// Runs `f` with `counters` as the current worker's counters.
pub(crate) async fn scope<F: std::future::Future>(counters: Arc<Counters>, f: F) -> F::Output {
    CURRENT.scope(counters, f).await
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Woken whenever a settlement is counted ([`WorkerStats::wait_until`]).
    pub(crate) changed: tokio::sync::Notify,
    pub(crate) received: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) nacked: AtomicU64,
    pub(crate) retried_in_process: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) panics: AtomicU64,
    pub(crate) settle_failures: AtomicU64,
    pub(crate) abandoned: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a settlement outcome and wakes [`WorkerStats::wait_until`].
    pub(crate) fn settled(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    pub(crate) fn report(&self) -> WorkerReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WorkerReport {
            received: get(&self.received),
            acked: get(&self.acked),
            duplicates: get(&self.duplicates),
            nacked: get(&self.nacked),
            retried_in_process: get(&self.retried_in_process),
            dead_lettered: get(&self.dead_lettered),
            timeouts: get(&self.timeouts),
            panics: get(&self.panics),
            settle_failures: get(&self.settle_failures),
            abandoned: get(&self.abandoned),
        }
    }
}

/// A live view of a worker's counts, from [`Worker::stats`](crate::Worker::stats):
/// cheap to clone, readable from any task while the worker runs and after.
#[derive(Debug, Clone, Default)]
pub struct WorkerStats(pub(crate) Arc<Counters>);

impl WorkerStats {
    /// The counts so far.
    pub fn snapshot(&self) -> WorkerReport {
        self.0.report()
    }

    /// Waits until the counts satisfy `condition` (checked now and after
    /// every settlement), e.g. "every message sent so far is settled":
    ///
    /// ```no_run
    /// # async fn f(stats: mq_core::WorkerStats) {
    /// stats.wait_until(|r| r.acked + r.dead_lettered >= 100).await;
    /// # }
    /// ```
    pub async fn wait_until(&self, condition: impl Fn(&WorkerReport) -> bool) -> WorkerReport {
        loop {
            let changed = self.0.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so no settlement slips between.
            changed.as_mut().enable();
            let report = self.0.report();
            if condition(&report) {
                return report;
            }
            changed.await;
        }
    }
}

/// What a worker did: the counts of a [`WorkerStats`] snapshot, or of the
/// whole run as [`Worker::run`](crate::Worker::run) returns them.
///
/// Every received message ends in exactly one of `acked`, `nacked`,
/// `dead_lettered`, `settle_failures` or `abandoned`; the other fields say
/// more about some of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerReport {
    /// Deliveries received.
    pub received: u64,
    /// Deliveries acked: handled, or duplicates suppressed (`duplicates`).
    pub acked: u64,
    /// Of `acked`: duplicates the dedup layer acked without running the handler.
    pub duplicates: u64,
    /// Deliveries nacked: handed back to the broker for a later attempt
    /// (the retry layer's broker-delayed retries, transient failures).
    pub nacked: u64,
    /// Extra in-process attempts the retry layer made (not deliveries).
    pub retried_in_process: u64,
    /// Deliveries moved to the dead-letter destination.
    pub dead_lettered: u64,
    /// Attempts cut short by the timeout layer.
    pub timeouts: u64,
    /// Attempts whose handler panicked (caught and retried).
    pub panics: u64,
    /// Settlements that failed (the message went back to the broker).
    pub settle_failures: u64,
    /// Handlers cancelled at the end of the grace period (redelivered).
    pub abandoned: u64,
}

impl WorkerReport {
    /// Both reports' counts added up (saturating).
    pub fn plus(&self, other: &WorkerReport) -> WorkerReport {
        WorkerReport {
            received: self.received.saturating_add(other.received),
            acked: self.acked.saturating_add(other.acked),
            duplicates: self.duplicates.saturating_add(other.duplicates),
            nacked: self.nacked.saturating_add(other.nacked),
            retried_in_process: self
                .retried_in_process
                .saturating_add(other.retried_in_process),
            dead_lettered: self.dead_lettered.saturating_add(other.dead_lettered),
            timeouts: self.timeouts.saturating_add(other.timeouts),
            panics: self.panics.saturating_add(other.panics),
            settle_failures: self.settle_failures.saturating_add(other.settle_failures),
            abandoned: self.abandoned.saturating_add(other.abandoned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn record_counts_for_the_worker_in_scope_only() {
        let counters = Arc::new(Counters::default());
        record(Event::Duplicate); // no worker: ignored
        scope(counters.clone(), async {
            record(Event::Duplicate);
            record(Event::Panic);
            record(Event::Timeout);
            record(Event::RetriedInProcess);
        })
        .await;
        let r = WorkerStats(counters).snapshot();
        assert_eq!(
            (r.duplicates, r.panics, r.timeouts, r.retried_in_process),
            (1, 1, 1, 1)
        );
    }
}
