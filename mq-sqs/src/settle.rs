//! Settlement (DESIGN.md §4) and the visibility lease of held deliveries.
//!
//! | settlement | SQS call |
//! |---|---|
//! | ack | `DeleteMessageBatch`, queued: `ack` returns at once (FIFO queues: awaited, see below) |
//! | nack | `ChangeMessageVisibilityBatch` to 0 |
//! | nack after `d` | `ChangeMessageVisibilityBatch` to `d` rounded up to seconds, clamped to what is left of SQS's 12 h from receipt |
//! | dead-letter | `SendMessage` of a [`dead_letter_copy`](mq_core::backend::republish::dead_letter_copy), cut to fit, to the consumer's dead-letter queue, then delete (awaited) |
//! | dropped unsettled | `ChangeMessageVisibilityBatch` to 0, from a spawned task |
//! | consumer closed | every unsettled delivery to visibility 0, awaited |
//!
//! A settlement that fails never leaves its message hidden: it is made
//! visible again (awaited, where SQS allows it) and the error is returned.
//! A dead letter that cannot be written after [`DEAD_LETTER_ATTEMPTS`] is
//! also counted ([`DEAD_LETTER_ERRORS`](mq_core::observe::names::DEAD_LETTER_ERRORS))
//! and shown as `last_error` in `health()`. A queued delete (an ack) that
//! fails is logged, and the message made visible again at once.
//!
//! Deletes and visibility changes of one consumer are coalesced into batch
//! calls of up to 10 (see [`crate::batch`]); a failed entry fails only its
//! own settlement. An ack does not wait for its delete, so even acks made one
//! after the other share batch calls (as in the AWS SDKs' buffered clients;
//! on a FIFO queue an ack waits for its delete, since the message's group
//! stays blocked until then);
//! a failed delete is logged and the message comes back after its
//! visibility timeout, and closing the consumer waits for queued deletes. While a delivery is held, a heartbeat extends its
//! visibility by the visibility timeout once half of it has passed, so a long
//! handler does not see its message redelivered to another consumer. The
//! heartbeat and a settlement of the same message never overlap: each holds
//! the message's lease lock while its call runs, so a late extension cannot
//! hide a message that was just nacked.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::error::BuildError;
use aws_sdk_sqs::operation::change_message_visibility_batch::builders::ChangeMessageVisibilityBatchFluentBuilder;
use aws_sdk_sqs::operation::delete_message_batch::builders::DeleteMessageBatchFluentBuilder;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
};
use mq_core::backend::{Settlement, Settler};
use mq_core::{Delivery, Error, ErrorKind, Message, Result};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio::time::Instant;

use crate::batch::{self, MAX_ENTRIES};
use crate::config::{secs_i32, MAX_VISIBILITY};
use crate::core::{Budget, Core};
use crate::error::{self, BACKEND};
use crate::metadata::SqsMetadata;
use crate::producer::{fit_copy, send_to};
use crate::topology;

/// Settlement calls of one consumer in flight at once, per kind.
const SETTLE_CONCURRENCY: usize = 8;

/// Attempts to write one dead letter (each with the SDK's own retries)
/// before the message is returned to its queue; only retryable errors are
/// tried again.
pub(crate) const DEAD_LETTER_ATTEMPTS: u32 = 3;

/// Pause before the second attempt to write a dead letter; doubled after.
const DEAD_LETTER_BACKOFF: Duration = Duration::from_millis(200);

/// A delete or visibility change waiting for its batch.
struct Op {
    receipt: Arc<str>,
    /// The new visibility timeout (visibility changes only).
    seconds: i32,
    reply: Option<oneshot::Sender<Result<()>>>,
    /// Held until the call of an op nobody awaits is done, so `close` can wait for it.
    _ticket: Option<Ticket>,
}

/// Ops queued without a waiting caller (acks) and not done yet.
#[derive(Debug, Default)]
struct Unconfirmed {
    count: AtomicUsize,
    done: Notify,
}

