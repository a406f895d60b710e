//! Receiving: a background poller per consumer long-polls `ReceiveMessage`
//! (up to 10 messages a call) when a `receive` waits with nothing buffered,
//! and reads ahead while a `receive` asked within the last second, as far
//! as the consumer has prefetch room; it hands deliveries over through a
//! channel. So `receive` is cancel-safe: dropping its future loses nothing,
//! because the HTTP call belongs to the poller, not to the caller; what it
//! brings waits for the next `receive`.
//!
//! Closing (or dropping) the consumer stops the poller and makes every
//! unsettled delivery, handed out or buffered, visible again at once;
//! settling one afterwards fails with
//! [`ErrorKind::Closed`](mq_core::ErrorKind::Closed). A long poll in flight
//! is not cut off (SQS would still hand it messages that then stay hidden
//! for the visibility timeout): it runs to its end in the background, and
//! what it brings is handed to the next consumer of the same queue on this
//! connection if one asks within 2 s, and made visible again otherwise.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{Message as SqsMessage, MessageSystemAttributeName};
use mq_core::{Consumer, Delivery, Error, ErrorKind, Received, Result};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::batch::MAX_ENTRIES;
use crate::codec;
use crate::core::{Budget, Core, Orphan};
use crate::error;
use crate::fanout;
use crate::metadata::SqsMetadata;
use crate::settle::SqsSettler;
use crate::topology;

/// How long messages a stopped consumer's last poll brought wait for the
/// next consumer of the queue before they are made visible again.
const ORPHAN_GRACE: Duration = Duration::from_secs(2);

/// How often a waiting consumer looks for such messages.
const ORPHAN_CHECK: Duration = Duration::from_millis(50);

/// How long after a `receive` last asked the poller keeps reading ahead.
const READ_AHEAD_WINDOW: Duration = Duration::from_secs(1);

/// `Demand::last_asked` before any `receive`.
const NEVER: u64 = u64::MAX;

/// Receives from one SQS queue.
pub struct SqsConsumer {
    settler: Arc<SqsSettler>,
    deliveries: mpsc::UnboundedReceiver<Result<Delivery>>,
    /// A receive error met after `receive_batch` had deliveries: returned by
    /// the next call, never dropped.
    pending_error: Option<Error>,
    /// Set while an error waits in `deliveries`, so errors do not pile up.
    error_queued: Arc<AtomicBool>,
    demand: Arc<Demand>,
    stop: CancellationToken,
    poller: Option<JoinHandle<()>>,
    closed: bool,
    /// A private reply queue, deleted when the consumer goes.
    temporary: bool,
}

impl fmt::Debug for SqsConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsConsumer")
            .field("source", &self.settler.logical)
            .field("settler", &self.settler)
            .field("closed", &self.closed)
            .finish()
    }
}

