//! The worker runtime: a consumer, a handler and its layers, run concurrently
//! with graceful shutdown.
//!
//! For each delivery the worker runs the handler (inside the layers, with
//! panics caught) in its own task, at most `concurrency` at once, and settles
//! by the outcome: `Ok` acks, a transient error nacks (after the delay it
//! asks for, if any), a permanent error dead-letters with the error as the
//! reason.
//!
//! On shutdown (a [`CancellationToken`] or ctrl-c) it stops receiving, lets the
//! handlers in flight finish and settle within the grace period, then closes
//! the consumer. A handler still running after the grace period is cancelled
//! and its delivery returned to the broker unsettled, so it is redelivered:
//! shutdown never loses a message.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
pub use tokio_util::sync::CancellationToken;

mod batch;
use crate::report::{self as stats, Counters};
pub use crate::report::{WorkerReport, WorkerStats};
pub use batch::BatchWorker;
use tracing::Instrument;

use crate::consumer::Consumer;
use crate::delivery::{Delivery, Settlement};
use crate::error::{ErrorKind, Result};
use crate::handler::{apply_layers, BatchHandler, BoxHandler, Handler, Layer};
use crate::middleware::CatchPanicLayer;
use crate::observe::{names, trace};

/// Runs a handler over a consumer. Build with [`Worker::new`], add layers,
/// then [`run`](Worker::run).
pub struct Worker<C> {
    consumer: C,
    work: Work,
    layers: Vec<Arc<dyn Layer>>,
    concurrency: usize,
    grace: Duration,
    stats: WorkerStats,
}