/// One unconfirmed op; dropping it marks the op done.
struct Ticket(Arc<Unconfirmed>);

impl Ticket {
    fn new(unconfirmed: &Arc<Unconfirmed>) -> Self {
        unconfirmed.count.fetch_add(1, Ordering::AcqRel);
        Ticket(unconfirmed.clone())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.done.notify_waiters();
        }
    }
}

impl Unconfirmed {
    /// Waits until every unconfirmed op is done (at most `limit`).
    async fn drained(&self, limit: Duration) {
        let wait = async {
            loop {
                let done = self.done.notified();
                tokio::pin!(done);
                done.as_mut().enable();
                if self.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                done.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }
}

/// A delivery handed out (or buffered) and not settled yet.
struct Entry {
    receipt: Arc<str>,
    /// When the receive that brought it was sent: SQS hides a message for
    /// at most 12 hours from its receipt, extensions included.
    received_at: Instant,
    /// When SQS makes the message visible again unless extended.
    visible_until: Instant,
    /// Held by the heartbeat while it extends this message, and taken by a
    /// settlement before it acts, so the two never race.
    lease: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Default)]
struct Outstanding {
    next_tag: u64,
    closed: bool,
    entries: HashMap<u64, Entry>,
}

/// Settles the deliveries of one consumer and keeps their leases.
pub(crate) struct SqsSettler {
    pub(crate) core: Arc<Core>,
    /// The queue, as the application named it (with `fanout=sns` and a
    /// group: the group's queue).
    pub(crate) logical: Arc<str>,
    /// The source deliveries report: the destination the consumer asked for.
    pub(crate) source: Arc<str>,
    /// The consumer's group (`fanout=sns`), reported by deliveries too.
    pub(crate) group: Option<Arc<str>>,
    /// Where dead letters go (the consumer's `dead_letter` option, or the
    /// queue's redrive target, or `<name>-dlq`).
    pub(crate) dead_letter: Arc<str>,
    /// One permit per delivery the consumer may still take (prefetch).
    pub(crate) permits: Arc<Semaphore>,
    state: Mutex<Outstanding>,
    unconfirmed: Arc<Unconfirmed>,
    deletes: mpsc::UnboundedSender<Op>,
    visibility: mpsc::UnboundedSender<Op>,
}

impl fmt::Debug for SqsSettler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("SqsSettler")
            .field("source", &self.logical)
            .field("dead_letter", &self.dead_letter)
            .field("unsettled", &state.entries.len())
            .field("closed", &state.closed)
            .finish()
    }
}

impl SqsSettler {
    /// A settler for the consumer of queue `logical` (`group` of `source`)
    /// holding at most `prefetch` deliveries and dead-lettering to
    /// `dead_letter`; starts its batching tasks and heartbeat.
    pub(crate) fn start(
        core: Arc<Core>,
        logical: &str,
        (source, group): (&str, Option<&str>),
        prefetch: usize,
        dead_letter: &str,
    ) -> Arc<Self> {
        let logical: Arc<str> = logical.into();
        let settings = batch::Settings {
            max_entries: MAX_ENTRIES,
            max_bytes: usize::MAX,
            linger: Duration::ZERO,
            concurrency: SETTLE_CONCURRENCY,
        };
        let (q, l) = (core.clone(), logical.clone());
        let (visibility, _) = batch::spawn(
            settings,
            |_: &Op| 0,
            move |ops| {
                let (q, l) = (q.clone(), l.clone());
                async move { flush(&q, &l, ops, Kind::Visibility, None).await }
            },
        );
        // A failed delete nobody awaits (an ack) returns its message through
        // the visibility task.
        let (q, l, v) = (core.clone(), logical.clone(), visibility.clone());
        let (deletes, _) = batch::spawn(
            settings,
            |_: &Op| 0,
            move |ops| {
                let (q, l, v) = (q.clone(), l.clone(), v.clone());
                async move { flush(&q, &l, ops, Kind::Delete, Some(&v)).await }
            },
        );
        let vt = core.config.visibility();
        let settler = Arc::new(SqsSettler {
            core,
            logical,
            source: source.into(),
            group: group.map(Arc::from),
            dead_letter: dead_letter.into(),
            permits: Arc::new(Semaphore::new(prefetch.max(1))),
            state: Mutex::new(Outstanding::default()),
            unconfirmed: Arc::default(),
            deletes,
            visibility,
        });
        tokio::spawn(heartbeat(Arc::downgrade(&settler), vt));
        settler
    }

