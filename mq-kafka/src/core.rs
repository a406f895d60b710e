//! The state the rest of the crate shares, in two parts:
//!
//! - the connection, [`Sender`]: one librdkafka producer per backend, with
//!   the topic cache and the health its clients report. Every
//!   [`KafkaProducer`](crate::KafkaProducer) handle, every consumer's
//!   settler (retry and dead-letter copies) and the backend send through it.
//!   `send` hands the record to librdkafka (which batches and pipelines)
//!   and resolves on its delivery report.
//! - one consumer's state, [`Shared`]: what its poll thread
//!   (`consumer.rs`), the consumer handle and its settler (`settle.rs`)
//!   share: the partitions assigned and their offsets (`offsets.rs`), the
//!   ready queue, the deliveries handed out, and the state changes a
//!   settlement makes.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mq_core::backend::time::instant_after;
use mq_core::backend::Prefetch;
use mq_core::{Error, ErrorKind, Message, Received, Result, Sending};
use parking_lot::{Condvar, Mutex, RwLock};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use rustc_hash::{FxHashMap, FxHashSet};
use tokio::sync::Notify;

use crate::acks::Acks;
use crate::codec::{record_headers, Parsed};
use crate::config::KafkaConfig;
use crate::error::{convert, convert_create};
use crate::health::{HealthContext, KafkaHealth};
use crate::metadata::KafkaMetadata;
use crate::offsets::{Kept, PartitionState};
use crate::topology::Topology;

/// The connection's librdkafka producer and what it needs to send.
pub(crate) struct Sender {
    /// Replaced when librdkafka reports a fatal error (an idempotent
    /// producer fenced after the broker lost its producer state): such a
    /// producer never sends again.
    current: RwLock<Current>,
    /// The producer replaced last, kept alive so that the records still in
    /// flight through it get their delivery reports (dropping a producer
    /// purges them); dropped at the next replacement.
    retired: Mutex<Option<FutureProducer<HealthContext>>>,
    pub(crate) topology: Arc<Topology>,
    /// What this backend's librdkafka clients reported lately.
    pub(crate) health: Arc<KafkaHealth>,
    pub(crate) config: Arc<KafkaConfig>,
}

/// The producer in use and how many were replaced before it: a failed
/// send names the producer it went through by that number, so a failure
/// replaces that producer only, not a fresh one another send put in.
struct Current {
    producer: FutureProducer<HealthContext>,
    generation: u64,
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("brokers", &self.config.brokers)
            .finish()
    }
}

impl Sender {
    pub(crate) fn new(
        config: Arc<KafkaConfig>,
        topology: Arc<Topology>,
        health: Arc<KafkaHealth>,
    ) -> Result<Self> {
        let producer = Self::create(&config, &health)?;
        Ok(Sender {
            current: RwLock::new(Current {
                producer,
                generation: 0,
            }),
            retired: Mutex::new(None),
            topology,
            health,
            config,
        })
    }

    fn create(
        config: &KafkaConfig,
        health: &Arc<KafkaHealth>,
    ) -> Result<FutureProducer<HealthContext>> {
        config
            .producer_config()
            .create_with_context(HealthContext::new(health.clone()))
            .map_err(|e| convert_create(e, &config.secrets(), None))
    }

    /// After a failed send: a producer in a fatal state, or one that could
    /// not deliver within `send_timeout`, is replaced, so the next send
    /// works again (the failed one is reported, and retryable). A broker
    /// that lost its state in a restart fences the idempotent producer or
    /// answers `UnknownProducerId` for good; a fresh producer gets a new id.
    /// `generation` names the producer the send went through.
    fn recover(&self, generation: u64, error: &Error) {
        let reason = {
            let current = self.current.read();
            if current.generation != generation {
                return; // Already replaced by another send.
            }
            match current.producer.client().fatal_error() {
                Some((code, reason)) => format!("fatal error {code}: {reason}"),
                None if error.kind() == ErrorKind::Timeout => "a send timed out".to_owned(),
                None => return,
            }
        };
        let mut current = self.current.write();
        if current.generation != generation {
            return;
        }
        match Self::create(&self.config, &self.health) {
            Ok(fresh) => {
                tracing::warn!(reason, "replaced the Kafka producer");
                let failed = std::mem::replace(&mut current.producer, fresh);
                current.generation += 1;
                drop(current);
                *self.retired.lock() = Some(failed);
            }
            Err(e) => tracing::warn!(error = %e, "replacing the failed Kafka producer failed"),
        }
    }

