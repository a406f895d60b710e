//! Batch mode: one handler call per batch, settlement per message.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;

use super::{settle_counted, settlement_for, Counters, Work, Worker, WorkerReport};
use crate::consumer::Consumer;
use crate::delivery::{Delivery, Settlement};
use crate::error::Result;
use crate::handler::{BatchHandler, HandlerError};
use crate::worker::CancellationToken;

/// A [`Worker`] that hands its handler up to `batch_size` messages at once
/// (for bulk inserts, batched API calls) and settles each message by its own
/// result. Build with [`Worker::batch`].
///
/// The handler returns either one result per message, in order, or an error
/// for the whole batch. Layers wrap single-message handlers, so they do not
/// apply here; a panic nacks the whole batch.
pub struct BatchWorker<C>(Worker<C>);

impl<C: Consumer + 'static> Worker<C> {
    /// A worker calling `handler` with batches of up to 100 messages,
    /// waiting at most 1 s to fill a batch.
    pub fn batch(consumer: C, handler: impl BatchHandler) -> BatchWorker<C> {
        BatchWorker(Worker::with_work(
            consumer,
            Work::Batch {
                handler: Arc::new(handler),
                max: 100,
                wait: Duration::from_secs(1),
            },
        ))
    }
}

impl<C: Consumer + 'static> BatchWorker<C> {
    /// Up to `n` (at least 1) messages per batch. Keep the consumer's
    /// prefetch at least `n * concurrency`.
    pub fn batch_size(mut self, n: usize) -> Self {
        if let Work::Batch { max, .. } = &mut self.0.work {
            *max = n.max(1);
        }
        self
    }

    /// How long to wait for the first message of a batch before looking again.
    pub fn batch_wait(mut self, d: Duration) -> Self {
        if let Work::Batch { wait, .. } = &mut self.0.work {
            *wait = d;
        }
        self
    }

    /// Batches handled at once (default 1).
    pub fn concurrency(self, n: usize) -> Self {
        BatchWorker(self.0.concurrency(n))
    }

    /// How long shutdown waits for batches in flight (default 30 s).
    pub fn shutdown_grace(self, grace: Duration) -> Self {
        BatchWorker(self.0.shutdown_grace(grace))
    }

    /// Runs until `shutdown` is cancelled; see [`Worker::run`].
    pub async fn run(self, shutdown: CancellationToken) -> Result<WorkerReport> {
        self.0.run(shutdown).await
    }

    /// Runs until ctrl-c; see [`Worker::run_until_ctrl_c`].
    pub async fn run_until_ctrl_c(self) -> Result<WorkerReport> {
        self.0.run_until_ctrl_c().await
    }
}

impl<C: fmt::Debug> fmt::Debug for BatchWorker<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BatchWorker").field(&self.0).finish()
    }
}

pub(super) async fn handle(batch: Vec<Delivery>, handler: Arc<dyn BatchHandler>, stats: &Counters) {
    let messages = batch.iter().map(|d| d.received().clone()).collect();
    let outcome = AssertUnwindSafe(handler.call(messages))
        .catch_unwind()
        .await;
    let settlements: Vec<Settlement> = match outcome {
        Ok(Ok(results)) => {
            if results.len() != batch.len() {
                tracing::warn!(
                    expected = batch.len(),
                    got = results.len(),
                    "batch handler returned the wrong number of results; nacking the rest"
                );
            }
            (0..batch.len())
                .map(|i| match results.get(i) {
                    Some(r) => settlement_for(r),
                    None => Settlement::Nack { delay: None },
                })
                .collect()
        }
        Ok(Err(e)) => vec![settlement_for(&Err(e)); batch.len()],
        Err(_) => {
            let panicked: Result<(), HandlerError> =
                Err(HandlerError::transient("batch handler panicked"));
            vec![settlement_for(&panicked); batch.len()]
        }
    };
    for (delivery, settlement) in batch.into_iter().zip(settlements) {
        settle_counted(delivery, settlement, stats).await;
    }
}