    /// Starts tracking a message received by a call sent at `received_at`
    /// (its visibility timeout runs from then). Returns its tag, or `None`
    /// once the consumer closed.
    pub(crate) fn track(&self, receipt: &str, received_at: Instant) -> Option<u64> {
        let visible_until = received_at
            .checked_add(self.core.config.visibility())
            .unwrap_or(received_at);
        let mut state = self.state.lock();
        if state.closed {
            return None;
        }
        state.next_tag += 1;
        let tag = state.next_tag;
        state.entries.insert(
            tag,
            Entry {
                receipt: receipt.into(),
                received_at,
                visible_until,
                lease: Arc::default(),
            },
        );
        Some(tag)
    }

    /// Stops tracking `tag`, giving its prefetch slot back; `None` when the
    /// consumer was closed (the message went back to the queue then).
    fn untrack(&self, tag: u64) -> Option<Entry> {
        let entry = self.state.lock().entries.remove(&tag);
        if entry.is_some() {
            self.permits.add_permits(1);
        }
        entry
    }

    /// Runs `op` through its batching task and waits for its own outcome.
    async fn run(&self, kind: Kind, receipt: Arc<str>, seconds: i32) -> Result<()> {
        let (reply, outcome) = oneshot::channel();
        let queue = match kind {
            Kind::Delete => &self.deletes,
            Kind::Visibility => &self.visibility,
        };
        queue
            .send(Op {
                receipt,
                seconds,
                reply: Some(reply),
                _ticket: None,
            })
            .map_err(|_| {
                error::closed(
                    "the consumer's settlement task",
                    kind.operation(),
                    &self.logical,
                )
            })?;
        outcome.await.unwrap_or_else(|_| {
            Err(error::closed(
                "the consumer's settlement task",
                kind.operation(),
                &self.logical,
            ))
        })
    }

    /// Makes `receipt` visible again after a failed settlement, waiting for
    /// SQS, so the message is back in its queue when the settlement returns
    /// its error. If even that fails (the receipt handle expired, SQS is
    /// unreachable), the message comes back after its visibility timeout,
    /// which nothing extends any more.
    async fn release(&self, receipt: Arc<str>) {
        if let Err(e) = self.run(Kind::Visibility, receipt, 0).await {
            tracing::warn!(source = %self.logical, error = %e,
                "could not return a message after a failed settlement; SQS redelivers it after its visibility timeout");
        }
    }

    /// Counts and reports a dead letter that could not be written.
    fn dead_letter_failed(&self, error: &Error) {
        metrics::counter!(mq_core::observe::names::DEAD_LETTER_ERRORS,
            "backend" => BACKEND,
            "source" => self.logical.to_string(),
            "destination" => self.dead_letter.to_string())
        .increment(1);
        let text = format!(
            "dead letter from `{}` to `{}` could not be written; the message went back to its queue: {error}",
            self.logical, self.dead_letter
        );
        tracing::warn!(source = %self.logical, destination = %self.dead_letter, error = %error,
            "a dead letter could not be written; the message went back to its queue");
        self.core.clients.health.settle_failed(text);
    }

