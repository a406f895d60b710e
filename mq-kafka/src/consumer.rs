//! Receiving: one consumer-group member per [`KafkaConsumer`], polled on
//! its own thread.
//!
//! The thread owns the librdkafka consumer and polls it all the time, so
//! group heartbeats and rebalance callbacks are served even while the
//! application holds its prefetch of deliveries and calls no `receive`.
//! Fetched records wait in a small ready queue; `receive` takes from it.
//! Its polls of librdkafka never block: with nothing queued the thread
//! waits on a doorbell that librdkafka rings when something arrives and
//! `close` rings when the consumer stops, so a `close` is not held up by
//! a poll in progress (a blocking librdkafka poll cannot be cut short).
//!
//! * Hand-off: the thread parses a burst of records (up to 256 records, or
//!   1 MiB of payload) without the consumer's lock, then hands them over
//!   under one lock with one wake-up; `receive_batch` takes what is ready
//!   under one lock too. Small payloads of a burst share 16 KiB chunks
//!   (`PayloadChunks`). `receive` makes each delivery from its parsed
//!   record, on the application's thread: the poll thread is the busier
//!   of the two, and a delivery's allocations are then freed on the
//!   thread that made them. It takes the records under the lock and makes
//!   the deliveries without it, and an ack only queues its offset
//!   ([`acks`](crate::acks)), so the two threads seldom wait for each
//!   other's lock. A rebalance callback, which runs inside a poll in
//!   the middle of a burst, hands the burst over before it revokes, so no
//!   record fetched in one assignment of a partition is handed out in the next.
//! * Backpressure: at most `prefetch` deliveries are handed out unsettled
//!   (`receive` waits for a settlement). Behind them the thread reads ahead
//!   up to twice the prefetch (at least 500 records, at most 32 MiB of
//!   payload). When that is full the thread stops polling until `receive`
//!   has taken half of it (or its housekeeping is due), so librdkafka's
//!   own bounded queue (`queued.max.messages.kbytes`) holds what it
//!   fetched and fetching slows down by itself; only when the
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
//!   retry topic (attempt unchanged), so the group's next consumer gets them and
//!   the offsets behind them can be committed; in ordered mode they are not
//!   committed instead, so the next owner reads them again in place.
//! * Revoke: the same for the deliveries held of the revoked partitions
//!   (the rebalance callback waits for their copies), so that one delivery
//!   held across a rebalance does not bring back what was acked behind it.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mq_core::backend::time::{instant_after, tokio_instant_after, until};
use mq_core::{Consumer, Delivery, Error, ErrorKind, Received, Result};
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};

use crate::codec::{parse, Parsed, PayloadChunks, PAYLOAD_CHUNK};
use crate::config::KafkaConfig;
use crate::core::{Held, Pending, Record, Sender, Shared, State, Taken, Tp};
use crate::error::{convert, convert_create, BACKEND};
use crate::health::KafkaHealth;
use crate::offsets::{Kept, PartitionState};
use crate::settle::KafkaSettler;

/// How long the poll thread waits for librdkafka's empty queue to fill
/// before it looks at its state again; bounds how late a pause, resume or
/// commit happens. Records, rebalances and `close` cut the wait short
/// ([`Doorbell`](crate::core::Doorbell)).
const POLL: Duration = Duration::from_millis(20);

/// Numbers the consumers of this process for the poll thread's logs: every
/// member of one topic's group has a thread of the same name, and telling
/// them apart is how one sees two members holding a partition at once.
static NEXT_MEMBER: AtomicU64 = AtomicU64::new(1);

/// Records fetched ahead of `receive` (beyond the prefetch of handed-out
/// deliveries) before fetching pauses: pausing costs a fetch round trip
/// (librdkafka drops what it had queued and fetches it again), so the
/// consumer reads ahead generously and pauses only when the application
/// falls far behind.
const READ_AHEAD_MIN: usize = 500;

/// Bytes of payload fetched ahead before fetching pauses.
const READ_AHEAD_BYTES: usize = 32 * 1024 * 1024;

/// How long the thread waits for room in a full read-ahead before it
/// does its housekeeping (commits, resumes) again; a `receive` that makes
/// room wakes it sooner.
const FULL_RECHECK: Duration = Duration::from_millis(5);

/// Records taken per round of housekeeping: after the first (which waits
/// up to [`POLL`]) the thread takes only what librdkafka has queued
/// already, so a burst never holds up housekeeping (commits, resumes, a
/// stop) for longer than one wait. A round looks at every partition and
/// reads the clock: once per record that was about 8% of the thread's
/// samples at 200k records/s.
const BURST: usize = 256;