impl SqsConsumer {
    /// A consumer of queue `logical` (already resolved; `group` of
    /// `source`, whose names its deliveries report) holding at most
    /// `prefetch` unsettled deliveries and dead-lettering to `dead_letter`.
    pub(crate) fn start(
        core: Arc<Core>,
        logical: &str,
        source: (&str, Option<&str>),
        prefetch: usize,
        dead_letter: &str,
        temporary: bool,
    ) -> Self {
        let receivers = core.config.receivers_for(prefetch);
        let settler = SqsSettler::start(core, logical, source, prefetch, dead_letter);
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let error_queued = Arc::new(AtomicBool::new(false));
        let demand = Arc::new(Demand::new(receivers));
        let poller = tokio::spawn(poll(
            settler.clone(),
            tx,
            stop.clone(),
            demand.clone(),
            error_queued.clone(),
        ));
        SqsConsumer {
            settler,
            deliveries: rx,
            pending_error: None,
            error_queued,
            demand,
            stop,
            poller: Some(poller),
            closed: false,
            temporary,
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.closed {
            return Err(error::closed(
                "the consumer",
                "receive",
                &self.settler.logical,
            ));
        }
        Ok(())
    }

    /// The error kept by an earlier `receive_batch`, if any; the poller may
    /// queue a new one once it is handed out.
    fn take_pending(&mut self) -> Result<()> {
        match self.pending_error.take() {
            Some(e) => {
                self.error_queued.store(false, Ordering::Release);
                Err(e)
            }
            None => Ok(()),
        }
    }

    fn take(&self, item: Result<Delivery>) -> Result<Delivery> {
        self.demand.taken();
        if item.is_err() {
            self.error_queued.store(false, Ordering::Release);
        }
        item
    }

    fn poller_gone(&self) -> Error {
        error::closed("the consumer's poller", "receive", &self.settler.logical)
    }

    /// Deletes a temporary reply queue (in the background).
    fn delete_if_temporary(&mut self) {
        if !std::mem::take(&mut self.temporary) {
            return;
        }
        let core = self.settler.core.clone();
        let logical = self.settler.logical.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                topology::delete_resolved(&core, &logical).await;
                // With fan-out, replies were published to a topic of the same name.
                if fanout::enabled(&core) {
                    fanout::delete_topic(&core, &logical).await;
                }
            });
        }
    }
}

#[async_trait]
impl Consumer for SqsConsumer {
    async fn receive(&mut self) -> Result<Delivery> {
        self.check_open()?;
        self.take_pending()?;
        let demand = self.demand.clone();
        let _waiting = demand.wait();
        match self.deliveries.recv().await {
            Some(item) => self.take(item),
            None => Err(self.poller_gone()),
        }
    }

    async fn receive_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        self.check_open()?;
        let mut batch = Vec::new();
        if max == 0 {
            return Ok(batch);
        }
        self.take_pending()?;
        let demand = self.demand.clone();
        let waiting = demand.wait();
        let first = tokio::time::timeout(wait, self.deliveries.recv()).await;
        // Only the first delivery is waited for; the rest is what is buffered.
        drop(waiting);
        match first {
            Err(_) => return Ok(batch),
            Ok(None) => return Err(self.poller_gone()),
            Ok(Some(item)) => batch.push(self.take(item)?),
        }
        let mut yielded = false;
        while batch.len() < max {
            // What is ready: the poller reads ahead meanwhile, so waiting for
            // more would only delay the application. One yield lets a poll
            // that is handing over its messages finish first.
            let next = match self.deliveries.try_recv() {
                Ok(item) => Ok(item),
                Err(mpsc::error::TryRecvError::Empty) if !yielded => {
                    yielded = true;
                    tokio::task::yield_now().await;
                    continue;
                }
                Err(_) => Err(()),
            };
            if next.is_ok() {
                self.demand.taken();
            }
            match next {
                Ok(Ok(d)) => batch.push(d),
                Ok(Err(e)) => {
                    // Keep it for the next call (this one has deliveries);
                    // `error_queued` stays set until it is handed out.
                    tracing::debug!(error = %e, "receive error after a partial batch; kept for the next receive");
                    self.pending_error = Some(e);
                    break;
                }
                Err(()) => break,
            }
        }
        Ok(batch)
    }

    fn health(&self) -> mq_core::observe::Health {
        self.settler.core.clients.health.health()
    }

    async fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.stop.cancel();
        if let Some(poller) = self.poller.take() {
            let _ = poller.await;
        }
        let result = self.settler.close().await;
        // Buffered deliveries were returned by `close` above; dropping them is a no-op.
        self.deliveries.close();
        while self.deliveries.try_recv().is_ok() {}
        self.delete_if_temporary();
        result
    }
}

impl Drop for SqsConsumer {
    fn drop(&mut self) {
        // The poller returns what it holds; buffered deliveries are dropped
        // with the channel, which makes them visible again.
        self.stop.cancel();
        self.delete_if_temporary();
    }
}