    /// Queues the delete of `receipt` without waiting for it: sequential
    /// acks then share batch calls. A delete that fails is logged, and SQS
    /// redelivers the message after its visibility timeout (at-least-once).
    fn delete_later(&self, receipt: Arc<str>) -> Result<()> {
        self.deletes
            .send(Op {
                receipt,
                seconds: 0,
                reply: None,
                _ticket: Some(Ticket::new(&self.unconfirmed)),
            })
            .map_err(|_| error::closed("the consumer's settlement task", "ack", &self.logical))
    }

    /// Makes `receipts` visible again at once, waiting for SQS; returns how
    /// many could not be (SQS redelivers those after their visibility timeout).
    async fn make_visible(&self, receipts: Vec<Arc<str>>) -> usize {
        let returns = receipts
            .into_iter()
            .map(|r| self.run(Kind::Visibility, r, 0));
        futures::future::join_all(returns)
            .await
            .into_iter()
            .filter_map(Result::err)
            .count()
    }

    /// Makes received but untracked messages visible again, waiting for SQS.
    pub(crate) async fn return_now(&self, receipts: Vec<Arc<str>>) {
        let failed = self.make_visible(receipts).await;
        if failed > 0 {
            tracing::warn!(source = %self.logical, failed,
                "could not return some messages; SQS redelivers them after their visibility timeout");
        }
    }

    /// Marks the consumer closed and makes every unsettled delivery visible
    /// again, waiting until SQS confirmed it.
    pub(crate) async fn close(&self) -> Result<()> {
        let entries: Vec<Entry> = {
            let mut state = self.state.lock();
            state.closed = true;
            state.entries.drain().map(|(_, e)| e).collect()
        };
        let mut receipts = Vec::with_capacity(entries.len());
        for entry in entries {
            // Wait for a heartbeat extension of this message to finish.
            drop(entry.lease.lock().await);
            receipts.push(entry.receipt);
        }
        let failed = self.make_visible(receipts).await;
        if failed > 0 {
            tracing::warn!(source = %self.logical, failed,
                "could not return some unsettled messages on close; SQS redelivers them after their visibility timeout");
        }
        // Acks still queued or in flight finish before close returns.
        self.unconfirmed
            .drained(self.core.config.request_timeout().saturating_mul(2))
            .await;
        Ok(())
    }

    /// Whether the queue is a FIFO queue (message groups block).
    fn is_fifo(&self) -> bool {
        self.core.config.fifo || self.logical.ends_with(".fifo")
    }

    fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Extends the visibility of held deliveries that are past half of it.
    async fn extend_due(&self, vt: Duration) {
        let now = Instant::now();
        let half = now.checked_add(vt / 2).unwrap_or(now);
        type Due = (u64, Arc<str>, i32, tokio::sync::OwnedMutexGuard<()>);
        let due: Vec<Due> = {
            let state = self.state.lock();
            state
                .entries
                .iter()
                .filter(|(_, e)| e.visible_until <= half)
                .filter_map(|(tag, e)| {
                    // Past SQS's 12 hours from receipt nothing extends it any more.
                    let seconds = hide_seconds(vt, e.received_at);
                    if seconds == 0 {
                        return None;
                    }
                    let guard = e.lease.clone().try_lock_owned().ok()?;
                    Some((*tag, e.receipt.clone(), seconds, guard))
                })
                .collect()
        };
        if due.is_empty() {
            return;
        }
        let calls = due.chunks(MAX_ENTRIES).map(|chunk| {
            let ops: Vec<(u64, Arc<str>, i32)> = chunk
                .iter()
                .map(|(t, r, s, _)| (*t, r.clone(), *s))
                .collect();
            async move {
                let entries: Vec<(Arc<str>, i32)> =
                    ops.iter().map(|(_, r, s)| (r.clone(), *s)).collect();
                let results = call(&self.core, &self.logical, Kind::Visibility, &entries).await;
                ops.into_iter()
                    .map(|(tag, _, s)| (tag, s))
                    .zip(results)
                    .collect::<Vec<_>>()
            }
        });
        let results = futures::future::join_all(calls).await;
        let mut state = self.state.lock();
        for ((tag, seconds), result) in results.into_iter().flatten() {
            match result {
                Ok(()) => {
                    if let Some(e) = state.entries.get_mut(&tag) {
                        let extended = Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
                        e.visible_until = now.checked_add(extended).unwrap_or(now);
                    }
                }
                Err(e) => {
                    tracing::warn!(source = %self.logical, error = %e, "could not extend a held message's visibility")
                }
            }
        }
        drop(state);
        drop(due);
    }