/// Records waiting in the read-ahead that wake a waiting `receive` while
/// the poll thread is still taking more (bursts end at [`BURST`] records
/// with more queued in librdkafka). Waking the application's task per
/// burst cost a runtime park and unpark (and a sibling worker's) per 256
/// records at full speed; a burst that empties librdkafka's queue wakes it
/// at once, so a record is never held back waiting for company.
const WAKE_AT: usize = 768;

/// Most payload bytes parsed in one burst: bounds how far past its limit
/// a full read-ahead grows (a burst is handed over whole).
const BURST_BYTES: usize = 1024 * 1024;

/// A record of the current burst, parsed before the consumer's lock is
/// taken (the application's `receive` takes the same lock).
struct Fetched {
    topic: Arc<str>,
    parsed: Parsed,
}

/// The poll thread's side of [`Shared`] (what a settlement changes is in `core.rs`).
impl Shared {
    /// The most records waiting in the read-ahead before it counts as full.
    fn read_ahead_limit(&self) -> usize {
        (self.prefetch * 2).max(READ_AHEAD_MIN)
    }

    /// The read-ahead is used up: take no more records.
    fn full(&self, state: &State) -> bool {
        state.ready.len() >= self.read_ahead_limit() || state.ready_bytes >= READ_AHEAD_BYTES
    }

    /// The read-ahead is at most half full: a full one may take records
    /// again (not at once, so that a busy consumer does not flap).
    fn roomy(&self, state: &State) -> bool {
        state.ready.len() <= self.read_ahead_limit() / 2
            && state.ready_bytes <= READ_AHEAD_BYTES / 2
    }

    /// Blocks the poll thread until the read-ahead is roomy again, the
    /// consumer stops, or `at_most` passed (housekeeping is due).
    fn wait_for_room(&self, at_most: Duration) {
        let mut state = self.state.lock();
        if state.stop || self.roomy(&state) {
            return;
        }
        state.waiting_for_room = true;
        let _ = self.room.wait_for(&mut state, at_most);
        state.waiting_for_room = false;
    }

    /// Records left the read-ahead: wakes the poll thread if it waits for
    /// room and there is room now.
    pub(crate) fn taken(&self, state: &mut State) {
        if state.waiting_for_room && (state.stop || self.roomy(state)) {
            state.waiting_for_room = false;
            self.room.notify_one();
        }
    }

    /// Tells the poll thread to commit what is settled and leave the group,
    /// at once if it is waiting for records or for room. Acks are refused
    /// from here on; the thread's last round applies the queued ones
    /// before its last commit.
    pub(crate) fn stop(&self) {
        self.acks.close();
        let mut state = self.state.lock();
        state.closed = true;
        state.stop = true;
        state.ready.clear();
        state.ready_bytes = 0;
        self.taken(&mut state);
        drop(state);
        self.doorbell.ring();
    }

    /// How many waiting records wake `receive` while more are coming
    /// (see [`Shared::accept`]): half the read-ahead at most, so that a full
    /// read-ahead has always woken it.
    fn wake_at(&self) -> usize {
        WAKE_AT.min(self.read_ahead_limit() / 2)
    }