/// What the poller knows of the consumer: whether a `receive` is waiting,
/// when one last asked, what is buffered, and how many long polls run.
///
/// Polls start while a `receive` waits and nothing is buffered, and, to read
/// ahead, while a `receive` asked within the last [`READ_AHEAD_WINDOW`]
/// (bounded by the prefetch permits, as a push-based broker fills its
/// prefetch). Without reading ahead every batch would wait for a whole
/// round trip after the application asked: the bench measured 489 msg/s
/// consume+ack against 612 for a raw client that keeps its polls going.
/// A consumer nobody reads from stops polling after the window: a long poll
/// cannot be cancelled on the server, and one still running after the
/// consumer closed would take messages only to hand them back. One poll
/// runs at first, one more (up to `max`) each time a poll comes back full,
/// one less after a short answer and just one after an empty answer (idle
/// long polls cost requests on AWS and CPU on emulators: 16 polls of four
/// consumers on one queue halved moto's end-to-end rate).
#[derive(Debug)]
struct Demand {
    waiting: AtomicUsize,
    /// When a `receive` last asked, in milliseconds since `epoch`
    /// ([`NEVER`] before the first).
    last_asked: AtomicU64,
    epoch: Instant,
    buffered: AtomicUsize,
    max: usize,
    active: AtomicUsize,
    wanted: AtomicUsize,
    changed: Notify,
}

impl Demand {
    fn new(max: usize) -> Self {
        Demand {
            waiting: AtomicUsize::new(0),
            last_asked: AtomicU64::new(NEVER),
            epoch: Instant::now(),
            buffered: AtomicUsize::new(0),
            max: max.max(1),
            active: AtomicUsize::new(0),
            wanted: AtomicUsize::new(1),
            changed: Notify::new(),
        }
    }

    /// Counts a waiting `receive` until the guard drops.
    fn wait(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        self.last_asked.store(self.millis(), Ordering::Release);
        self.changed.notify_one();
        Waiting(self)
    }

    /// A delivery left the buffer.
    fn taken(&self) {
        if self.buffered.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.changed.notify_one();
        }
    }

    /// A `receive` waits and nothing is buffered.
    fn hungry(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0 && self.buffered.load(Ordering::Acquire) == 0
    }

    /// Milliseconds since `epoch` (saturating: a `u64` of them lasts 584
    /// million years).
    fn millis(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A `receive` asked within [`READ_AHEAD_WINDOW`]: the consumer is in use.
    fn in_use(&self) -> bool {
        let window = u64::try_from(READ_AHEAD_WINDOW.as_millis()).unwrap_or(u64::MAX);
        let last = self.last_asked.load(Ordering::Acquire);
        self.waiting.load(Ordering::Acquire) > 0
            || (last != NEVER && self.millis().saturating_sub(last) < window)
    }

    fn may_start(&self) -> bool {
        (self.hungry() || self.in_use())
            && self.active.load(Ordering::Acquire) < self.wanted.load(Ordering::Acquire)
    }

    /// A poll asked for `asked` and got `got` messages (`None`: it failed).
    fn done(&self, asked: usize, got: Option<usize>) {
        match got {
            Some(0) => self.wanted.store(1, Ordering::Release),
            Some(got) if got == asked && asked == MAX_ENTRIES => {
                let wanted = self.wanted.load(Ordering::Acquire);
                self.wanted
                    .store((wanted + 1).min(self.max), Ordering::Release);
            }
            // A short answer: the queue is nearly drained, so one poll less
            // (each extra poll only splits the same messages).
            Some(got) if got < asked => {
                let wanted = self.wanted.load(Ordering::Acquire);
                self.wanted
                    .store(wanted.saturating_sub(1).max(1), Ordering::Release);
            }
            Some(_) | None => {}
        }
        self.active.fetch_sub(1, Ordering::AcqRel);
        self.changed.notify_one();
    }
}