    /// Publishes the dead letter of `delivery` to the consumer's dead-letter
    /// queue: a [`dead_letter_copy`](mq_core::backend::republish::dead_letter_copy)
    /// (same `mq` id, fresh FIFO deduplication id) cut to fit the queue's
    /// size limit, tried up to [`DEAD_LETTER_ATTEMPTS`] times while the
    /// error is retryable.
    async fn publish_dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<()> {
        let copy = mq_core::backend::republish::dead_letter_copy(delivery, reason);
        let mut pause = DEAD_LETTER_BACKOFF;
        let mut attempt = 1;
        loop {
            match self.write_dead_letter(copy.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() && attempt < DEAD_LETTER_ATTEMPTS => {
                    tracing::debug!(source = %self.logical, destination = %self.dead_letter,
                        attempt, error = %e, "writing a dead letter failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause = pause.saturating_mul(2);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One attempt to write `copy` to the dead-letter queue.
    async fn write_dead_letter(&self, copy: Message) -> Result<()> {
        let info = topology::resolve(&self.core, &self.dead_letter).await?;
        let wire = fit_copy(&info, copy)?;
        send_to(&self.core, &self.dead_letter, std::slice::from_ref(&wire))
            .await
            .pop()
            .unwrap_or_else(|| {
                Err(Error::new(
                    ErrorKind::Broker,
                    "no outcome for the dead letter",
                ))
            })
    }
}

#[async_trait]
impl Settler for SqsSettler {
    async fn settle(&self, delivery: &Delivery, settlement: Settlement) -> Result<()> {
        let operation = match &settlement {
            Settlement::Ack => "ack",
            Settlement::Nack { .. } => "nack",
            Settlement::DeadLetter { .. } => "dead-letter",
            _ => "settle",
        };
        let entry = delivery
            .metadata::<SqsMetadata>()
            .and_then(|m| self.untrack(m.tag))
            .ok_or_else(|| {
                Error::closed(format!(
                    "the consumer was closed; message {} went back to the queue",
                    delivery.id()
                ))
                .with_backend(BACKEND)
                .with_operation(operation)
                .with_destination(self.logical.to_string())
            })?;
        // Wait for a heartbeat extension of this message to finish.
        drop(entry.lease.lock().await);
        let receipt = entry.receipt;
        match settlement {
            // A FIFO queue delivers nothing more of a message group while
            // one of its messages is undeleted: the ack waits for its
            // delete, so a receive right after it finds the group open (a
            // dead-letter purge scanned 20 of 30 letters when the next
            // receive overtook the queued deletes). A failed delete makes
            // the message visible again and returns the error.
            Settlement::Ack if self.is_fifo() => {
                match self.run(Kind::Delete, receipt.clone(), 0).await {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        self.release(receipt).await;
                        Err(e.with_operation(operation))
                    }
                }
            }
            Settlement::Ack => self.delete_later(receipt),
            // If this fails the message stays hidden until its visibility
            // timeout (no longer extended): the error says so.
            Settlement::Nack { delay: None } => self.run(Kind::Visibility, receipt, 0).await,
            Settlement::Nack { delay: Some(d) } => {
                // SQS hides a message for at most 12 hours from its receipt:
                // a longer delay (up to `Duration::MAX`) is clamped to what
                // is left of them, never an overflow or a refusal.
                let seconds = hide_seconds(d, entry.received_at);
                match self.run(Kind::Visibility, receipt.clone(), seconds).await {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        self.release(receipt).await;
                        Err(e.with_operation(operation))
                    }
                }
            }
            Settlement::DeadLetter { reason } => {
                if let Err(e) = self.publish_dead_letter(delivery, &reason).await {
                    self.dead_letter_failed(&e);
                    // Back to its queue, but after a backoff that grows with
                    // the attempt: a destination that keeps refusing must not
                    // become a hot loop of redeliveries.
                    let wait = dead_letter_backoff(delivery.attempt());
                    let seconds = hide_seconds(wait, entry.received_at);
                    if self
                        .run(Kind::Visibility, receipt.clone(), seconds)
                        .await
                        .is_err()
                    {
                        self.release(receipt).await;
                    }
                    return Err(e.with_operation(operation));
                }
                // Awaited: a delete that fails returns the message too (it is
                // then in both queues, never in neither).
                match self.run(Kind::Delete, receipt.clone(), 0).await {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        self.release(receipt).await;
                        Err(e.with_operation(operation))
                    }
                }
            }
            other => {
                self.release(receipt).await;
                Err(Error::unsupported(format!("unknown settlement {other:?}"))
                    .with_backend(BACKEND))
            }
        }
    }

    fn abandon(&self, delivery: &Delivery) {
        let Some(entry) = delivery
            .metadata::<SqsMetadata>()
            .and_then(|m| self.untrack(m.tag))
        else {
            return;
        };
        let visibility = self.visibility.clone();
        let op = Op {
            receipt: entry.receipt,
            seconds: 0,
            reply: None,
            _ticket: Some(Ticket::new(&self.unconfirmed)),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let lease = entry.lease;
                runtime.spawn(async move {
                    let _settled = lease.lock().await;
                    let _ = visibility.send(op);
                });
            }
            // No runtime: hand it over directly (its visibility timeout is the fallback).
            Err(_) => {
                let _ = visibility.send(op);
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Delete,
    Visibility,
}

impl Kind {
    fn operation(self) -> &'static str {
        match self {
            Kind::Delete => "ack",
            Kind::Visibility => "change visibility",
        }
    }
}

/// Runs one batch of deletes or visibility changes and answers each op. A
/// failed delete nobody awaits (an ack) is handed to `returns` to be made
/// visible again at once.
async fn flush(
    core: &Core,
    logical: &str,
    ops: Vec<Op>,
    kind: Kind,
    returns: Option<&mpsc::UnboundedSender<Op>>,
) {
    let entries: Vec<(Arc<str>, i32)> =
        ops.iter().map(|o| (o.receipt.clone(), o.seconds)).collect();
    let results = call(core, logical, kind, &entries).await;
    for (op, result) in ops.into_iter().zip(results) {
        match op.reply {
            Some(reply) => {
                let _ = reply.send(result);
            }
            None => {
                let Err(e) = result else { continue };
                match (kind, returns) {
                    (Kind::Delete, Some(returns)) => {
                        tracing::warn!(source = logical, error = %e, "deleting an acked message failed; making it visible again");
                        core.clients.health.settle_failed(format!(
                            "an ack on `{logical}` failed; the message will be delivered again: {e}"
                        ));
                        let _ = returns.send(Op {
                            receipt: op.receipt,
                            seconds: 0,
                            reply: None,
                            _ticket: op._ticket,
                        });
                    }
                    _ => {
                        tracing::warn!(source = logical, error = %e, "returning a message to the queue failed; SQS redelivers it after its visibility timeout")
                    }
                }
            }
        }
    }
}

/// A batch request, built and not sent yet.
enum Request {
    Delete(DeleteMessageBatchFluentBuilder),
    Visibility(ChangeMessageVisibilityBatchFluentBuilder),
}

impl Kind {
    /// The `DeleteMessageBatch` or `ChangeMessageVisibilityBatch` request for
    /// `entries` (receipt handle, new visibility timeout; a delete takes no
    /// timeout), without the queue URL yet.
    fn request(self, client: &aws_sdk_sqs::Client, entries: &[(Arc<str>, i32)]) -> Result<Request> {
        Ok(match self {
            Kind::Delete => {
                let entries = built(entries, |id, receipt, _| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(id)
                        .receipt_handle(receipt)
                        .build()
                })?;
                Request::Delete(client.delete_message_batch().set_entries(Some(entries)))
            }
            Kind::Visibility => {
                let entries = built(entries, |id, receipt, seconds| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(id)
                        .receipt_handle(receipt)
                        .visibility_timeout(seconds)
                        .build()
                })?;
                Request::Visibility(
                    client
                        .change_message_visibility_batch()
                        .set_entries(Some(entries)),
                )
            }
        })
    }
}

/// `entries` as batch request entries made by `build` from the id, the
/// receipt handle and the seconds; entry `i` gets the id `i`.
fn built<T>(
    entries: &[(Arc<str>, i32)],
    build: impl Fn(String, &str, i32) -> std::result::Result<T, BuildError>,
) -> Result<Vec<T>> {
    entries
        .iter()
        .enumerate()
        .map(|(i, (receipt, seconds))| build(i.to_string(), receipt, *seconds))
        .collect::<std::result::Result<_, _>>()
        .map_err(error::invalid_entry)
}

/// One batch call of `kind` for `entries` (see [`Kind::request`]) on the
/// queue of `logical`, and each entry's outcome. A queue found gone is
/// forgotten, so the next call resolves it again.
async fn call(
    core: &Core,
    logical: &str,
    kind: Kind,
    entries: &[(Arc<str>, i32)],
) -> Vec<Result<()>> {
    let n = entries.len();
    let info = match topology::resolve(core, logical).await {
        Ok(info) => info,
        Err(e) => return error::replicate_each(&e, n),
    };
    let request = match kind.request(&core.clients.ops, entries) {
        Ok(request) => request,
        Err(e) => return error::replicate_each(&e, n),
    };
    let operation = kind.operation();
    let _request = core.permit(Budget::Other).await;
    let answer = match request {
        Request::Delete(r) => {
            error::answer(r.queue_url(&info.url).send().await, n, operation, logical)
        }
        Request::Visibility(r) => {
            error::answer(r.queue_url(&info.url).send().await, n, operation, logical)
        }
    };
    answer.unwrap_or_else(|e| {
        core.gone(&info, &e);
        error::replicate_each(&e, n)
    })
}

/// How long a message whose dead letter could not be written stays hidden
/// before it comes back: 2 s after the first failure, doubling, at most 15 min.
fn dead_letter_backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.clamp(1, 10)).min(Duration::from_secs(900))
}

/// How long a message received at `received_at` may be hidden from now for
/// a requested `wanted`, in the whole seconds SQS takes: `wanted` rounded up,
/// clamped to what is left of SQS's 12 hours from receipt (less 2 s for the
/// rounding and the request's travel), which SQS refuses to exceed.
fn hide_seconds(wanted: Duration, received_at: Instant) -> i32 {
    let left = MAX_VISIBILITY
        .saturating_sub(received_at.elapsed())
        .saturating_sub(Duration::from_secs(2));
    if wanted >= left {
        i32::try_from(left.as_secs()).unwrap_or(i32::MAX)
    } else {
        secs_i32(wanted)
    }
}

/// Extends held deliveries' visibility until the settler goes away or closes.
async fn heartbeat(settler: Weak<SqsSettler>, vt: Duration) {
    let tick = (vt / 6).max(Duration::from_millis(200));
    loop {
        tokio::time::sleep(tick).await;
        let Some(settler) = settler.upgrade() else {
            return;
        };
        if settler.is_closed() {
            return;
        }
        settler.extend_due(vt).await;
    }
}