    /// Hands a burst of fetched records, in fetch order, to the read-ahead
    /// under one lock and wakes `receive` once, if `more` records are not
    /// coming at once (librdkafka's queue ran dry) or enough wait
    /// ([`Shared::wake_at`]). Returns the partitions to pause at once: a
    /// record of theirs is not due yet (it and every later record of its
    /// partition are read again when due).
    fn accept(&self, burst: &mut Vec<Fetched>, more: bool) -> Vec<Tp> {
        let mut pause = Vec::new();
        if burst.is_empty() {
            return pause;
        }
        let mut taken = 0usize;
        let mut guard = self.state.lock();
        let State {
            parts,
            ready,
            ready_bytes,
            ..
        } = &mut *guard;
        // A burst holds runs of records of one partition (librdkafka hands
        // out a fetch partition by partition): the partition's state is
        // looked up once per run, not per record (perf: the lookup was the
        // poll thread's largest item of its own at full speed).
        // Each record's topic name moves on into its `Pending`: a clone and
        // a drop per record would be two atomic operations on a count the
        // application's thread changes too.
        let mut run: Option<(Tp, &mut PartitionState)> = None;
        for Fetched { topic, parsed } in burst.drain(..) {
            let offset = parsed.offset;
            let same_run = run
                .as_ref()
                .is_some_and(|(tp, _)| tp.1 == parsed.partition && Arc::ptr_eq(&tp.0, &topic));
            if !same_run {
                let tp: Tp = (topic.clone(), parsed.partition);
                run = parts.get_mut(&tp).map(|part| (tp, part));
            }
            let Some((tp, part)) = run.as_mut() else {
                continue;
            };
            if part.rewind.is_some() || part.hold_until.is_some() {
                // Fetched before a rewind or a hold took effect: read again
                // later. (A pause for backpressure alone needs nothing: the
                // pause makes librdkafka drop what it fetched beyond this
                // record and resume after it.)
                part.rewind_to(offset);
                continue;
            }
            if let Some(nb) = parsed.not_before {
                let wait = until(nb);
                if !wait.is_zero() {
                    part.hold_until = Some(instant_after(wait));
                    part.rewind_to(offset);
                    part.paused = true;
                    pause.push(tp.clone());
                    continue;
                }
            }
            part.accept(offset);
            *ready_bytes += parsed.message.payload().len();
            ready.push_back(Pending {
                tp: (topic, tp.1),
                generation: part.generation,
                offset,
                record: Record::Fetched(parsed),
            });
            taken += 1;
        }
        // Large records fill the read-ahead's bytes before its count: they
        // wake it from a quarter of them, so a full read-ahead has always
        // woken `receive`.
        let wake = taken > 0
            && (!more || ready.len() >= self.wake_at() || *ready_bytes >= READ_AHEAD_BYTES / 4);
        drop(guard);
        if wake {
            self.readable.notify_one();
        }
        pause
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
    /// Dropped without `close` while holding deliveries: return those of
    /// these partitions first (see `Context::return_held`); the next round
    /// commits.
    return_held: Vec<Tp>,
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
    /// The acked deliveries' copies kept for `close` go to `released`, to
    /// be dropped without the lock.
    fn housekeeping(
        &self,
        commit_due: bool,
        pause_when_full: bool,
        released: &mut Vec<Kept>,
    ) -> Actions {
        let mut a = Actions::default();
        let mut state = self.state.lock();
        let state = &mut *state;
        if state.stop && !self.ordered && state.parts.values().any(|p| !p.held.is_empty()) {
            a.return_held = state.parts.keys().cloned().collect();
            return a;
        }
        if commit_due || state.stop {
            self.apply_acks(state, released);
        }
        // Full when the read-ahead is used up; room again once it is half
        // empty, so a busy consumer does not flap.
        let full = self.full(state);
        let roomy = self.roomy(state);
        a.full = full;
        let now = Instant::now();
        if state.delayed.iter().any(|(due, _)| *due <= now) {
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut state.delayed)
                .into_iter()
                .partition(|(d, _)| *d <= now);
            state.delayed = later;
            for (_, p) in due {
                state.ready_bytes += p.payload_len();
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
    /// Returns held deliveries when their partitions are revoked.
    settler: Arc<KafkaSettler>,
    /// Records of the current burst, parsed and not handed over yet. Only
    /// the poll thread uses it (the lock is never contended); it is here so
    /// that a rebalance callback can hand them over first.
    burst: Mutex<Vec<Fetched>>,
}

impl Context {
    /// Hands the records parsed so far to the read-ahead, in the assignment
    /// they were fetched in; returns the partitions to pause (a record not
    /// due yet). Called at the end of a burst and first in every rebalance
    /// callback: a record fetched before a revoke must be seen (and
    /// dropped) by the revoke, not be accepted afterwards into the
    /// partition's next assignment, whose owner reads it again anyway.
    fn accept_burst(&self) -> Vec<Tp> {
        self.accept_burst_with(false)
    }

    /// [`Context::accept_burst`] at the end of a burst: `more`, librdkafka
    /// has records queued still (the burst ended at its size limit).
    fn accept_burst_with(&self, more: bool) -> Vec<Tp> {
        let mut burst = self.burst.lock();
        if burst.is_empty() {
            return Vec::new();
        }
        self.shared.accept(&mut burst, more)
    }

    /// `revoked` goes to another member: the burst is handed over first,
    /// then the partitions are forgotten with what was fetched from them.
    /// Returns the partitions to pause and the offsets to commit before
    /// they go.
    ///
    /// Without ordered mode the deliveries still held of the revoked
    /// partitions are returned to the retry topic first (see
    /// [`KafkaSettler::return_at_revoke`]), so that the commit passes them.
    fn revoke(&self, revoked: &TopicPartitionList) -> (Vec<Tp>, Vec<(Tp, i64)>) {
        let pause = self.accept_burst();
        let tps: Vec<Tp> = {
            let state = self.shared.state.lock();
            revoked
                .elements()
                .iter()
                .map(|e| state.tp(e.topic(), e.partition()))
                .collect()
        };
        self.return_held(&tps);
        let mut state = self.shared.state.lock();
        let commit = self.shared.revoke(&mut state, tps);
        (pause, commit)
    }

    /// Without ordered mode, returns the deliveries still held of `tps` to
    /// the retry topic and settles them (see
    /// [`KafkaSettler::return_at_revoke`]): before a revoke, and before a
    /// consumer dropped without `close` leaves (`close` returns them itself).
    fn return_held(&self, tps: &[Tp]) {
        if self.shared.ordered {
            return;
        }
        let held = {
            let mut state = self.shared.state.lock();
            self.shared.take_held_at_revoke(&mut state, tps)
        };
        self.settler.return_at_revoke(held);
    }
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
        let (pause, commit) = match rebalance {
            Rebalance::Revoke(revoked) => self.revoke(revoked),
            _ => (self.accept_burst(), Vec::new()),
        };
        pause_for_retry(consumer, &pause);
        if !commit.is_empty() {
            tracing::debug!(group = %self.shared.group, ?commit, "committing before revoke");
            if let Err(e) = consumer.commit(&tpl_offsets(&commit), CommitMode::Sync) {
                tracing::warn!(error = %e, "committing settled offsets before a revoke failed; they will be redelivered");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        hand_over(consumer);
        match rebalance {
            Rebalance::Assign(assigned) => {
                let mut state = self.shared.state.lock();
                for e in assigned.elements() {
                    state.assign((Arc::from(e.topic()), e.partition()));
                }
                tracing::debug!(
                    group = %self.shared.group,
                    partitions = ?assigned.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect::<Vec<_>>(),
                    "partitions assigned"
                );
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

fn poll_loop(consumer: BaseConsumer<Context>, shared: Arc<Shared>, member: u64) {
    // Everything logged on this thread (rebalances, revokes, commits) says
    // which member it is.
    let _member = tracing::debug_span!("kafka consumer", member).entered();
    let mut last_commit = Instant::now();
    let mut topics = Vec::new();
    let mut chunks = PayloadChunks::new(PAYLOAD_CHUNK);
    // Since when the read-ahead has been full without a pause.
    let mut full_since: Option<Instant> = None;
    let mut released = Vec::new();
    loop {
        let commit_due = last_commit.elapsed() >= shared.commit_interval;
        let pause_when_full = full_since.is_some_and(|t| t.elapsed() >= shared.pause_after);
        let a = shared.housekeeping(commit_due, pause_when_full, &mut released);
        if !a.return_held.is_empty() {
            // Dropped without `close`: what it still holds goes back before
            // the last commit, as at a revoke.
            consumer.context().return_held(&a.return_held);
            continue;
        }
        released.clear();
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
            shared.wait_for_room(FULL_RECHECK);
            continue;
        }
        take_burst(&consumer, &shared, &mut topics, &mut chunks);
    }
    // Leave the group; the revoke this triggers finds nothing left to commit.
    shared.state.lock().forget_all();
    consumer.unsubscribe();
    drop(consumer);
    tracing::debug!(group = %shared.group, source = %shared.source, "consumer left the group");
}

/// Takes up to [`BURST`] records (at most [`BURST_BYTES`] of payload) of
/// what librdkafka has queued; if it had nothing, waits up to [`POLL`] for
/// its doorbell ([`Doorbell`](crate::core::Doorbell)) afterwards. Records
/// are parsed as they come into the context's burst, then handed over
/// together ([`hand_over`]). `topics` keeps the names seen in this burst,
/// so its records share them.
fn take_burst(
    consumer: &BaseConsumer<Context>,
    shared: &Shared,
    topics: &mut Vec<Arc<str>>,
    chunks: &mut PayloadChunks,
) {
    let mut bytes = 0usize;
    let mut polled = 0usize;
    let mut failed = None;
    // The burst ended at its size limit, not on an empty queue.
    let mut more = true;
    // Topic names are shared within a burst only (see `Shared::accept`).
    topics.clear();
    for _ in 0..BURST {
        // A poll may run a rebalance callback; it hands the records parsed
        // so far over first (see `hand_over`), so the burst is not borrowed
        // across the poll.
        match consumer.poll(Duration::ZERO) {
            None => {
                more = false;
                break;
            }
            Some(Ok(msg)) => {
                polled += 1;
                let topic = interned(topics, msg.topic());
                let parsed = parse(&msg, *topic == *shared.retry_topic, chunks);
                bytes = bytes.saturating_add(parsed.message.payload().len());
                consumer
                    .context()
                    .burst
                    .lock()
                    .push(Fetched { topic, parsed });
                if bytes >= BURST_BYTES {
                    break;
                }
            }
            Some(Err(e)) => {
                failed = Some(e);
                more = false;
                break;
            }
        }
    }
    let pause = consumer.context().accept_burst_with(more);
    pause_for_retry(consumer, &pause);
    if polled == 0 && failed.is_none() {
        shared.doorbell.wait(POLL);
    }
    if let Some(e) = failed {
        let e = convert(e, "consume", Some(&shared.source));
        tracing::debug!(error = %e, "kafka consumer poll error");
        if matches!(e.kind(), ErrorKind::Permission) {
            shared.state.lock().error = Some(e);
            shared.readable.notify_one();
        }
    }
}

/// Hands the records parsed so far to the read-ahead (see
/// [`Context::accept_burst`]) and pauses what is not due yet.
fn hand_over(consumer: &BaseConsumer<Context>) {
    let pause = consumer.context().accept_burst();
    pause_for_retry(consumer, &pause);
}

/// Pauses partitions whose next record is not due yet.
fn pause_for_retry(consumer: &BaseConsumer<Context>, partitions: &[Tp]) {
    if partitions.is_empty() {
        return;
    }
    if let Err(e) = consumer.pause(&tpl(partitions)) {
        tracing::warn!(error = %e, "pausing a partition until its retry is due failed");
    }
}

/// The copy of topic name `name` the records of a burst share (a consumer
/// reads one or two topics).
fn interned(topics: &mut Vec<Arc<str>>, name: &str) -> Arc<str> {
    if let Some(t) = topics.iter().find(|t| ***t == *name) {
        return t.clone();
    }
    let t: Arc<str> = Arc::from(name);
    if topics.len() < 16 {
        topics.push(t.clone());
    }
    t
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
    thread: Option<PollThread>,
    /// Buffers of [`KafkaConsumer::hand_out`], kept between calls.
    taken: Vec<Taken>,
    held: Vec<(Held, Kept)>,
    single: Vec<Delivery>,
    released: Vec<Kept>,
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
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            Error::new(
                ErrorKind::Config,
                "the Kafka consumer needs a Tokio runtime",
            )
            .with_backend(BACKEND)
            .with_source(e)
        })?;
        let settler = Arc::new(KafkaSettler::new(shared.clone(), sender.clone(), runtime));
        let mut consumer: BaseConsumer<Context> = config
            .consumer_config(&group)
            .create_with_context(Context {
                shared: shared.clone(),
                health: sender.health.clone(),
                settler: settler.clone(),
                burst: Mutex::new(Vec::with_capacity(BURST)),
            })
            .map_err(|e| convert_create(e, &config.secrets(), Some(&source)))?;
        let bell = shared.clone();
        consumer.set_nonempty_callback(move || bell.doorbell.ring());
        consumer
            .subscribe(&[source.as_str(), retry_topic.as_str()])
            .map_err(|e| convert(e, "subscribe", Some(&source)))?;
        let thread = {
            let shared = shared.clone();
            let member = NEXT_MEMBER.fetch_add(1, Ordering::Relaxed);
            let name = format!("mq-kafka-{}", source.chars().take(20).collect::<String>());
            PollThread::spawn(name, move || poll_loop(consumer, shared, member)).map_err(|e| {
                Error::new(ErrorKind::Broker, "cannot start the consumer thread")
                    .with_backend(BACKEND)
                    .with_source(e)
            })?
        };
        let health = sender.health.clone();
        Ok(KafkaConsumer {
            shared,
            health,
            settler,
            thread: Some(thread),
            taken: Vec::new(),
            held: Vec::new(),
            single: Vec::with_capacity(1),
            released: Vec::new(),
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

    /// Hands out up to `n` waiting records into `batch`; returns how many.
    /// They are taken under the consumer's lock, made into deliveries
    /// without it, and what `close` needs of them is kept under it again
    /// (see [`State::take_next`]). `report`: an error waiting for
    /// `receive` comes first.
    fn hand_out(&mut self, n: usize, batch: &mut Vec<Delivery>, report: bool) -> Result<usize> {
        let mut taken = std::mem::take(&mut self.taken);
        {
            let mut state = self.shared.state.lock();
            self.shared.apply_acks(&mut state, &mut self.released);
            if report {
                if let Some(e) = state.error.take() {
                    return Err(e);
                }
            }
            while taken.len() < n {
                match state.take_next() {
                    Some(t) => taken.push(t),
                    None => break,
                }
            }
            if !taken.is_empty() {
                self.shared.taken(&mut state);
            }
        }
        // Dropped without the lock.
        self.released.clear();
        let took = taken.len();
        if took == 0 {
            self.taken = taken;
            return Ok(0);
        }
        let mut held = std::mem::take(&mut self.held);
        batch.reserve(took);
        for t in taken.drain(..) {
            let key = t.key();
            let received = t.into_received(&self.shared.source, &self.shared.group);
            held.push((key, Kept::of(&received)));
            batch.push(Delivery::new(received, self.settler.clone()));
        }
        {
            let mut state = self.shared.state.lock();
            for (key, kept) in held.drain(..) {
                state.hold(key, kept);
            }
        }
        self.shared.slots.take(took);
        self.taken = taken;
        self.held = held;
        Ok(took)
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
            shared.slots.wait_room().await;
            let notified = shared.readable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut single = std::mem::take(&mut self.single);
            let took = self.hand_out(1, &mut single, true);
            let delivery = single.pop();
            self.single = single;
            if let Some(d) = delivery {
                return Ok(d);
            }
            took?;
            notified.await;
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
        // The rest under one lock, as many as the prefetch has room for.
        // An error stays queued for the next call: this one has deliveries.
        let want = self.shared.slots.room_now().min(max - batch.len());
        if want > 0 {
            self.hand_out(want, &mut batch, false)?;
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
        let mut state = self.shared.state.lock();
        // An ack settles a record whose republish had failed.
        self.shared.apply_acks(&mut state, &mut Vec::new());
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
        self.shared.acks.close();
        let returned: Vec<Received> = {
            let mut state = self.shared.state.lock();
            // Acked deliveries are not returned.
            self.shared.apply_acks(&mut state, &mut Vec::new());
            state.closed = true;
            state.ready.clear();
            state.ready_bytes = 0;
            state.delayed.clear();
            self.shared.take_held(&mut state)
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
        self.shared.stop();
        if let Some(thread) = self.thread.take() {
            match thread.wait(self.close_timeout).await {
                Ending::Left => {}
                Ending::Panicked => tracing::warn!("the consumer thread panicked"),
                Ending::StillRunning => tracing::warn!(
                    "the consumer did not leave its group in time; its thread is left behind"
                ),
            }
        }
        Ok(())
    }
}

/// The consumer's poll thread, and word of its end.
struct PollThread {
    /// Dropped, not joined: the thread is detached once nobody waits.
    _handle: JoinHandle<()>,
    /// Sent when the thread's work returned; dropped unsent if it panicked.
    left: tokio::sync::oneshot::Receiver<()>,
}

/// How waiting for a [`PollThread`] ended.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    Left,
    Panicked,
    StillRunning,
}

impl PollThread {
    fn spawn(name: String, work: impl FnOnce() + Send + 'static) -> std::io::Result<Self> {
        let (done, left) = tokio::sync::oneshot::channel();
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            work();
            let _ = done.send(());
        })?;
        Ok(PollThread {
            _handle: handle,
            left,
        })
    }

    /// Waits up to `at_most` for the thread to end. No task of the runtime
    /// blocks on it: a thread stuck inside librdkafka is left behind,
    /// detached. (Seen under load against tansu: dropping the consumer at
    /// the end of the poll loop ran a last rebalance callback whose
    /// `rd_kafka_assign` waited for ever. A blocking task that joined the
    /// thread then held up the runtime's shutdown, and so the process's exit.)
    async fn wait(self, at_most: Duration) -> Ending {
        match tokio::time::timeout(at_most, self.left).await {
            Ok(Ok(())) => Ending::Left,
            Ok(Err(_)) => Ending::Panicked,
            Err(_) => Ending::StillRunning,
        }
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        // Not closed: stop the thread. It returns the deliveries still held
        // to the retry topic (unordered mode; see `Context::return_held`),
        // commits what is settled and leaves the group, without holding up
        // this drop.
        self.shared.stop();
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{OwnedHeaders, OwnedMessage};
    use rdkafka::Timestamp;

    use super::*;

    /// A poll thread stuck for good (as inside librdkafka) is given up on
    /// after the timeout, and the runtime shuts down at once instead of
    /// waiting for it; a thread that ends or panics is told apart.
    #[test]
    fn a_stuck_poll_thread_holds_up_neither_close_nor_the_runtime() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        // Lets the stuck thread go after 3 s, so that a wait that does block
        // the runtime makes this test fail instead of hang.
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(3));
            drop(release);
        });
        let endings = rt.block_on(async {
            let stuck = PollThread::spawn("stuck".into(), move || {
                let _ = stuck.recv();
            })
            .expect("spawn");
            let ends = PollThread::spawn("ends".into(), || {}).expect("spawn");
            let panics =
                PollThread::spawn("panics".into(), || panic!("deliberate")).expect("spawn");
            let started = Instant::now();
            let stuck = stuck.wait(Duration::from_millis(200)).await;
            assert!(started.elapsed() < Duration::from_secs(2));
            (
                stuck,
                ends.wait(Duration::from_secs(5)).await,
                panics.wait(Duration::from_secs(5)).await,
            )
        });
        assert_eq!(
            endings,
            (Ending::StillRunning, Ending::Left, Ending::Panicked)
        );
        let shutdown = Instant::now();
        drop(rt);
        assert!(
            shutdown.elapsed() < Duration::from_secs(2),
            "the runtime waited {:?} for the stuck thread",
            shutdown.elapsed()
        );
        let _ = releaser.join();
    }

    /// `close` (and a drop) cut the poll thread's wait for records short:
    /// it used to notice a stop only after a whole poll of librdkafka.
    #[test]
    fn a_stop_wakes_the_poll_thread_waiting_for_records() {
        let ctx = context();
        let shared = ctx.shared.clone();
        let waiter = std::thread::spawn(move || {
            let started = Instant::now();
            shared.doorbell.wait(Duration::from_secs(30));
            started.elapsed()
        });
        std::thread::sleep(Duration::from_millis(50));
        ctx.shared.stop();
        let waited = waiter.join().expect("waiter");
        assert!(
            waited < Duration::from_secs(10),
            "the poll thread waited {waited:?} after the stop"
        );
        assert!(ctx.shared.state.lock().stop);
    }

    /// A ring before the wait is not lost (librdkafka may ring while the
    /// thread is still handing over its last burst), and counts once.
    #[test]
    fn the_doorbell_keeps_a_ring_until_the_next_wait() {
        let bell = crate::core::Doorbell::default();
        bell.ring();
        let started = Instant::now();
        bell.wait(Duration::from_secs(30));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the ring was lost"
        );
        let started = Instant::now();
        bell.wait(Duration::from_millis(50));
        assert!(
            started.elapsed() >= Duration::from_millis(50),
            "a ring woke two waits"
        );
    }

    /// A consumer's context with no consumer and no broker (its producer
    /// never connects unless a test sends).
    fn context() -> Context {
        static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
        let runtime = RUNTIME.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime")
        });
        let config = KafkaConfig::from_url("kafka://127.0.0.1:9092").expect("url");
        let backend = crate::KafkaBackend::new(config.clone()).expect("backend");
        let shared = Arc::new(Shared::new(
            &config,
            "t".into(),
            "g".into(),
            "t-retry".into(),
            "t-dlq".into(),
            10,
        ));
        let settler = Arc::new(KafkaSettler::new(
            shared.clone(),
            backend.sender.clone(),
            runtime.handle().clone(),
        ));
        Context {
            shared,
            health: Arc::new(KafkaHealth::default()),
            settler,
            burst: Mutex::new(Vec::new()),
        }
    }

