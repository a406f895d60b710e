//! Receiving: one consumer-group member per [`KafkaConsumer`], polled on
//! its own thread.
//!
//! The thread owns the librdkafka consumer and polls it all the time, so
//! group heartbeats and rebalance callbacks are served even while the
//! application holds its prefetch of deliveries and calls no `receive`.
//! Fetched records wait in a small ready queue; `receive` takes from it.
//!
//! * Backpressure: at most `prefetch` deliveries are handed out unsettled
//!   (`receive` waits for a settlement). Behind them the thread reads ahead
//!   up to twice the prefetch (at least 500 records, at most 32 MiB of
//!   payload). When that is full the thread stops polling for a while, so
//!   librdkafka's own bounded queue (`queued.max.messages.kbytes`) holds
//!   what it fetched and fetching slows down by itself; only when the
//!   application stays behind for longer ([`KafkaConfig::pause_after`]) are the
//!   partitions paused, so that the thread can poll again (rebalance
//!   callbacks, `max.poll.interval.ms`) without taking more records. A
//!   pause makes librdkafka drop what it had queued and fetch again from
//!   the last record it handed out, so pausing early and often would fetch
//!   the same records many times (measured on tansu: 8% of the raw
//!   client's consume rate with a pause per read-ahead).
//! * Offsets: see [`offsets`](crate::offsets). Settled offsets are committed
//!   every `commit_interval`, when partitions are revoked (before the new
//!   owner starts), and on close. Auto commit is off, so a record is never
//!   committed unprocessed.
//! * Retry topic: records not due yet (`mq-not-before` in the future) pause
//!   their partition until due; other partitions keep flowing.
//! * Close: deliveries handed out and not settled are republished to the
//!   retry topic (attempt + 1), so the group's next consumer gets them and
//!   the offsets behind them can be committed; in ordered mode they are not
//!   committed instead, so the next owner reads them again in place.

use std::fmt;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mq_core::backend::time::{instant_after, tokio_instant_after, until};
use mq_core::{Consumer, Delivery, Error, ErrorKind, Received, Result};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::BorrowedMessage;
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};

use crate::codec::decode;
use crate::config::KafkaConfig;
use crate::core::{Held, Pending, Sender, Shared, Tp};
use crate::error::{convert, convert_create, BACKEND};
use crate::health::KafkaHealth;
use crate::settle::KafkaSettler;

/// How long one poll of librdkafka waits; bounds how late a pause, resume
/// or commit happens.
const POLL: Duration = Duration::from_millis(20);

/// Records fetched ahead of `receive` (beyond the prefetch of handed-out
/// deliveries) before fetching pauses: pausing costs a fetch round trip
/// (librdkafka drops what it had queued and fetches it again), so the
/// consumer reads ahead generously and pauses only when the application
/// falls far behind.
const READ_AHEAD_MIN: usize = 500;

/// Bytes of payload fetched ahead before fetching pauses.
const READ_AHEAD_BYTES: usize = 32 * 1024 * 1024;

/// How often the thread looks again while the read-ahead is full.
const FULL_RECHECK: Duration = Duration::from_millis(5);

/// Records taken per round of housekeeping: after the first (which waits
/// up to [`POLL`]) the thread takes only what librdkafka has queued
/// already, so a burst never holds up housekeeping (commits, resumes, a
/// stop) for longer than one wait. A round looks at every partition and
/// reads the clock: once per record that was about 8% of the thread's
/// samples at 200k records/s.
const BURST: usize = 256;

/// What [`Shared::accept`] asks of the poll thread.
enum Next {
    /// Take the next record.
    More,
    /// The read-ahead is full: do housekeeping before taking more.
    Full,
    /// Pause this partition at once: its record is not due yet.
    Pause(Tp),
}

/// The poll thread's side of [`Shared`] (what a settlement changes is in `core.rs`).
impl Shared {
    /// The most records waiting in the read-ahead before it counts as full.
    fn read_ahead_limit(&self) -> usize {
        (self.prefetch * 2).max(READ_AHEAD_MIN)
    }