impl<C: Consumer + 'static> Worker<C> {
    /// A worker feeding `consumer`'s deliveries to `handler`, one at a time
    /// until [`concurrency`](Worker::concurrency) says otherwise.
    pub fn new(consumer: C, handler: impl Handler) -> Self {
        Self::with_work(consumer, Work::One(Arc::new(handler)))
    }

    /// A worker whose handler receives each message's JSON payload decoded
    /// into `T`, next to the message itself. A payload that does not decode
    /// is dead-lettered (a permanent failure), never retried:
    ///
    /// ```no_run
    /// # async fn f(client: mq_core::Client) -> mq_core::Result<()> {
    /// #[derive(serde::Deserialize)]
    /// struct Resize { photo: u64, width: u32 }
    ///
    /// let consumer = client.consumer("resize").await?;
    /// let worker = mq_core::Worker::json(consumer, |job: Resize, _msg| async move {
    ///     println!("photo {} to {} px", job.photo, job.width);
    ///     Ok(())
    /// });
    /// # Ok(()) }
    /// ```
    pub fn json<T, F, Fut>(consumer: C, f: F) -> Self
    where
        T: serde::de::DeserializeOwned + Send + 'static,
        F: Fn(T, crate::Received) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = crate::HandlerResult> + Send + 'static,
    {
        Self::new(consumer, crate::handler::json_handler(f))
    }

    fn with_work(consumer: C, work: Work) -> Self {
        Worker {
            consumer,
            work,
            layers: Vec::new(),
            concurrency: 1,
            grace: Duration::from_secs(30),
            stats: WorkerStats::default(),
        }
    }

    /// A live view of this worker's counts (acked, duplicates, retries,
    /// dead letters, panics, timeouts, ...): take it before
    /// [`run`](Worker::run) and read it from any task while the worker runs.
    pub fn stats(&self) -> WorkerStats {
        self.stats.clone()
    }

    /// Adds a layer. The first layer added is the outermost; see
    /// [`middleware`](crate::middleware) for the recommended order.
    pub fn layer(mut self, layer: impl Layer) -> Self {
        self.layers.push(Arc::new(layer));
        self
    }

    /// Handles up to `n` (at least 1) messages at once. Keep the consumer's
    /// prefetch at least this large or the prefetch is the limit.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// How long shutdown waits for handlers in flight (default 30 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Runs until ctrl-c (SIGINT), then shuts down gracefully.
    pub async fn run_until_ctrl_c(self) -> Result<WorkerReport> {
        let token = CancellationToken::new();
        let trigger = token.clone();
        let signal = tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!("ctrl-c received; shutting down worker");
            }
            trigger.cancel();
        });
        let report = self.run(token).await;
        signal.abort();
        report
    }

    /// Runs until `shutdown` is cancelled, then shuts down gracefully.
    ///
    /// Returns the counts of what happened, or the consumer's error if it
    /// failed permanently (a closed consumer or bad configuration); transient
    /// receive errors are logged and retried with backoff.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<WorkerReport> {
        let work = match &self.work {
            Work::One(handler) => Work::One(apply_layers(
                CatchPanicLayer.layer(handler.clone()),
                &self.layers,
            )),
            batch => batch.clone(),
        };
        let stats = self.stats.0.clone();
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let mut tasks = JoinSet::new();
        let mut receive_failures = 0u32;
        let mut outcome = Ok(());

        loop {
            let slot = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                },
            };
            let received = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                d = next(&mut self.consumer, &work) => d,
            };
            match received {
                Ok(batch) if batch.is_empty() => {}
                Ok(mut batch) => {
                    receive_failures = 0;
                    Counters::add(&stats.received, batch.len() as u64);
                    let stats = stats.clone();
                    match &work {
                        Work::One(handler) => {
                            let handler = handler.clone();
                            let Some(delivery) = batch.pop() else {
                                continue;
                            };
                            tasks.spawn(stats::scope(stats.clone(), async move {
                                handle(delivery, handler, &stats).await;
                                drop(slot);
                            }));
                        }
                        Work::Batch { handler, .. } => {
                            let handler = handler.clone();
                            tasks.spawn(stats::scope(stats.clone(), async move {
                                batch::handle(batch, handler, &stats).await;
                                drop(slot);
                            }));
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::Closed || !e.is_retryable() => {
                    tracing::error!(error = %e, "consumer failed; worker stopping");
                    outcome = Err(e);
                    break;
                }
                Err(e) => {
                    receive_failures = receive_failures.saturating_add(1);
                    let pause = crate::time::backoff(receive_failures);
                    tracing::warn!(error = %e, ?pause, "receive failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
            while let Some(done) = tasks.try_join_next() {
                log_task_failure(done, &stats);
            }
        }

        let drained = tokio::time::timeout(self.grace, async {
            while let Some(done) = tasks.join_next().await {
                log_task_failure(done, &stats);
            }
        })
        .await;
        if drained.is_err() {
            let cancelled = tasks.len() as u64;
            tracing::warn!(cancelled, grace = ?self.grace,
                "handlers still running after the grace period; their messages will be redelivered");
            Counters::add(&stats.abandoned, cancelled);
            stats.changed.notify_waiters();
            tasks.shutdown().await;
        }
        if let Err(e) = self.consumer.close().await {
            tracing::warn!(error = %e, "closing the consumer failed");
        }
        outcome.map(|()| stats.report())
    }
}

/// What a worker runs: one handler per message, or one per batch.
#[derive(Clone)]
enum Work {
    One(BoxHandler),
    Batch {
        handler: Arc<dyn BatchHandler>,
        max: usize,
        wait: Duration,
    },
}

/// The next delivery, or the next batch, from `consumer`.
async fn next<C: Consumer>(consumer: &mut C, work: &Work) -> Result<Vec<Delivery>> {
    match work {
        Work::One(_) => consumer.receive().await.map(|d| vec![d]),
        Work::Batch { max, wait, .. } => consumer.receive_batch(*max, *wait).await,
    }
}

/// Settles `delivery` as `settlement` says and counts it.
async fn settle_counted(delivery: Delivery, settlement: Settlement, stats: &Counters) {
    let counter = match &settlement {
        Settlement::Ack => &stats.acked,
        Settlement::Nack { .. } => &stats.nacked,
        Settlement::DeadLetter { .. } => &stats.dead_lettered,
    };
    let id = delivery.id().to_owned();
    match delivery.settle(settlement).await {
        Ok(()) => stats.settled(counter),
        Err(e) => {
            stats.settled(&stats.settle_failures);
            tracing::warn!(%id, error = %e, "settlement failed; the broker will redeliver");
        }
    }
}

/// The settlement a handler's outcome asks for.
fn settlement_for(result: &crate::handler::HandlerResult) -> Settlement {
    match result {
        Ok(()) => Settlement::Ack,
        Err(e) if e.is_permanent() => Settlement::DeadLetter {
            reason: e.to_string(),
        },
        Err(e) => Settlement::Nack {
            delay: e.requested_delay(),
        },
    }
}

/// Runs the handler (wrapped in its layers, innermost the panic catch) on
/// one delivery and settles it. Panics are caught once, in
/// [`CatchPanicLayer`] around the handler; should a user's layer panic, the
/// task unwinds, the delivery's drop returns it to the broker (as for any
/// unsettled delivery) and [`log_task_failure`] counts the panic.
async fn handle(delivery: Delivery, handler: BoxHandler, stats: &Counters) {
    let received = delivery.received().clone();
    let labels = [
        ("backend", received.backend().to_owned()),
        ("source", received.source().to_owned()),
        ("group", received.group().unwrap_or("").to_owned()),
    ];
    let in_flight = InFlight::enter(metrics::gauge!(names::IN_FLIGHT, &labels));
    let span = trace::process_span(&received);
    let started = Instant::now();
    let settlement = settlement_for(&handler.call(received).instrument(span).await);
    drop(in_flight);
    let outcome = match &settlement {
        Settlement::Ack => "ack",
        Settlement::Nack { .. } => "nack",
        Settlement::DeadLetter { .. } => "dead_letter",
    };
    let [backend, source, group] = labels;
    metrics::histogram!(
        names::HANDLER_DURATION,
        &[backend, source, group, ("outcome", outcome.to_owned())]
    )
    .record(started.elapsed());
    settle_counted(delivery, settlement, stats).await;
}

/// One handler in flight on the `mq_handler_in_flight` gauge, also when its
/// task unwinds.
struct InFlight(metrics::Gauge);

impl InFlight {
    fn enter(gauge: metrics::Gauge) -> Self {
        gauge.increment(1.0);
        InFlight(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Logs a handler task that did not finish; a panic (from a user's layer:
/// the handler's own are caught by [`CatchPanicLayer`]) is counted.
fn log_task_failure(done: std::result::Result<(), tokio::task::JoinError>, stats: &Counters) {
    if let Err(e) = done {
        if e.is_panic() {
            Counters::add(&stats.panics, 1);
            stats.changed.notify_waiters();
            tracing::error!(error = %e, "handler task panicked; its message goes back to the broker");
        } else if !e.is_cancelled() {
            tracing::error!(error = %e, "handler task failed");
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for Worker<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("consumer", &self.consumer)
            .field("layers", &self.layers.len())
            .field("concurrency", &self.concurrency)
            .field("grace", &self.grace)
            .finish()
    }
}