    /// A record of partition 0 of `t` at `offset`, parsed into the burst.
    fn fetch(ctx: &Context, offset: i64) {
        fetch_from(ctx, &"t".into(), 0, offset);
    }

    /// A record of `topic`'s `partition` at `offset`, parsed into the burst
    /// with the topic name the burst shares.
    fn fetch_from(ctx: &Context, topic: &Arc<str>, partition: i32, offset: i64) {
        fetch_sized(ctx, topic, partition, offset, 1);
    }

    /// [`fetch_from`] with a payload of `size` bytes.
    fn fetch_sized(ctx: &Context, topic: &Arc<str>, partition: i32, offset: i64, size: usize) {
        let msg = OwnedMessage::new(
            Some(vec![b'p'; size]),
            None,
            topic.to_string(),
            Timestamp::NotAvailable,
            partition,
            offset,
            Some(OwnedHeaders::new()),
        );
        let parsed = parse(&msg, false, &mut PayloadChunks::new(PAYLOAD_CHUNK));
        ctx.burst.lock().push(Fetched {
            topic: topic.clone(),
            parsed,
        });
    }

    fn ready(ctx: &Context) -> Vec<(u64, i64)> {
        let state = ctx.shared.state.lock();
        state
            .ready
            .iter()
            .map(|p| (p.generation, p.offset))
            .collect()
    }