    /// Called by the poll thread for each fetched record.
    fn accept(&self, msg: &BorrowedMessage<'_>) -> Next {
        let offset = msg.offset();
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let tp = state.tp(msg.topic(), msg.partition());
        let Some(part) = state.parts.get_mut(&tp) else {
            return Next::More;
        };
        if part.rewind.is_some() || part.hold_until.is_some() {
            // Fetched before a rewind or a hold took effect: read again
            // later. (A pause for backpressure alone needs nothing: the
            // pause makes librdkafka drop what it fetched beyond this
            // record and resume after it.)
            part.rewind_to(offset);
            return Next::More;
        }
        let from_retry = *tp.0 == *self.retry_topic;
        let extra = if state.redeliveries.is_empty() {
            0
        } else {
            state
                .redeliveries
                .get(&(tp.clone(), offset))
                .copied()
                .unwrap_or(0)
        };
        let decoded = decode(
            msg,
            tp.0.clone(),
            &self.source,
            Some(&self.group),
            part.generation,
            from_retry,
            extra,
        );
        if let Some(nb) = decoded.not_before {
            let wait = until(nb);
            if !wait.is_zero() {
                part.hold_until = Some(instant_after(wait));
                part.rewind_to(offset);
                part.paused = true;
                return Next::Pause(tp);
            }
        }
        part.accept(offset);
        state.ready_bytes += decoded.received.payload().len();
        let generation = part.generation;
        state.ready.push_back(Pending {
            tp,
            generation,
            offset,
            received: decoded.received,
        });
        let full =
            state.ready.len() >= self.read_ahead_limit() || state.ready_bytes >= READ_AHEAD_BYTES;
        drop(guard);
        self.readable.notify_one();
        if full {
            Next::Full
        } else {
            Next::More
        }
    }
}

/// What the poll thread must do after looking at the state.
#[derive(Default)]
struct Actions {
    pause: Vec<Tp>,
    seek: Vec<(Tp, i64)>,
    resume: Vec<Tp>,
    commit: Vec<(Tp, i64)>,
    stop: bool,
    /// The read-ahead is full: take no more records for now.
    full: bool,
    /// Records given back became due: wake `receive`.
    wake: bool,
}

fn tpl(list: &[Tp]) -> TopicPartitionList {
    let mut t = TopicPartitionList::with_capacity(list.len());
    for (topic, p) in list {
        t.add_partition(topic, *p);
    }
    t
}

fn tpl_offsets(list: &[(Tp, i64)]) -> TopicPartitionList {
    let mut t = TopicPartitionList::with_capacity(list.len());
    for ((topic, p), o) in list {
        // Cannot fail: a fresh list, each partition once, a plain offset.
        let _ = t.add_partition_offset(topic, *p, Offset::Offset(*o));
    }
    t
}

impl Shared {
    /// What the poll thread must do now. `pause_when_full`: the read-ahead
    /// has been full for [`KafkaConfig::pause_after`], pause rather than stop polling.
    fn housekeeping(&self, commit_due: bool, pause_when_full: bool) -> Actions {
        let mut a = Actions::default();
        let mut state = self.state.lock();
        let state = &mut *state;
        // Full when the read-ahead is used up; room again once it is half
        // empty, so a busy consumer does not flap.
        let limit = self.read_ahead_limit();
        let waiting = state.ready.len();
        let full = waiting >= limit || state.ready_bytes >= READ_AHEAD_BYTES;
        let roomy = waiting <= limit / 2 && state.ready_bytes <= READ_AHEAD_BYTES / 2;
        a.full = full;
        let now = Instant::now();
        if state.delayed.iter().any(|(due, _)| *due <= now) {
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut state.delayed)
                .into_iter()
                .partition(|(d, _)| *d <= now);
            state.delayed = later;
            for (_, p) in due {
                state.ready_bytes += p.received.payload().len();
                state.ready.push_back(p);
            }
            a.wake = true;
        }
        for (tp, part) in state.parts.iter_mut() {
            if part.hold_until.is_some_and(|t| t <= now) {
                part.hold_until = None;
            }
            let held = part.hold_until.is_some();
            if !part.paused && ((full && pause_when_full) || held) {
                part.paused = true;
                a.pause.push(tp.clone());
            } else if part.paused && !held && roomy {
                part.paused = false;
                a.resume.push(tp.clone());
            }
            // Records at or past `rewind` were discarded: fetch them again.
            // The rewind stays set (and later records are discarded) until
            // the seek succeeded, so nothing is skipped if it fails.
            if !part.paused {
                if let Some(r) = part.rewind {
                    a.seek.push((tp.clone(), r));
                }
            }
            // The last (synchronous) commit before leaving commits the
            // commit point even if an asynchronous commit of it is in
            // flight: that one may still fail, and nothing would retry it.
            let commit = if state.stop {
                part.commit_point()
            } else if commit_due {
                part.take_commit()
            } else {
                None
            };
            if let Some(o) = commit {
                a.commit.push((tp.clone(), o));
            }
        }
        a.stop = state.stop;
        a
    }
}