    /// Hands `message` to librdkafka without waiting when its topic is
    /// known and librdkafka's queue has room (the common case); `None`
    /// when the send must wait (a topic not looked up yet, a full queue):
    /// [`send`](Sender::send) does that. The future resolves on the
    /// delivery report. No clock read, no retry loop and no producer clone
    /// per record: this is every send of a busy producer.
    pub(crate) fn try_send(self: &Arc<Self>, topic: &str, message: &Message) -> Option<Sending> {
        if !self.topology.is_known(topic) {
            return None;
        }
        let (generation, queued) = {
            let current = self.current.read();
            (
                current.generation,
                current.producer.send_result(record(topic, message)),
            )
        };
        match queued {
            Ok(report) => {
                let sender = self.clone();
                Some(Sending::new(async move {
                    match report.await {
                        Ok(report) => sender.reported(generation, report),
                        // The producer went away without a report (two
                        // replacements while this record was in flight).
                        Err(_) => Err(convert(KafkaError::Canceled, "send", None)),
                    }
                }))
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => None,
            Err((e, _)) => {
                let e = convert(e, "send", Some(topic));
                self.failed(generation, topic, &e);
                Some(Sending::new(std::future::ready(Err(e))))
            }
        }
    }

    /// Sends `message` to `topic`, waiting (up to `send_timeout`) while
    /// librdkafka's queue is full. The destination, size and delay checks
    /// ran before, once, in core (`mq_core::checks`, from `capabilities()`);
    /// settlement copies are cut to fit by `republish::fit_to_size`.
    /// `create` makes the topic even with auto-creation off (mq's own retry
    /// and dead-letter topics).
    pub(crate) async fn send(&self, topic: &str, message: &Message, create: bool) -> Result<()> {
        self.topology.ensure(topic, create).await?;
        let (producer, generation) = {
            let current = self.current.read();
            (current.producer.clone(), current.generation)
        };
        let report = producer
            .send(
                record(topic, message),
                Timeout::After(self.config.send_timeout),
            )
            .await;
        self.reported(generation, report)
    }

    /// The outcome of a record's delivery report.
    fn reported(&self, generation: u64, report: OwnedDeliveryResult) -> Result<()> {
        match report {
            Ok(_) => {
                self.health.up();
                Ok(())
            }
            Err((e, record)) => {
                let e = convert(e, "send", Some(record.topic()));
                self.failed(generation, record.topic(), &e);
                Err(e)
            }
        }
    }

    /// After a failed send: replace a broken producer, and look the topic
    /// up again if it may be gone.
    fn failed(&self, generation: u64, topic: &str, e: &Error) {
        self.recover(generation, e);
        if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Timeout) {
            self.topology.forget(topic);
        }
    }

    pub(crate) async fn flush(&self) -> Result<()> {
        let producers = {
            let current = self.current.read();
            let retired = self.retired.lock().clone();
            [Some(current.producer.clone()), retired]
        };
        let timeout = self.config.send_timeout;
        tokio::task::spawn_blocking(move || {
            producers
                .iter()
                .flatten()
                .try_for_each(|p| p.flush(Timeout::After(timeout)))
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Broker, format!("flush task failed: {e}")))?
        .map_err(|e| convert(e, "flush", None))
    }
}

/// The record of `message` for `topic`.
fn record<'a>(topic: &'a str, message: &'a Message) -> FutureRecord<'a, str, [u8]> {
    let record = FutureRecord::to(topic)
        .payload(message.payload().as_ref())
        .headers(record_headers(message));
    match message.key() {
        Some(k) => record.key(k),
        None => record,
    }
}

/// A topic and partition.
pub(crate) type Tp = (Arc<str>, i32);