/// A `receive` waiting for a delivery.
struct Waiting<'a>(&'a Demand);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The poller: starts long polls as [`Demand`] allows, while there is prefetch room.
async fn poll(
    settler: Arc<SqsSettler>,
    tx: mpsc::UnboundedSender<Result<Delivery>>,
    stop: CancellationToken,
    demand: Arc<Demand>,
    error_queued: Arc<AtomicBool>,
) {
    let failures = Arc::new(AtomicU32::new(0));
    loop {
        loop {
            let changed = demand.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let hungry = demand.hungry();
            if hungry && adopt(&settler, &tx, &demand) {
                continue;
            }
            if demand.may_start() {
                break;
            }
            // While a receive waits, look for left-behind messages now and then.
            let recheck = if hungry {
                ORPHAN_CHECK
            } else {
                Duration::from_secs(3600)
            };
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = changed => {}
                () = tokio::time::sleep(recheck) => {}
            }
        }
        let first = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            permit = settler.permits.acquire() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        first.forget();
        let mut n = 1;
        while n < MAX_ENTRIES {
            match settler.permits.try_acquire() {
                Ok(p) => {
                    p.forget();
                    n += 1;
                }
                Err(_) => break,
            }
        }
        demand.active.fetch_add(1, Ordering::AcqRel);
        let call = ReceiveCall {
            settler: settler.clone(),
            tx: tx.clone(),
            stop: stop.clone(),
            demand: demand.clone(),
            error_queued: error_queued.clone(),
            failures: failures.clone(),
        };
        // Not owned by the poller: a long poll in flight when the consumer
        // stops runs to its end, so what it took goes back at once (an
        // abandoned long poll would still take messages on the server side
        // and hide them for the visibility timeout).
        tokio::spawn(async move {
            let demand = call.demand.clone();
            let got = call.run(n).await;
            demand.done(n, got);
        });
    }
}

/// One `ReceiveMessage` call of the poller.
struct ReceiveCall {
    settler: Arc<SqsSettler>,
    tx: mpsc::UnboundedSender<Result<Delivery>>,
    stop: CancellationToken,
    demand: Arc<Demand>,
    error_queued: Arc<AtomicBool>,
    failures: Arc<AtomicU32>,
}

impl ReceiveCall {
    /// Receives up to `n` messages (holding `n` prefetch permits); returns
    /// how many arrived, `None` on failure.
    async fn run(self, n: usize) -> Option<usize> {
        let started = Instant::now();
        let outcome = receive(&self.settler, n).await;
        let settler = &self.settler;
        match outcome {
            Ok((url, messages)) => {
                let got = messages.len();
                self.failures.store(0, Ordering::Relaxed);
                settler
                    .permits
                    .add_permits(n.saturating_sub(messages.len()));
                // The receive was sent then, so SQS started the messages'
                // visibility timeouts no earlier: their leases and the
                // 12-hour limit, counted from here, err on the safe side.
                let received_at = started;
                let mut orphans = Vec::new();
                for message in messages {
                    // Once the consumer stopped, nothing more is handed out.
                    if self.stop.is_cancelled()
                        || !hand_over(settler, &self.tx, &self.demand, &url, &message, received_at)
                    {
                        orphans.push(Orphan {
                            message,
                            url: url.clone(),
                            received_at,
                        });
                    }
                }
                if !orphans.is_empty() {
                    settler.permits.add_permits(orphans.len());
                    self.leave(orphans).await;
                }
                Some(got)
            }
            Err(e) => {
                settler.permits.add_permits(n);
                let recreate = e.kind() == ErrorKind::NotFound && settler.core.config.create_queues;
                if !recreate && !self.error_queued.swap(true, Ordering::AcqRel) {
                    self.demand.buffered.fetch_add(1, Ordering::AcqRel);
                    let _ = self.tx.send(Err(e));
                } else {
                    tracing::debug!(error = %e, "receive failed; retrying");
                }
                let failures = self.failures.fetch_add(1, Ordering::Relaxed).min(6);
                let pause = Duration::from_millis((50u64 << failures).min(2_000));
                tokio::select! {
                    () = self.stop.cancelled() => {}
                    () = tokio::time::sleep(pause) => {}
                }
                None
            }
        }
    }
}