/// The consumer context: rebalance and commit callbacks, run on the poll thread.
pub(crate) struct Context {
    shared: Arc<Shared>,
    health: Arc<KafkaHealth>,
}

impl ClientContext for Context {
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.health.stats(&statistics);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.health.error(&error, reason);
        let e = convert(error, "consume", Some(&self.shared.source));
        tracing::warn!(error = %e, reason, "kafka consumer error");
        if matches!(e.kind(), ErrorKind::Permission | ErrorKind::Config) {
            self.shared.state.lock().error = Some(e);
            self.shared.readable.notify_one();
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        let mut commit = Vec::new();
        {
            let mut state = self.shared.state.lock();
            let state = &mut *state;
            for e in revoked.elements() {
                let tp = state.tp(e.topic(), e.partition());
                if let Some(o) = state.revoke(&tp) {
                    commit.push((tp, o));
                }
            }
        }
        if !commit.is_empty() {
            tracing::debug!(group = %self.shared.group, ?commit, "committing before revoke");
            if let Err(e) = consumer.commit(&tpl_offsets(&commit), CommitMode::Sync) {
                tracing::warn!(error = %e, "committing settled offsets before a revoke failed; they will be redelivered");
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(assigned) => {
                let mut state = self.shared.state.lock();
                for e in assigned.elements() {
                    state.assign((Arc::from(e.topic()), e.partition()));
                }
                tracing::debug!(group = %self.shared.group, partitions = state.parts.len(), "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance failed"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if result.is_ok() {
            self.health.up();
        }
        if let Err(e) = result {
            tracing::debug!(error = %e, "offset commit failed; retrying on the next round");
            let mut state = self.shared.state.lock();
            for el in offsets.elements() {
                let tp = state.tp(el.topic(), el.partition());
                if let Some(p) = state.parts.get_mut(&tp) {
                    p.commit_failed();
                }
            }
        }
    }
}

fn poll_loop(consumer: BaseConsumer<Context>, shared: Arc<Shared>) {
    let mut last_commit = Instant::now();
    // Since when the read-ahead has been full without a pause.
    let mut full_since: Option<Instant> = None;
    loop {
        let commit_due = last_commit.elapsed() >= shared.commit_interval;
        let pause_when_full = full_since.is_some_and(|t| t.elapsed() >= shared.pause_after);
        let a = shared.housekeeping(commit_due, pause_when_full);
        if commit_due {
            last_commit = Instant::now();
        }
        apply(&consumer, &shared, &a);
        if a.wake {
            shared.readable.notify_one();
        }
        if a.stop {
            break;
        }
        if !a.full {
            full_since = None;
        } else if !pause_when_full {
            // Take nothing more for now; librdkafka keeps what it fetched.
            full_since.get_or_insert_with(Instant::now);
            std::thread::sleep(FULL_RECHECK);
            continue;
        }
        take_burst(&consumer, &shared);
    }
    // Leave the group; the revoke this triggers finds nothing left to commit.
    shared.state.lock().parts.clear();
    consumer.unsubscribe();
    drop(consumer);
    tracing::debug!(group = %shared.group, source = %shared.source, "consumer left the group");
}

/// Takes up to [`BURST`] records: the first poll waits up to [`POLL`], the
/// rest only take what librdkafka has queued.
fn take_burst(consumer: &BaseConsumer<Context>, shared: &Shared) {
    let mut wait = POLL;
    for _ in 0..BURST {
        match consumer.poll(wait) {
            None => return,
            Some(Ok(msg)) => match shared.accept(&msg) {
                Next::More => {}
                Next::Full => return,
                Next::Pause(tp) => {
                    if let Err(e) = consumer.pause(&tpl(&[tp])) {
                        tracing::warn!(error = %e, "pausing a partition until its retry is due failed");
                    }
                    return;
                }
            },
            Some(Err(e)) => {
                let e = convert(e, "consume", Some(&shared.source));
                tracing::debug!(error = %e, "kafka consumer poll error");
                if matches!(e.kind(), ErrorKind::Permission) {
                    shared.state.lock().error = Some(e);
                    shared.readable.notify_one();
                }
                return;
            }
        }
        wait = Duration::ZERO;
    }
}

fn apply(consumer: &BaseConsumer<Context>, shared: &Shared, a: &Actions) {
    if !a.pause.is_empty() {
        tracing::debug!(partitions = a.pause.len(), "pausing partitions");
        if let Err(e) = consumer.pause(&tpl(&a.pause)) {
            tracing::warn!(error = %e, "pausing partitions failed");
        }
    }
    if !a.resume.is_empty() {
        tracing::debug!(partitions = a.resume.len(), "resuming partitions");
        if let Err(e) = consumer.resume(&tpl(&a.resume)) {
            tracing::warn!(error = %e, "resuming partitions failed");
        }
    }
    for (tp, o) in &a.seek {
        tracing::debug!(topic = %tp.0, partition = tp.1, offset = o, "seeking back");
        let sought = consumer.seek(
            &tp.0,
            tp.1,
            Offset::Offset(*o),
            Timeout::After(Duration::from_secs(5)),
        );
        match sought {
            Ok(()) => {
                let mut state = shared.state.lock();
                if let Some(part) = state.parts.get_mut(tp) {
                    if part.rewind == Some(*o) {
                        part.rewind = None;
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, topic = %tp.0, partition = tp.1, offset = o,
                    "seeking back failed; retrying");
            }
        }
    }
    if !a.commit.is_empty() {
        let mode = if a.stop {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        if let Err(e) = consumer.commit(&tpl_offsets(&a.commit), mode) {
            tracing::debug!(error = %e, "committing offsets failed");
        }
    }
}

/// A consumer-group member reading one topic (and its group's retry topic).
pub struct KafkaConsumer {
    shared: Arc<Shared>,
    health: Arc<KafkaHealth>,
    settler: Arc<KafkaSettler>,
    thread: Option<JoinHandle<()>>,
    closed: bool,
    close_timeout: Duration,
}

impl fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("source", &self.shared.source)
            .field("group", &self.shared.group)
            .field("retry_topic", &self.shared.retry_topic)
            .field("prefetch", &self.shared.prefetch)
            .field("closed", &self.closed)
            .finish()
    }
}

impl KafkaConsumer {
    /// Joins `group` on `source` and its retry topic and starts polling.
    pub(crate) fn start(
        config: &KafkaConfig,
        sender: Arc<Sender>,
        source: String,
        group: String,
        retry_topic: String,
        dead_letter: String,
        prefetch: usize,
    ) -> Result<Self> {
        let prefetch = prefetch.max(1);
        let shared = Arc::new(Shared::new(
            config,
            source.clone(),
            group.clone(),
            retry_topic.clone(),
            dead_letter,
            prefetch,
        ));
        let consumer: BaseConsumer<Context> = config
            .consumer_config(&group)
            .create_with_context(Context {
                shared: shared.clone(),
                health: sender.health.clone(),
            })
            .map_err(|e| convert_create(e, &config.secrets(), Some(&source)))?;
        consumer
            .subscribe(&[source.as_str(), retry_topic.as_str()])
            .map_err(|e| convert(e, "subscribe", Some(&source)))?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            Error::new(
                ErrorKind::Config,
                "the Kafka consumer needs a Tokio runtime",
            )
            .with_backend(BACKEND)
            .with_source(e)
        })?;
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!(
                    "mq-kafka-{}",
                    source.chars().take(20).collect::<String>()
                ))
                .spawn(move || poll_loop(consumer, shared))
                .map_err(|e| {
                    Error::new(ErrorKind::Broker, "cannot start the consumer thread")
                        .with_backend(BACKEND)
                        .with_source(e)
                })?
        };
        let health = sender.health.clone();
        let settler = Arc::new(KafkaSettler::new(shared.clone(), sender, runtime));
        Ok(KafkaConsumer {
            shared,
            health,
            settler,
            thread: Some(thread),
            closed: false,
            close_timeout: config.send_timeout.saturating_add(Duration::from_secs(5)),
        })
    }