/// A delivery handed out: the generation of its partition's assignment it
/// was fetched in, and its offset. A generation names one assignment of
/// one partition (they count the assignments of every partition, see
/// [`State::assign`]): it keeps an old delivery of offset `o` (fetched
/// before a revoke) apart from the copy of `o` fetched again after the
/// partition came back to this member, and it names the partition without
/// its topic's name. A key holding the name cost a reference count up and
/// down per record at hand-out and again per ack, on a count the poll
/// thread changes too (perf: the hottest instructions of the
/// application's thread were these decrements).
pub(crate) type Held = (u64, i64);

/// A record waiting to be handed out.
pub(crate) struct Pending {
    pub(crate) tp: Tp,
    pub(crate) generation: u64,
    pub(crate) offset: i64,
    pub(crate) record: Record,
}

/// What a waiting record holds.
pub(crate) enum Record {
    /// As the poll thread parsed it: made into a delivery when handed out,
    /// on the application's thread. The poll thread is the busier of the
    /// two (perf at full speed: the application's thread waited for it),
    /// and a delivery's allocations are then made and freed on one thread
    /// (an allocation freed on another thread costs the allocating thread
    /// a collection pass and fresh pages).
    Fetched(Parsed),
    /// A delivery given back after its republish failed or was cancelled.
    Delivery(Received),
}

impl Pending {
    /// Payload bytes, counted against the read-ahead.
    pub(crate) fn payload_len(&self) -> usize {
        match &self.record {
            Record::Fetched(parsed) => parsed.message.payload().len(),
            Record::Delivery(received) => received.payload().len(),
        }
    }
}

/// A waiting record taken from the ready queue, to be made into its
/// delivery outside the consumer's lock (see [`State::take_next`]).
pub(crate) struct Taken {
    pending: Pending,
    /// Deliveries of its offset the broker cannot count.
    extra: u32,
}

impl Taken {
    /// Its assignment generation and offset.
    pub(crate) fn key(&self) -> Held {
        (self.pending.generation, self.pending.offset)
    }

    /// Its delivery: made now if it was fetched (on the application's
    /// thread, where it is freed too).
    pub(crate) fn into_received(self, source: &Arc<str>, group: &Arc<str>) -> Received {
        let Pending {
            tp,
            generation,
            record,
            ..
        } = self.pending;
        match record {
            Record::Delivery(received) => received,
            Record::Fetched(parsed) => {
                parsed.into_received(tp.0, source, Some(group), generation, self.extra)
            }
        }
    }
}

/// A record whose republish failed.
pub(crate) struct Failing {
    failures: u32,
    pub(crate) error: String,
    pub(crate) at: SystemTime,
}

/// State shared by the poll thread, the consumer and the settler.
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    /// Wakes `receive` when a record is ready.
    pub(crate) readable: Notify,
    /// Wakes `close` when the last republish in flight finished.
    pub(crate) idle: Notify,
    /// Wakes the poll thread when its full read-ahead is half empty again
    /// (or the consumer stops), so it takes more records at once instead of
    /// after a fixed sleep: the application drains a full read-ahead of
    /// local records in a few milliseconds.
    pub(crate) room: Condvar,
    /// Wakes the poll thread from its wait for records (see [`Doorbell`]).
    pub(crate) doorbell: Doorbell,
    /// Deliveries the application holds unsettled, against its prefetch.
    pub(crate) slots: Prefetch,
    /// Acks not applied to `state` yet (see [`Shared::apply_acks`]).
    pub(crate) acks: Acks<Held>,
    pub(crate) prefetch: usize,
    /// Shared by every delivery (no allocation per record).
    pub(crate) source: Arc<str>,
    pub(crate) retry_topic: String,
    /// Where dead letters go (the consumer's options).
    pub(crate) dead_letter: String,
    pub(crate) group: Arc<str>,
    pub(crate) ordered: bool,
    pub(crate) commit_interval: Duration,
    /// How long the read-ahead may stay full before the partitions pause.
    pub(crate) pause_after: Duration,
}

/// What the poll thread waits on while librdkafka's queue is empty:
/// librdkafka rings it when its queue stops being empty (a record, a
/// rebalance, a commit result), `close` when the consumer stops. A
/// blocking librdkafka poll could not be cut short, so a `close` used to
/// wait up to a whole poll for the thread to notice it; the thread now
/// polls without waiting and waits here instead.
#[derive(Default)]
pub(crate) struct Doorbell {
    rung: Mutex<bool>,
    ringing: Condvar,
}