impl ReceiveCall {
    /// Leaves what a poll brought after its consumer stopped to the next
    /// consumer of the queue (as churning consumers do), and makes whatever
    /// nobody claimed within [`ORPHAN_GRACE`] visible again.
    async fn leave(&self, orphans: Vec<Orphan>) {
        let core = &self.settler.core;
        core.leave_orphans(&self.settler.logical, orphans);
        tokio::time::sleep(ORPHAN_GRACE).await;
        let unclaimed: Vec<Arc<str>> = core
            .claim_orphans(&self.settler.logical, usize::MAX)
            .iter()
            .filter_map(|o| o.message.receipt_handle().map(Arc::from))
            .collect();
        if !unclaimed.is_empty() {
            self.settler.return_now(unclaimed).await;
        }
    }
}

/// Tracks `m` and hands it to the consumer; `false` once the consumer closed.
fn hand_over(
    settler: &Arc<SqsSettler>,
    tx: &mpsc::UnboundedSender<Result<Delivery>>,
    demand: &Demand,
    url: &str,
    m: &SqsMessage,
    received_at: Instant,
) -> bool {
    let Some(receipt) = m.receipt_handle() else {
        tracing::warn!("SQS returned a message without a receipt handle; skipped");
        return true;
    };
    let Some(tag) = settler.track(receipt, received_at) else {
        return false;
    };
    demand.buffered.fetch_add(1, Ordering::AcqRel);
    // A closed channel drops the delivery, which returns it.
    let _ = tx.send(Ok(deliver(settler, url, m, receipt, tag)));
    true
}

/// Hands over messages a stopped consumer of the same queue left behind,
/// as far as the prefetch allows; whether there were any.
fn adopt(
    settler: &Arc<SqsSettler>,
    tx: &mpsc::UnboundedSender<Result<Delivery>>,
    demand: &Demand,
) -> bool {
    let free = settler.permits.available_permits();
    if free == 0 {
        return false;
    }
    let orphans = settler.core.claim_orphans(&settler.logical, free);
    if orphans.is_empty() {
        return false;
    }
    for o in orphans {
        match settler.permits.try_acquire() {
            Ok(p) => p.forget(),
            Err(_) => {
                settler.core.leave_orphans(&settler.logical, vec![o]);
                continue;
            }
        }
        if !hand_over(settler, tx, demand, &o.url, &o.message, o.received_at) {
            settler.permits.add_permits(1);
            settler.core.leave_orphans(&settler.logical, vec![o]);
        }
    }
    true
}

/// One long poll for up to `n` messages; returns the queue URL used too.
async fn receive(settler: &SqsSettler, n: usize) -> Result<(String, Vec<SqsMessage>)> {
    let core = &settler.core;
    let info = match settler.group.as_deref() {
        // A group's queue made again (an emulator restarted) is subscribed again.
        Some(group) if fanout::enabled(core) => {
            fanout::subscribe(core, &settler.source, Some(group)).await?
        }
        _ => topology::resolve(core, &settler.logical).await?,
    };
    let config = &core.config;
    let _request = core.permit(Budget::Receive).await;
    let result = core
        .clients
        .receive
        .receive_message()
        .queue_url(&info.url)
        .max_number_of_messages(i32::try_from(n).unwrap_or(10))
        .wait_time_seconds(config.wait_secs())
        .visibility_timeout(config.visibility_secs())
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
        .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
        .message_attribute_names("All")
        .send()
        .await;
    match result {
        Ok(out) => Ok((info.url.clone(), out.messages.unwrap_or_default())),
        Err(e) => {
            let e = error::sdk(e, "receive", &settler.logical);
            core.gone(&info, &e);
            Err(e)
        }
    }
}