    fn closed_error(&self) -> Error {
        Error::closed("consumer is closed")
            .with_backend(BACKEND)
            .with_operation("receive")
            .with_destination(self.shared.source.to_string())
    }

    /// Takes a ready record if there is one (and a permit for it).
    fn take_ready(
        &self,
        permit: tokio::sync::SemaphorePermit<'_>,
    ) -> std::result::Result<Delivery, Option<Error>> {
        let mut state = self.shared.state.lock();
        if let Some(e) = state.error.take() {
            return Err(Some(e));
        }
        match state.ready.pop_front() {
            Some(p) => {
                state.ready_bytes = state.ready_bytes.saturating_sub(p.received.payload().len());
                state.hand_out(p.tp, p.generation, p.offset, p.received.clone());
                drop(state);
                permit.forget();
                Ok(Delivery::new(p.received, self.settler.clone()))
            }
            None => Err(None),
        }
    }

    fn signal_stop(&self) {
        let mut state = self.shared.state.lock();
        state.closed = true;
        state.stop = true;
        state.ready.clear();
        state.ready_bytes = 0;
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn receive(&mut self) -> Result<Delivery> {
        if self.closed {
            return Err(self.closed_error());
        }
        let shared = self.shared.clone();
        loop {
            let permit = shared
                .permits
                .acquire()
                .await
                .map_err(|_| self.closed_error())?;
            let notified = shared.readable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.take_ready(permit) {
                Ok(d) => return Ok(d),
                Err(Some(e)) => return Err(e),
                Err(None) => notified.await,
            }
        }
    }

    async fn receive_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let mut batch = Vec::new();
        if max == 0 {
            return Ok(batch);
        }
        match tokio::time::timeout(wait, self.receive()).await {
            Ok(first) => batch.push(first?),
            Err(_) => return Ok(batch),
        }
        while batch.len() < max {
            let Ok(permit) = self.shared.permits.try_acquire() else {
                break;
            };
            match self.take_ready(permit) {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        Ok(batch)
    }

    /// Stops receiving, returns unsettled deliveries (see the module docs),
    /// commits what is settled and leaves the group. Settling a delivery of
    /// this consumer afterwards fails with [`ErrorKind::Closed`].
    ///
    /// Health: the connection's, except while a record of this consumer
    /// cannot be republished (a dead letter or retry copy failed and the
    /// record is not settled yet): then disconnected, with that error.
    fn health(&self) -> mq_core::observe::Health {
        let mut health = self.health.health();
        let state = self.shared.state.lock();
        if let Some(f) = state.failing.values().max_by_key(|f| f.at) {
            health.connected = false;
            health.last_error = Some(format!(
                "{} record(s) of {} cannot be republished; last error: {}",
                state.failing.len(),
                self.shared.source,
                f.error
            ));
            health.last_error_at = Some(f.at);
        }
        health
    }

    async fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        let returned: Vec<(Held, Received)> = {
            let mut state = self.shared.state.lock();
            state.closed = true;
            state.ready.clear();
            state.ready_bytes = 0;
            state.delayed.clear();
            state.outstanding.drain().collect()
        };
        if !returned.is_empty() && !self.shared.ordered {
            self.settler.return_all(returned).await;
        }
        // Let nacks and dead letters in flight finish before the last commit.
        let deadline = tokio_instant_after(self.close_timeout);
        loop {
            let notified = self.shared.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.state.lock().inflight == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::warn!(
                    "republishes still in flight at close; their messages will be redelivered"
                );
                break;
            }
        }
        self.signal_stop();
        if let Some(thread) = self.thread.take() {
            let joined = tokio::task::spawn_blocking(move || thread.join());
            match tokio::time::timeout(self.close_timeout, joined).await {
                Ok(Ok(Ok(()))) => {}
                Ok(_) => tracing::warn!("the consumer thread panicked"),
                Err(_) => tracing::warn!("the consumer did not leave its group in time"),
            }
        }
        Ok(())
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        // Not closed: stop the thread (it commits what is settled and leaves
        // the group); unsettled deliveries are redelivered to the next owner.
        self.signal_stop();
    }
}