impl Doorbell {
    /// Wakes the waiting poll thread, or the next wait if none waits now.
    /// Called by librdkafka's threads with its queue locked: takes only
    /// this bell's own lock.
    pub(crate) fn ring(&self) {
        *self.rung.lock() = true;
        self.ringing.notify_one();
    }

    /// Waits until rung (since the last wait) or `at_most` passed.
    pub(crate) fn wait(&self, at_most: Duration) {
        let mut rung = self.rung.lock();
        if !*rung {
            let _ = self.ringing.wait_for(&mut rung, at_most);
        }
        *rung = false;
    }
}

#[derive(Default)]
pub(crate) struct State {
    /// `close` started: settling fails with `Closed`.
    pub(crate) closed: bool,
    /// The poll thread must commit and leave the group.
    pub(crate) stop: bool,
    pub(crate) ready: VecDeque<Pending>,
    /// Payload bytes in `ready`.
    pub(crate) ready_bytes: usize,
    pub(crate) parts: FxHashMap<Tp, PartitionState>,
    /// The partition of each assignment in `parts`, by its generation.
    generations: FxHashMap<u64, Tp>,
    /// Partitions revoked while we had them paused. librdkafka keeps an
    /// application's pause across a revoke and a later assignment of the
    /// same partition to this member (only its own pauses are reset), so
    /// such a partition comes back paused and must be resumed by us.
    paused_at_revoke: FxHashSet<Tp>,
    /// The topic names of `parts` (the source and its retry topic), shared
    /// by every key that names them: no allocation per record or settle.
    topics: Vec<Arc<str>>,
    next_generation: u64,
    /// Republishes (nack, dead letter) in flight.
    pub(crate) inflight: usize,
    /// Ordered mode: redeliveries in place per record, added to its attempt.
    pub(crate) redeliveries: FxHashMap<Held, u32>,
    /// Records whose republish (retry or dead-letter copy) failed and that
    /// are not settled yet: how often, and the last error (for `health`).
    pub(crate) failing: FxHashMap<Held, Failing>,
    /// Records given back after a failed republish, delivered again (alone,
    /// from memory) when due.
    pub(crate) delayed: Vec<(Instant, Pending)>,
    /// An error `receive` must report (bad credentials, fatal consumer error).
    pub(crate) error: Option<Error>,
    /// The poll thread waits on [`Shared::room`].
    pub(crate) waiting_for_room: bool,
    /// The buffer [`Shared::apply_acks`] takes the queued acks into, kept
    /// between rounds (swapped with the queue's, never reallocated).
    acked: Vec<Held>,
}

impl State {
    /// The key of `topic`'s `partition`, with the topic's shared name.
    pub(crate) fn tp(&self, topic: &str, partition: i32) -> Tp {
        let name = match self.topics.iter().find(|t| ***t == *topic) {
            Some(t) => t.clone(),
            None => Arc::from(topic),
        };
        (name, partition)
    }

    /// `tp` was assigned to this member: a new generation of it starts
    /// (unless it is still assigned). It starts paused if librdkafka still
    /// has it paused from before a revoke; the poll thread resumes it when
    /// there is room, as any partition paused for backpressure.
    pub(crate) fn assign(&mut self, tp: Tp) {
        if !self.topics.contains(&tp.0) {
            self.topics.push(tp.0.clone());
        }
        if !self.parts.contains_key(&tp) {
            self.next_generation += 1;
            let mut part = PartitionState::new(self.next_generation);
            part.paused = self.paused_at_revoke.remove(&tp);
            self.generations.insert(self.next_generation, tp.clone());
            self.parts.insert(tp, part);
        }
    }

    /// The state of the partition assignment `generation`, if it is current.
    pub(crate) fn part_mut(&mut self, generation: u64) -> Option<&mut PartitionState> {
        let tp = self.generations.get(&generation)?;
        self.parts.get_mut(tp)
    }