    /// Whether `receive` was woken since the last look (a stored permit).
    fn woken(ctx: &Context) -> bool {
        use futures::FutureExt;
        ctx.shared.readable.notified().now_or_never().is_some()
    }

    /// While librdkafka has more records queued, a waiting `receive` is
    /// woken once enough records wait (a quarter of the read-ahead's bytes
    /// for large records), not per burst; a burst that empties librdkafka's
    /// queue wakes it at once, however small.
    #[test]
    fn receive_is_woken_per_batch_while_records_keep_coming() {
        let ctx = context();
        let topic: Arc<str> = "t".into();
        ctx.shared.state.lock().assign((topic.clone(), 0));
        let wake_at = ctx.shared.wake_at();
        assert_eq!(wake_at, 250, "half the read-ahead of a prefetch of 10");
        for o in 0..10 {
            fetch(&ctx, o);
        }
        ctx.accept_burst_with(true);
        assert!(!woken(&ctx), "10 records and more coming: not yet");
        for o in 10..wake_at as i64 {
            fetch(&ctx, o);
        }
        ctx.accept_burst_with(true);
        assert!(woken(&ctx), "{wake_at} records wait");
        fetch(&ctx, wake_at as i64);
        ctx.accept_burst_with(false);
        assert!(woken(&ctx), "librdkafka's queue ran dry: at once");

        let ctx = context();
        ctx.shared.state.lock().assign((topic.clone(), 0));
        fetch_sized(&ctx, &topic, 0, 0, READ_AHEAD_BYTES / 8);
        ctx.accept_burst_with(true);
        assert!(!woken(&ctx), "an eighth of the bytes: not yet");
        fetch_sized(&ctx, &topic, 0, 1, READ_AHEAD_BYTES / 8);
        ctx.accept_burst_with(true);
        assert!(woken(&ctx), "a quarter of the read-ahead's bytes");
    }