/// The delivery of `m`, tracked by the settler under `tag`.
fn deliver(
    settler: &Arc<SqsSettler>,
    url: &str,
    m: &SqsMessage,
    receipt: &str,
    tag: u64,
) -> Delivery {
    let decoded = codec::decode(m);
    let metadata = SqsMetadata::new(
        tag,
        receipt.to_owned(),
        m.message_id().unwrap_or_default().to_owned(),
        url.to_owned(),
    );
    let received = Received::new(settler.source.clone(), decoded.message, decoded.attempt)
        .with_group(settler.group.clone())
        .with_timestamp(decoded.sent_at)
        .with_metadata(metadata);
    Delivery::new(received, settler.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SqsConfig;
    use mq_core::backend::RedactedUrl;
    use mq_core::Message;

    /// A consumer whose channel the test feeds by hand (no poller; the
    /// endpoint is never called).
    async fn fed_consumer() -> (SqsConsumer, mpsc::UnboundedSender<Result<Delivery>>) {
        let url = RedactedUrl::parse("sqs+http://k:s@127.0.0.1:9?region=us-east-1").expect("url");
        let config = Arc::new(SqsConfig::from_url(&url).expect("config"));
        let core = Arc::new(Core::connect(config).await.expect("clients"));
        let settler = SqsSettler::start(core, "q", ("q", None), 10, "q-dlq");
        let (tx, rx) = mpsc::unbounded_channel();
        let consumer = SqsConsumer {
            settler,
            deliveries: rx,
            pending_error: None,
            error_queued: Arc::new(AtomicBool::new(false)),
            demand: Arc::new(Demand::new(1)),
            stop: CancellationToken::new(),
            poller: None,
            closed: false,
            temporary: false,
        };
        (consumer, tx)
    }

    /// Queues what the poller would: a delivery, then a receive error.
    fn feed(consumer: &SqsConsumer, tx: &mpsc::UnboundedSender<Result<Delivery>>) {
        let received = Received::new("q", Message::new("m").with_id("m-1"), 1);
        consumer.demand.buffered.fetch_add(2, Ordering::AcqRel);
        tx.send(Ok(Delivery::new(received, consumer.settler.clone())))
            .expect("delivery");
        consumer.error_queued.store(true, Ordering::Release);
        tx.send(Err(Error::new(ErrorKind::Permission, "AccessDenied")))
            .expect("error");
    }

    /// Defect 10 (issue 14): an error that arrives after a partial batch
    /// was dropped, so the application never saw it. It is now returned by
    /// the next call (and the poller may queue new errors only after).
    #[tokio::test]
    async fn receive_batch_keeps_a_queued_error_for_the_next_call() {
        let (mut consumer, tx) = fed_consumer().await;
        feed(&consumer, &tx);
        let batch = consumer
            .receive_batch(10, Duration::from_millis(200))
            .await
            .expect("the delivery first");
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].id(), "m-1");
        assert!(consumer.error_queued.load(Ordering::Acquire), "still owed");
        let err = consumer
            .receive_batch(10, Duration::from_millis(200))
            .await
            .expect_err("the kept error");
        assert_eq!(err.kind(), ErrorKind::Permission);
        assert!(!consumer.error_queued.load(Ordering::Acquire));
        // And `receive` after a partial batch gets it too.
        feed(&consumer, &tx);
        let batch = consumer
            .receive_batch(10, Duration::from_millis(200))
            .await
            .expect("delivery");
        assert_eq!(batch.len(), 1);
        let err = consumer.receive().await.expect_err("the kept error");
        assert_eq!(err.kind(), ErrorKind::Permission);
        drop(batch);
        consumer.closed = true;
    }
}