    /// Forgets every partition (the consumer leaves its group).
    pub(crate) fn forget_all(&mut self) {
        self.parts.clear();
        self.generations.clear();
    }

    /// `tp` was revoked: forgets it and what was fetched from it; returns
    /// the offset to commit before it goes, if any. That is the commit
    /// point even when an asynchronous commit of it is still in flight:
    /// that commit may yet fail (a broker refuses commits while the group
    /// rebalances), and nobody would commit it again once the partition is gone.
    pub(crate) fn revoke(&mut self, tp: &Tp) -> Option<i64> {
        let part = self.parts.remove(tp);
        let generation = part.as_ref().map(|p| p.generation);
        if let Some(g) = generation {
            self.generations.remove(&g);
        }
        if let Some(p) = &part {
            // What the next owner will read again: from the commit point on,
            // including what was settled behind an unsettled delivery.
            tracing::debug!(
                topic = %tp.0,
                partition = tp.1,
                commit_point = ?p.commit_point(),
                fetched_up_to = ?p.fetched_up_to(),
                handed_out = p.held.len(),
                "partition revoked"
            );
        }
        if part.as_ref().is_some_and(|p| p.paused) {
            self.paused_at_revoke.insert(tp.clone());
        }
        let commit = part.and_then(|p| p.commit_point());
        // Their deliveries belong to the next owner now: it reads them
        // again from the committed offset.
        self.ready.retain(|p| p.tp != *tp);
        self.ready_bytes = self.ready.iter().map(Pending::payload_len).sum();
        self.redeliveries.retain(|(g, _), _| Some(*g) != generation);
        self.failing.retain(|(g, _), _| Some(*g) != generation);
        self.delayed.retain(|(_, p)| p.tp != *tp);
        commit
    }

    /// Takes the next waiting record to hand out, with what making its
    /// delivery needs from the state. Only moves: the delivery is made
    /// after the consumer's lock is released ([`Taken::into_received`]),
    /// and its copy for `close` is kept under the lock again
    /// ([`State::hold`]). Making a batch of deliveries under the lock held
    /// it for hundreds of microseconds, and the poll thread slept on it
    /// (perf sched trace at 850 k records/s: about 280 times in 0.4 s).
    pub(crate) fn take_next(&mut self) -> Option<Taken> {
        let pending = self.ready.pop_front()?;
        self.ready_bytes = self.ready_bytes.saturating_sub(pending.payload_len());
        // Deliveries of this offset the broker cannot count (ordered
        // mode: redelivered in place).
        let extra = match &pending.record {
            Record::Fetched(_) if !self.redeliveries.is_empty() => self
                .redeliveries
                .get(&(pending.generation, pending.offset))
                .copied()
                .unwrap_or(0),
            _ => 0,
        };
        Some(Taken { pending, extra })
    }

    /// Keeps what `close` needs of a delivery just handed out, unless its
    /// partition was revoked since it was taken (the delivery is stale:
    /// settling it changes nothing).
    pub(crate) fn hold(&mut self, (generation, offset): Held, kept: Kept) {
        if let Some(part) = self.part_mut(generation) {
            part.held.insert(offset, kept);
        }
    }

    /// Takes, makes and holds in one step (for tests).
    #[cfg(test)]
    pub(crate) fn hand_out(&mut self, source: &Arc<str>, group: &Arc<str>) -> Option<Received> {
        let taken = self.take_next()?;
        let key = taken.key();
        let received = taken.into_received(source, group);
        self.hold(key, Kept::of(&received));
        Some(received)
    }

    /// A delivery is being settled: takes it out of the held set.
    /// `false`: it is stale (its partition was revoked meanwhile, perhaps
    /// handed back since, with a new copy of the same offset out), and
    /// settling it must not touch any state. `ack`: its offset is marked
    /// settled too, in the same lookup (an ack has nothing to wait for).
    pub(crate) fn claim(&mut self, key: &Held, ack: bool) -> bool {
        self.take_held_one(key, ack).is_some()
    }