    #[test]
    fn a_burst_is_accepted_in_the_assignment_it_was_fetched_in() {
        let ctx = context();
        let tp: Tp = ("t".into(), 0);
        ctx.shared.state.lock().assign(tp.clone());
        fetch(&ctx, 7);
        assert!(ctx.accept_burst().is_empty());
        assert_eq!(ready(&ctx), [(1, 7)]);
        assert!(ctx.burst.lock().is_empty());
    }

    /// A burst of runs from several partitions (its state looked up once
    /// per run): every record lands in its own partition's assignment, a
    /// partition being rewound drops its records (to be read again), and
    /// a record of a partition not assigned is dropped.
    #[test]
    fn a_burst_of_several_partitions_is_accepted_run_by_run() {
        let ctx = context();
        let topic: Arc<str> = "t".into();
        let (p0, p1, p2): (Tp, Tp, Tp) =
            ((topic.clone(), 0), (topic.clone(), 1), (topic.clone(), 2));
        {
            let mut state = ctx.shared.state.lock();
            state.assign(p0.clone());
            state.assign(p1.clone());
            state.assign(p2.clone());
            state.parts.get_mut(&p2).expect("assigned").rewind_to(4);
        }
        for (p, o) in [(0, 1), (0, 2), (1, 5), (2, 4), (3, 9), (0, 3), (1, 6)] {
            fetch_from(&ctx, &topic, p, o);
        }
        assert!(ctx.accept_burst().is_empty());
        let state = ctx.shared.state.lock();
        let got: Vec<(i32, u64, i64)> = state
            .ready
            .iter()
            .map(|p| (p.tp.1, p.generation, p.offset))
            .collect();
        let (g0, g1) = (state.parts[&p0].generation, state.parts[&p1].generation);
        assert_eq!(
            got,
            [(0, g0, 1), (0, g0, 2), (1, g1, 5), (0, g0, 3), (1, g1, 6)]
        );
        assert_eq!(state.ready_bytes, 5);
        // The rewound partition will fetch 4 again; nothing of it is tracked.
        assert_eq!(state.parts[&p2].rewind, Some(4));
        assert_eq!(state.parts[&p2].fetched_up_to(), None);
        assert_eq!(state.parts[&p0].fetched_up_to(), Some(4));
    }

