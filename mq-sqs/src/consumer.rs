//! Receiving: a background poller per consumer long-polls `ReceiveMessage`
//! (up to 10 messages a call, `receivers` calls at once) while the consumer
//! has prefetch room, and hands deliveries over through a channel. So
//! `receive` is cancel-safe: dropping its future loses nothing, because the
//! HTTP call belongs to the poller, not to the caller.
//!
//! Closing (or dropping) the consumer stops the poller: a long poll in
//! flight is given a short grace to return what it already took, then
//! abandoned (a message SQS handed to an abandoned call comes back after the
//! visibility timeout). Every unsettled delivery, handed out or buffered, is
//! made visible again at once; settling one afterwards fails with
//! [`ErrorKind::Closed`](mq_core::ErrorKind::Closed).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{Message as SqsMessage, MessageSystemAttributeName};
use mq_core::{Consumer, Delivery, Error, ErrorKind, Received, Result};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::batch::MAX_ENTRIES;
use crate::codec;
use crate::error;
use crate::settle::SqsSettler;
use crate::topology::Queues;

/// How long closing waits for a long poll in flight to return what it took.
const CLOSE_GRACE: Duration = Duration::from_millis(300);

/// SQS-specific facts about a delivery: `delivery.metadata::<SqsMetadata>()`.
#[derive(Debug, Clone)]
pub struct SqsMetadata {
    pub(crate) tag: u64,
    receipt_handle: String,
    sqs_message_id: String,
    queue_url: String,
}

impl SqsMetadata {
    /// The receipt handle of this receive (what delete and visibility calls take).
    pub fn receipt_handle(&self) -> &str {
        &self.receipt_handle
    }

    /// The id SQS gave the message (not the `mq` message id, which is in
    /// `mq-message-id`).
    pub fn sqs_message_id(&self) -> &str {
        &self.sqs_message_id
    }

    /// The URL of the queue the message came from.
    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }
}

/// Receives from one SQS queue.
pub struct SqsConsumer {
    settler: Arc<SqsSettler>,
    deliveries: mpsc::UnboundedReceiver<Result<Delivery>>,
    /// Set while an error waits in `deliveries`, so errors do not pile up.
    error_queued: Arc<AtomicBool>,
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
    /// A consumer of `logical` (already resolved) holding at most `prefetch`
    /// unsettled deliveries.
    pub(crate) fn start(queues: Arc<Queues>, logical: &str, prefetch: usize, temporary: bool) -> Self {
        let receivers = queues.config.receivers_for(prefetch);
        let settler = SqsSettler::start(queues, logical, prefetch);
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let error_queued = Arc::new(AtomicBool::new(false));
        let poller = tokio::spawn(poll(
            settler.clone(),
            tx,
            stop.clone(),
            receivers,
            error_queued.clone(),
        ));
        SqsConsumer {
            settler,
            deliveries: rx,
            error_queued,
            stop,
            poller: Some(poller),
            closed: false,
            temporary,
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.closed {
            return Err(error::closed("the consumer", "receive", &self.settler.logical));
        }
        Ok(())
    }

    fn take(&self, item: Result<Delivery>) -> Result<Delivery> {
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
        let queues = self.settler.queues.clone();
        let logical = self.settler.logical.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let Some(info) = queues.cached(&logical) else { return };
                queues.invalidate(&info);
                if let Err(e) = queues.clients.ops.delete_queue().queue_url(&info.url).send().await {
                    tracing::debug!(queue = %logical, error = %crate::error::sdk(e, "delete queue", &logical), "could not delete a reply queue");
                }
            });
        }
    }
}