    /// [`State::claim`], returning what was kept for `close`, so that the
    /// caller can drop it (and with it, often, the content's last
    /// reference) after the lock is released.
    fn take_held_one(&mut self, key: &Held, ack: bool) -> Option<Kept> {
        let (generation, offset) = key;
        let part = self.part_mut(*generation)?;
        let held = part.held.remove(offset)?;
        if ack {
            part.settle(*offset);
            self.settled(key);
        }
        Some(held)
    }

    /// `key`'s record is settled: forgets its redeliveries in place and
    /// its failed republishes.
    fn settled(&mut self, key: &Held) {
        // Both are empty unless something failed or was nacked in place.
        if !self.redeliveries.is_empty() {
            self.redeliveries.remove(key);
        }
        if !self.failing.is_empty() {
            self.failing.remove(key);
        }
    }
}

impl Shared {
    /// Applies every ack queued so far (`acks.rs`), oldest first. Called
    /// with the state locked by whoever needs the settled offsets next: the
    /// application handing out deliveries (which takes the lock anyway),
    /// the poll thread's rounds (commits), a revoke, another settlement,
    /// `close`. The copies kept for `close` of the acked deliveries go to
    /// `released`, to be dropped after the lock is released: for most
    /// deliveries they are the last reference, and freeing a batch of them
    /// under the lock held the poll thread up (perf sched trace).
    pub(crate) fn apply_acks(&self, state: &mut State, released: &mut Vec<Kept>) {
        let mut acked = std::mem::take(&mut state.acked);
        self.acks.take_into(&mut acked);
        released.extend(
            acked
                .iter()
                .filter_map(|key| state.take_held_one(key, true)),
        );
        acked.clear();
        state.acked = acked;
    }

    /// The first step of a revoke of `tps` in unordered mode: applies the
    /// acks given so far, stops handing out their waiting records (the next
    /// owner reads them) and takes the deliveries of theirs still held, to
    /// be returned to the retry topic ([`KafkaSettler::return_at_revoke`](crate::settle::KafkaSettler::return_at_revoke)).
    /// Until they are, each pins its partition's commit point.
    pub(crate) fn take_held_at_revoke(&self, state: &mut State, tps: &[Tp]) -> Vec<Received> {
        self.apply_acks(state, &mut Vec::new());
        state.ready.retain(|p| !tps.contains(&p.tp));
        state.ready_bytes = state.ready.iter().map(Pending::payload_len).sum();
        let mut held = Vec::new();
        for tp in tps {
            if let Some(part) = state.parts.get_mut(tp) {
                self.drain_held(tp, part, &mut held);
            }
        }
        held
    }

    /// Takes every delivery handed out and not settled (for `close`).
    pub(crate) fn take_held(&self, state: &mut State) -> Vec<Received> {
        let mut held = Vec::new();
        for (tp, part) in state.parts.iter_mut() {
            self.drain_held(tp, part, &mut held);
        }
        held
    }

    /// Makes the deliveries kept of `part` again, as they were handed out,
    /// into `into`.
    fn drain_held(&self, tp: &Tp, part: &mut PartitionState, into: &mut Vec<Received>) {
        let generation = part.generation;
        into.extend(part.held.drain().map(|(offset, kept)| {
            Received::from_content(self.source.clone(), kept.content, kept.attempt)
                .with_group(Some(self.group.clone()))
                .with_metadata(KafkaMetadata {
                    topic: tp.0.clone(),
                    partition: tp.1,
                    offset,
                    generation,
                })
        }));
    }

    /// `tps` go to another member: the acks given so far are applied
    /// first, so that their offsets leave with the partitions' commit, then
    /// the partitions are forgotten. Returns the offsets to commit.
    pub(crate) fn revoke(&self, state: &mut State, tps: Vec<Tp>) -> Vec<(Tp, i64)> {
        self.apply_acks(state, &mut Vec::new());
        tps.into_iter()
            .filter_map(|tp| state.revoke(&tp).map(|o| (tp, o)))
            .collect()
    }