    /// A poll that runs a rebalance callback in the middle of a burst: the
    /// records parsed before it belong to the revoked assignment. They must
    /// not be handed out in the partition's next assignment (the next owner
    /// reads them again from the committed offset; accepted late, they were
    /// delivered twice: CI's `rebalance_while_held` on Kafka in Docker).
    #[test]
    fn a_revoke_in_the_middle_of_a_burst_drops_the_records_fetched_before_it() {
        let ctx = context();
        let tp: Tp = ("t".into(), 0);
        ctx.shared.state.lock().assign(tp.clone());
        fetch(&ctx, 7);
        fetch(&ctx, 8);
        let mut revoked = TopicPartitionList::new();
        revoked.add_partition("t", 0);
        let (pause, commit) = ctx.revoke(&revoked);
        assert!(pause.is_empty());
        // Nothing was settled: a commit, if any, leaves 7 to be read again.
        assert!(commit.iter().all(|(_, o)| *o <= 7), "{commit:?}");
        assert!(ctx.burst.lock().is_empty());
        // Assigned again within the same burst, then the burst ends.
        ctx.shared.state.lock().assign(tp.clone());
        assert!(ctx.accept_burst().is_empty());
        assert!(ready(&ctx).is_empty(), "{:?}", ready(&ctx));
        // What is fetched in the new assignment is handed out in it.
        fetch(&ctx, 7);
        ctx.accept_burst();
        assert_eq!(ready(&ctx), [(2, 7)]);
    }
}