#[async_trait]
impl Consumer for SqsConsumer {
    async fn receive(&mut self) -> Result<Delivery> {
        self.check_open()?;
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
        match tokio::time::timeout(wait, self.deliveries.recv()).await {
            Err(_) => return Ok(batch),
            Ok(None) => return Err(self.poller_gone()),
            Ok(Some(item)) => batch.push(self.take(item)?),
        }
        while batch.len() < max {
            match self.deliveries.try_recv() {
                Ok(Ok(d)) => batch.push(d),
                Ok(Err(e)) => {
                    // Keep it for the next call; this one has deliveries.
                    tracing::debug!(error = %e, "receive error after a partial batch");
                    self.error_queued.store(false, Ordering::Release);
                    break;
                }
                Err(_) => break,
            }
        }
        Ok(batch)
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

/// The poller: keeps `receivers` long polls running while there is prefetch room.
async fn poll(
    settler: Arc<SqsSettler>,
    tx: mpsc::UnboundedSender<Result<Delivery>>,
    stop: CancellationToken,
    receivers: usize,
    error_queued: Arc<AtomicBool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(receivers.max(1)));
    let failures = Arc::new(AtomicU32::new(0));
    let mut calls = JoinSet::new();
    loop {
        let slot = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let first = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            permit = settler.permits.acquire() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
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
        let call = ReceiveCall {
            settler: settler.clone(),
            tx: tx.clone(),
            stop: stop.clone(),
            error_queued: error_queued.clone(),
            failures: failures.clone(),
        };
        calls.spawn(async move {
            call.run(n).await;
            drop(slot);
        });
        while calls.try_join_next().is_some() {}
    }
    while calls.join_next().await.is_some() {}
}

/// One `ReceiveMessage` call of the poller.
struct ReceiveCall {
    settler: Arc<SqsSettler>,
    tx: mpsc::UnboundedSender<Result<Delivery>>,
    stop: CancellationToken,
    error_queued: Arc<AtomicBool>,
    failures: Arc<AtomicU32>,
}

impl ReceiveCall {
    /// Receives up to `n` messages (holding `n` prefetch permits).
    async fn run(self, n: usize) {
        let started = Instant::now();
        let request = receive(&self.settler, n);
        tokio::pin!(request);
        let outcome = tokio::select! {
            r = &mut request => Some(r),
            () = self.stop.cancelled() => tokio::time::timeout(CLOSE_GRACE, &mut request).await.ok(),
        };
        let settler = &self.settler;
        match outcome {
            None => settler.permits.add_permits(n),
            Some(Ok((url, messages))) => {
                self.failures.store(0, Ordering::Relaxed);
                settler.permits.add_permits(n.saturating_sub(messages.len()));
                let visible_until = started + settler.queues.config.visibility_timeout;
                for m in messages {
                    if let Some(d) = deliver(settler, &url, m, visible_until) {
                        // A closed channel drops the delivery, which returns it.
                        let _ = self.tx.send(Ok(d));
                    }
                }
            }
            Some(Err(e)) => {
                settler.permits.add_permits(n);
                let recreate = e.kind() == ErrorKind::NotFound && settler.queues.config.create_queues;
                if !recreate && !self.error_queued.swap(true, Ordering::AcqRel) {
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
            }
        }
    }
}

/// One long poll for up to `n` messages; returns the queue URL used too.
async fn receive(settler: &SqsSettler, n: usize) -> Result<(String, Vec<SqsMessage>)> {
    let queues = &settler.queues;
    let info = queues.resolve(&settler.logical).await?;
    let config = &queues.config;
    let result = queues
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
            queues.gone(&info, &e);
            Err(e)
        }
    }
}

/// A delivery of `m`, tracked by the settler.
fn deliver(settler: &Arc<SqsSettler>, url: &str, m: SqsMessage, visible_until: Instant) -> Option<Delivery> {
    let Some(receipt) = m.receipt_handle() else {
        tracing::warn!("SQS returned a message without a receipt handle; skipped");
        return None;
    };
    let tag = settler.track(receipt, visible_until);
    let decoded = codec::decode(&m);
    let metadata = SqsMetadata {
        tag,
        receipt_handle: receipt.to_owned(),
        sqs_message_id: m.message_id().unwrap_or_default().to_owned(),
        queue_url: url.to_owned(),
    };
    let received = Received::new(settler.logical.to_string(), decoded.message, decoded.attempt)
        .with_timestamp(decoded.sent_at)
        .with_metadata(metadata);
    Some(Delivery::new(received, settler.clone()))
}