    /// The state of a consumer of `source` (and `retry_topic`) in `group`
    /// that hands out at most `prefetch` deliveries unsettled.
    pub(crate) fn new(
        config: &KafkaConfig,
        source: String,
        group: String,
        retry_topic: String,
        dead_letter: String,
        prefetch: usize,
    ) -> Self {
        Shared {
            state: Mutex::new(State::default()),
            readable: Notify::new(),
            idle: Notify::new(),
            room: Condvar::new(),
            doorbell: Doorbell::default(),
            slots: Prefetch::new(prefetch),
            acks: Acks::default(),
            prefetch,
            source: source.into(),
            retry_topic,
            dead_letter,
            group: group.into(),
            ordered: config.ordered,
            commit_interval: config.commit_interval,
            pause_after: config.pause_after(),
        }
    }

    /// Marks the record settled if it still belongs to this assignment.
    pub(crate) fn settle_offset(state: &mut State, meta: &KafkaMetadata) {
        if let Some(part) = state.part_mut(meta.generation) {
            part.settle(meta.offset);
            state.settled(&(meta.generation, meta.offset));
        }
    }

    /// A republish of the record failed with `error`: remembered for
    /// `health` until the record is settled. Returns how often it failed.
    pub(crate) fn republish_failed(state: &mut State, meta: &KafkaMetadata, error: &Error) -> u32 {
        if !state.generations.contains_key(&meta.generation) {
            return 1;
        }
        let f = state
            .failing
            .entry((meta.generation, meta.offset))
            .or_insert(Failing {
                failures: 0,
                error: String::new(),
                at: SystemTime::now(),
            });
        f.failures = f.failures.saturating_add(1);
        f.error = error.to_string();
        f.at = SystemTime::now();
        f.failures
    }

    /// Gives a delivery that was taken out of the held set but not
    /// settled (its republish failed or was cancelled) back: it stays
    /// unsettled (its offset is not committed) and is delivered again,
    /// alone, after `delay`. Records after it are not replayed. Nothing
    /// happens if the partition was revoked meanwhile or the consumer is
    /// closing (the next owner reads it from the committed offset).
    pub(crate) fn give_back(
        shared: &Shared,
        state: &mut State,
        meta: &KafkaMetadata,
        tp: &Tp,
        received: Received,
        delay: Duration,
    ) {
        let current = state
            .part_mut(meta.generation)
            .is_some_and(|p| p.rewind.is_none_or(|r| r > meta.offset));
        if state.closed || !current {
            return;
        }
        let pending = Pending {
            tp: tp.clone(),
            generation: meta.generation,
            offset: meta.offset,
            record: Record::Delivery(received),
        };
        if delay.is_zero() {
            state.ready_bytes += pending.payload_len();
            state.ready.push_back(pending);
            shared.readable.notify_one();
        } else {
            state.delayed.push((instant_after(delay), pending));
        }
    }

    /// One republish in flight fewer; wakes `close` after the last.
    pub(crate) fn inflight_done(shared: &Shared, state: &mut State) {
        state.inflight = state.inflight.saturating_sub(1);
        if state.inflight == 0 {
            shared.idle.notify_waiters();
        }
    }

    /// Makes `(tp, offset)` come back in place after `delay` (ordered-mode
    /// nack): the partition is rewound to it. `count`: the redelivery is a
    /// further attempt (a nack, not a delivery dropped unsettled).
    pub(crate) fn rewind(
        state: &mut State,
        meta: &KafkaMetadata,
        tp: &Tp,
        delay: Option<Duration>,
        count: bool,
    ) {
        let Some(part) = state.part_mut(meta.generation) else {
            return;
        };
        part.rewind_to(meta.offset);
        let due = instant_after(delay.unwrap_or(Duration::ZERO));
        part.hold_until = Some(part.hold_until.map_or(due, |h| h.max(due)));
        // Records of this partition at or past it that wait in the ready
        // queue are fetched again after the rewind.
        let mut forgotten = Vec::new();
        state.ready.retain(|p| {
            let drop = p.tp == *tp && p.offset >= meta.offset;
            if drop {
                forgotten.push(p.offset);
            }
            !drop
        });
        state.ready_bytes = state.ready.iter().map(Pending::payload_len).sum();
        if let Some(part) = state.parts.get_mut(tp) {
            for o in forgotten {
                part.forget(o);
            }
        }
        if count {
            let n = state
                .redeliveries
                .entry((meta.generation, meta.offset))
                .or_default();
            *n = n.saturating_add(1);
        }
    }
}
