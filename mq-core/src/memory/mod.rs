//! The in-memory broker (`memory://`): every semantic of a real broker, in
//! one process, for development and tests.
//!
//! | URL | meaning |
//! |---|---|
//! | `memory://` | the process-wide default broker |
//! | `memory://NAME` | the broker called NAME; every client of the same name shares it |
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `capacity` | 100000 | messages one queue holds (ready, delayed and unsettled) before `send` waits |
//! | `max_message_size` | 1048576 | bytes of payload and headers a message may have; larger sends fail with `TooLarge` |
//!
//! Semantics (DESIGN.md §4): each (destination, group) is a FIFO queue. The
//! default group exists from the first send, so point-to-point never loses a
//! message sent before the first consumer; a named group receives messages
//! sent after it was first consumed. Ack removes, nack requeues at the front
//! (attempt + 1), a delayed nack requeues at the back when due, dead-letter
//! moves the message to `<source>-dlq` (or the consumer's dead-letter
//! destination) with the reason headers; a dead letter that cannot be written
//! (name refused, copy too large even cut) goes back to the queue and the
//! settle returns the error. A delivery
//! dropped unsettled is requeued at once. Brokers live until the process
//! exits; nothing survives a restart.

mod queue;

use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::capabilities::Capabilities;
use crate::client::{Backend, Client};
use crate::consumer::{Consumer, ConsumerOptions, DynConsumer, DEFAULT_PREFETCH};
use crate::delivery::{Body, Delivery, Received, SettleNow, Settlement, Settler};
use crate::driver::{Connector, Driver};
use crate::error::{Error, ErrorKind, Result};
use crate::message::Message;
use crate::prefetch::Prefetch;
use crate::producer::{BatchReport, DynProducer, Producer, SendNow, Sending};
use crate::queue_stats::QueueStats;
use crate::url::{RedactedUrl, UrlOptions};

use queue::{Queue, Stored};

const BACKEND: &str = "memory";

/// The in-memory backend as a [`Driver`]. It is
/// always compiled in (no cargo feature) and needs no broker for tests.
pub const DRIVER: Driver = Driver {
    name: BACKEND,
    feature: "",
    schemes: &["memory"],
    connect: Connector::Parsed(|url| Box::pin(async move { connect(&url) })),
    test_key: "MEMORY",
    test_broker: "",
    test_image: None,
};

/// Settings of an in-memory broker; see the module docs for the URL form.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// Messages one queue holds before `send` waits.
    pub capacity: usize,
    /// Largest message (payload plus headers) in bytes.
    pub max_message_size: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            capacity: 100_000,
            max_message_size: 1024 * 1024,
        }
    }
}

impl MemoryConfig {
    /// Reads the options of a `memory://` URL, strictly.
    pub fn from_url(url: &RedactedUrl) -> Result<(String, Self)> {
        let u = url.expose();
        if u.scheme() != "memory" {
            return Err(Error::config(format!("not a memory:// URL: {url}")));
        }
        if !u.username().is_empty() || u.password().is_some() || u.port().is_some() {
            return Err(Error::config(format!(
                "memory:// URLs take no user, password or port: {url}"
            )));
        }
        let name = match u.host_str() {
            None | Some("") => "default".to_owned(),
            Some(h) => h.to_owned(),
        };
        let mut opts = UrlOptions::new(BACKEND, u)?;
        let mut config = MemoryConfig::default();
        if let Some(c) = opts.take::<usize>("capacity")? {
            if c == 0 {
                return Err(Error::config(
                    "memory URL option `capacity` must be at least 1",
                ));
            }
            config.capacity = c;
        }
        if let Some(m) = opts.take::<usize>("max_message_size")? {
            config.max_message_size = m;
        }
        opts.finish()?;
        Ok((name, config))
    }
}

static BROKERS: LazyLock<Mutex<HashMap<String, MemoryBroker>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn connect(url: &RedactedUrl) -> Result<Client> {
    let (name, config) = MemoryConfig::from_url(url)?;
    Ok(Client::new(MemoryBroker::named(&name, config)?))
}

/// An in-memory broker. Clones share it.
#[derive(Debug, Clone)]
pub struct MemoryBroker {
    inner: Arc<BrokerInner>,
}

/// The queues of one destination, one per group; replaced, not mutated, when
/// a group appears, so a send clones one `Arc` instead of a list.
type Queues = Arc<[Arc<Queue>]>;

struct BrokerInner {
    name: String,
    config: MemoryConfig,
    /// destination -> its queues, one per group (`None` is the default group).
    destinations: Mutex<FxHashMap<String, Queues>>,
    /// Changes of `destinations`, so a producer can keep the queues of the
    /// destination it sent to last until one happens.
    version: AtomicU64,
}

impl MemoryBroker {
    /// A private broker, shared only through clones of this value.
    pub fn new(config: MemoryConfig) -> Self {
        MemoryBroker {
            inner: Arc::new(BrokerInner {
                name: String::new(),
                config,
                destinations: Mutex::new(FxHashMap::default()),
                version: AtomicU64::new(0),
            }),
        }
    }

    /// The process-wide broker called `name`, created with `config` if it
    /// does not exist yet. Reopening it with a different config is an error.
    pub fn named(name: &str, config: MemoryConfig) -> Result<Self> {
        let mut brokers = BROKERS.lock();
        if let Some(b) = brokers.get(name) {
            if b.inner.config != config {
                return Err(Error::config(format!(
                    "memory broker `{name}` already exists with {:?}; cannot reopen it with {config:?}",
                    b.inner.config
                )));
            }
            return Ok(b.clone());
        }
        let mut broker = MemoryBroker::new(config);
        if let Some(inner) = Arc::get_mut(&mut broker.inner) {
            inner.name = name.to_owned();
        }
        brokers.insert(name.to_owned(), broker.clone());
        Ok(broker)
    }

    /// The broker's settings.
    pub fn config(&self) -> &MemoryConfig {
        &self.inner.config
    }

    /// Messages ready for delivery in `source`'s `group` (`None`: default group).
    pub fn ready(&self, source: &str, group: Option<&str>) -> usize {
        self.inner
            .find_queue(source, group)
            .map_or(0, |q| q.ready_len())
    }

    /// Messages held by `source`'s `group`: ready, delayed and unsettled.
    pub fn held(&self, source: &str, group: Option<&str>) -> usize {
        self.inner.find_queue(source, group).map_or(0, |q| q.held())
    }

    /// A producer of this broker.
    pub fn producer(&self) -> MemoryProducer {
        MemoryProducer::new(self.inner.clone())
    }

    /// A consumer of this broker.
    pub fn consumer(&self, options: ConsumerOptions) -> MemoryConsumer {
        let queue = self.inner.queue(&options.source, options.group.as_deref());
        let prefetch = Prefetch::new(options.prefetch_or(DEFAULT_PREFETCH));
        MemoryConsumer {
            settler: Arc::new(MemorySettler {
                dead_letter: options.dead_letter_destination(),
                queue,
                prefetch,
                broker: self.inner.clone(),
                outstanding: Mutex::new(Outstanding::default()),
            }),
            closed: false,
        }
    }
}

impl std::fmt::Debug for BrokerInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("destinations", &self.destinations.lock().len())
            .finish()
    }
}

impl BrokerInner {
    fn find_queue(&self, source: &str, group: Option<&str>) -> Option<Arc<Queue>> {
        self.destinations
            .lock()
            .get(source)?
            .iter()
            .find(|q| q.group.as_deref() == group)
            .cloned()
    }

    /// The queue of (`source`, `group`), created on first use.
    fn queue(&self, source: &str, group: Option<&str>) -> Arc<Queue> {
        let mut dests = self.destinations.lock();
        let queues = dests.entry(source.to_owned()).or_insert_with(|| {
            self.version.fetch_add(1, Ordering::Release);
            self.default_queues(source)
        });
        if let Some(q) = queues.iter().find(|q| q.group.as_deref() == group) {
            return q.clone();
        }
        let q = Arc::new(Queue::new(source, group, self.config.capacity));
        *queues = queues.iter().cloned().chain([q.clone()]).collect();
        self.version.fetch_add(1, Ordering::Release);
        q
    }

    fn default_queues(&self, source: &str) -> Queues {
        Arc::new([Arc::new(Queue::new(source, None, self.config.capacity))])
    }

    /// Every queue of `destination` (creating its default group).
    fn queues(&self, destination: &str) -> Queues {
        let mut dests = self.destinations.lock();
        if let Some(queues) = dests.get(destination) {
            return queues.clone();
        }
        let queues = self.default_queues(destination);
        dests.insert(destination.to_owned(), queues.clone());
        self.version.fetch_add(1, Ordering::Release);
        queues
    }

    /// Sends to every group of `destination`. Size and delay were checked by
    /// core (`checks`) before a `Client`'s producer got here; the name rule
    /// is this broker's own.
    async fn send(&self, destination: &str, message: Message) -> Result<()> {
        match self.send_now(destination, message) {
            SendNow::Done(result) => result,
            SendNow::Started(sending) => sending.await,
            SendNow::Later(message) => {
                let delay = message.delay();
                let stored = Stored::new(message);
                send_waiting(&self.queues(destination), stored, delay).await
            }
        }
    }

    /// A send without a future while every group has room (one lock per
    /// queue). A group that is full makes the send wait for it and the
    /// groups after it ([`SendNow::Started`]). A delayed message is handed
    /// back untouched ([`SendNow::Later`]): it waits for room in every group
    /// before it is scheduled in any.
    fn send_now(&self, destination: &str, message: Message) -> SendNow {
        self.send_now_to(destination, message, || self.queues(destination))
    }

    /// [`send_now`](Self::send_now) with the destination's queues from
    /// `queues` (a producer's cached ones), asked only for a valid name.
    fn send_now_to(
        &self,
        destination: &str,
        message: Message,
        queues: impl FnOnce() -> Queues,
    ) -> SendNow {
        if let Err(e) = check_name(destination) {
            return SendNow::Done(Err(e));
        }
        if message.delay().is_some() {
            return SendNow::Later(message);
        }
        let stored = Stored::new(message);
        let queues = queues();
        let mut pushed = 0;
        while pushed < queues.len() && queues[pushed].try_push_back(&stored) {
            pushed += 1;
        }
        if pushed == queues.len() {
            return SendNow::Done(Ok(()));
        }
        // Cancelling from here on leaves the message in the first `pushed`
        // groups only: a cancelled send's outcome is unknown.
        SendNow::Started(Sending::new(async move {
            send_waiting(&queues[pushed..], stored, None).await
        }))
    }

    /// Publishes to the default group of `destination` without waiting for
    /// capacity (used for dead letters, which must never block settlement).
    /// The copy is cut to the size limit first; what cannot be sent is an
    /// error and nothing is published.
    fn force_send(&self, destination: &str, message: Message) -> Result<()> {
        check_name(destination)?;
        let message = crate::republish::fit_to_size(message, self.config.max_message_size)
            .map_err(|e| e.with_backend(BACKEND).with_destination(destination))?;
        let queues = self.queues(destination);
        let stored = Stored::new(message);
        for queue in queues.iter() {
            queue.reserve_now();
            queue.push_back(stored.clone());
        }
        Ok(())
    }
}

/// Sends to `queues`, waiting for room in each before delivering to any.
async fn send_waiting(
    queues: &[Arc<Queue>],
    stored: Stored,
    delay: Option<Duration>,
) -> Result<()> {
    let mut reserved = Reservations(queues, 0);
    for queue in queues {
        queue.reserve().await;
        reserved.1 += 1;
    }
    // Every queue has room: hand the reservations over to the messages.
    reserved.1 = 0;
    for queue in queues {
        match delay {
            Some(d) => queue.push_after(stored.clone(), d),
            None => queue.push_back(stored.clone()),
        }
    }
    Ok(())
}

/// The longest destination name the memory broker takes (RabbitMQ's limit,
/// so names that work here work there).
pub const MAX_NAME_LEN: usize = 255;

/// A destination name must be non-empty and at most [`MAX_NAME_LEN`] bytes.
fn check_name(destination: &str) -> Result<()> {
    let problem = if destination.is_empty() {
        "destination name is empty".to_owned()
    } else if destination.len() > MAX_NAME_LEN {
        format!(
            "destination name of {} bytes exceeds the memory broker's limit of {MAX_NAME_LEN}",
            destination.len()
        )
    } else {
        return Ok(());
    };
    Err(Error::config(problem)
        .with_backend(BACKEND)
        .with_operation("send"))
}

/// Capacity taken by a send that has not pushed yet (the first `.1` queues);
/// given back if the send is cancelled while waiting for room in another
/// group's queue.
struct Reservations<'a>(&'a [Arc<Queue>], usize);

impl Drop for Reservations<'_> {
    fn drop(&mut self) {
        for queue in self.0.iter().take(self.1) {
            queue.release();
        }
    }
}

#[async_trait]
impl Backend for MemoryBroker {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            delayed_delivery: true,
            ordering_key: true,
            pub_sub: true,
            max_message_size: Some(self.inner.config.max_message_size),
            max_batch: self.inner.config.capacity,
            ..Capabilities::default()
        }
    }

    async fn producer(&self) -> Result<DynProducer> {
        Ok(Arc::new(MemoryBroker::producer(self)))
    }

    async fn stats(&self, source: &str, group: Option<&str>) -> Result<QueueStats> {
        let queue = self.inner.find_queue(source, group).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("no queue {source} (group {group:?}) in this memory broker"),
            )
            .with_backend(BACKEND)
        })?;
        let (ready, delayed, unsettled) = queue.counts();
        Ok(QueueStats {
            depth: Some(ready as u64),
            in_flight: Some(unsettled as u64),
            delayed: Some(delayed as u64),
            ..QueueStats::default()
        })
    }

    async fn consumer(&self, options: ConsumerOptions) -> Result<DynConsumer> {
        if options.source.is_empty() {
            return Err(Error::config("source name is empty").with_backend(BACKEND));
        }
        Ok(Box::new(MemoryBroker::consumer(self, options)))
    }
}

/// Sends to an in-memory broker. Cheap to clone.
#[derive(Debug)]
pub struct MemoryProducer {
    broker: Arc<BrokerInner>,
    /// The destination sent to last, its queues and the broker's
    /// `version` they are of: a send to it skips the broker's map (its
    /// lock and hashing) until a destination or group appears.
    last: Mutex<Option<(u64, Box<str>, Queues)>>,
}

impl MemoryProducer {
    fn new(broker: Arc<BrokerInner>) -> Self {
        MemoryProducer {
            broker,
            last: Mutex::new(None),
        }
    }

    /// The queues of `destination`, from the cache while it is current.
    fn queues(&self, destination: &str) -> Queues {
        let version = self.broker.version.load(Ordering::Acquire);
        let mut last = self.last.lock();
        if let Some((v, name, queues)) = &*last {
            if *v == version && **name == *destination {
                return queues.clone();
            }
        }
        let queues = self.broker.queues(destination);
        *last = Some((version, destination.into(), queues.clone()));
        queues
    }
}

impl Clone for MemoryProducer {
    fn clone(&self) -> Self {
        MemoryProducer::new(self.broker.clone())
    }
}

#[async_trait]
impl Producer for MemoryProducer {
    async fn send(&self, destination: &str, message: Message) -> Result<()> {
        self.broker.send(destination, message).await
    }

    fn send_now(&self, destination: &str, message: Message) -> SendNow {
        self.broker
            .send_now_to(destination, message, || self.queues(destination))
    }

    fn can_send_now(&self) -> bool {
        true
    }

    async fn send_batch(&self, destination: &str, messages: Vec<Message>) -> BatchReport {
        let mut results = Vec::with_capacity(messages.len());
        for m in messages {
            let id = m.id().to_owned();
            results.push((id, self.broker.send(destination, m).await));
        }
        BatchReport::new(results)
    }
}

/// Receives from an in-memory queue.
#[derive(Debug)]
pub struct MemoryConsumer {
    settler: Arc<MemorySettler>,
    closed: bool,
}

impl MemoryConsumer {
    /// Hands out what the queue gave: counted against the prefetch and
    /// tracked (one lock for the batch) before any delivery exists, so
    /// none can be settled before it is accounted for.
    fn deliver_all(&self, stored: Vec<Stored>) -> Vec<Delivery> {
        self.settler.prefetch.take(stored.len());
        let q = &self.settler.queue;
        let settler: Arc<dyn Settler> = self.settler.clone();
        let mut outstanding = self.settler.outstanding.lock();
        stored
            .into_iter()
            .map(|stored| {
                let received = Received {
                    slot: outstanding.track(&stored),
                    body: stored.body,
                    source: q.source.clone(),
                    group: q.group.clone(),
                    attempt: stored.delivered.max(1),
                    metadata: None,
                    backend: BACKEND,
                };
                Delivery::new(received, settler.clone())
            })
            .collect()
    }

    fn check_open(&self) -> Result<()> {
        if self.closed {
            return Err(Error::closed("consumer is closed")
                .with_backend(BACKEND)
                .with_operation("receive")
                .with_destination(self.settler.queue.source.to_string()));
        }
        Ok(())
    }
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn receive(&mut self) -> Result<Delivery> {
        self.check_open()?;
        self.settler.prefetch.wait_room().await;
        let batch = self.settler.queue.pop(1).await;
        match self.deliver_all(batch).pop() {
            Some(delivery) => Ok(delivery),
            None => Err(Error::new(ErrorKind::Broker, "queue returned no message")),
        }
    }

    async fn receive_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        self.check_open()?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let settler = &self.settler;
        // Cancel-safe: nothing is taken from the queue or the prefetch
        // until `pop` returns, in the step that also counts and tracks it.
        let take = async {
            let room = settler.prefetch.wait_room().await;
            settler.queue.pop(max.min(room)).await
        };
        match tokio::time::timeout(wait, take).await {
            Ok(stored) => Ok(self.deliver_all(stored)),
            Err(_) => Ok(Vec::new()),
        }
    }

    /// Stops receiving and returns every unsettled delivery to the queue
    /// (as a broker does when a consumer's channel closes). Settling one of
    /// them afterwards fails with [`ErrorKind::Closed`]; dropping it does nothing.
    async fn close(&mut self) -> Result<()> {
        if !self.closed {
            self.closed = true;
            self.settler.return_outstanding();
        }
        Ok(())
    }
}

/// Settles deliveries of one memory consumer.
#[derive(Debug)]
struct MemorySettler {
    queue: Arc<Queue>,
    /// Where dead letters go (the consumer's options).
    dead_letter: String,
    /// Deliveries the consumer may hold unsettled.
    prefetch: Prefetch,
    broker: Arc<BrokerInner>,
    outstanding: Mutex<Outstanding>,
}

/// Deliveries handed out and not settled yet, so `close` can return them:
/// a slab whose index each delivery carries (`Received::slot`), so taking
/// one out is an index, not a hash lookup. The entry holds a clone of the
/// message's shared body: a stale index (the slot reused after `close`
/// returned its delivery) is told apart by the body's address. The
/// sequence number keeps the order they went out in.
#[derive(Debug, Default)]
struct Outstanding {
    sent: u64,
    closed: bool,
    slots: Vec<Option<(u64, Stored)>>,
    /// Empty slots, reused before the slab grows (it never grows beyond the
    /// prefetch).
    free: Vec<u32>,
}

impl Outstanding {
    /// Tracks `stored`; its slot.
    fn track(&mut self, stored: &Stored) -> u32 {
        self.sent += 1;
        let entry = Some((self.sent, stored.clone()));
        if let Some(slot) = self.free.pop() {
            if let Some(free) = self.slots.get_mut(slot as usize) {
                *free = entry;
                return slot;
            }
        }
        self.slots.push(entry);
        u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
    }

    /// Takes the delivery of `body` out of `slot`, if it is still there.
    fn untrack(&mut self, slot: u32, body: &Arc<Body>) -> Option<Stored> {
        let entry = self.slots.get_mut(slot as usize)?;
        if !entry
            .as_ref()
            .is_some_and(|(_, s)| Arc::ptr_eq(&s.body, body))
        {
            return None;
        }
        let (_, stored) = entry.take()?;
        self.free.push(slot);
        Some(stored)
    }
}

impl MemorySettler {
    /// Takes the delivery out of the outstanding set; `None` once the consumer
    /// closed and returned it to the queue already.
    fn untrack(&self, delivery: &Delivery) -> Option<Stored> {
        let received = delivery.received();
        let stored = self
            .outstanding
            .lock()
            .untrack(received.slot, &received.body);
        if stored.is_some() {
            self.prefetch.give_back();
        }
        stored
    }

    fn return_outstanding(&self) {
        let mut o = self.outstanding.lock();
        o.closed = true;
        o.free.clear();
        let mut returned: Vec<(u64, Stored)> = o.slots.drain(..).flatten().collect();
        drop(o);
        // Oldest first at the front, as they were delivered.
        returned.sort_by_key(|(tag, _)| std::cmp::Reverse(*tag));
        for (_, stored) in returned {
            self.queue.push_front(stored);
        }
    }
}

impl MemorySettler {
    /// Every settlement of the memory backend completes without waiting.
    fn settle_here(&self, delivery: &Delivery, settlement: Settlement) -> Result<()> {
        let Some(stored) = self.untrack(delivery) else {
            return Err(Error::closed(format!(
                "consumer was closed; message {} went back to the queue",
                delivery.id()
            ))
            .with_backend(BACKEND)
            .with_operation("settle")
            .with_destination(self.queue.source.to_string()));
        };
        match settlement {
            Settlement::Ack => self.queue.release(),
            Settlement::Nack { delay: None } => self.queue.push_front(stored),
            Settlement::Nack { delay: Some(d) } => self.queue.push_after(stored, d),
            Settlement::DeadLetter { reason } => {
                let copy = crate::republish::dead_letter_copy(delivery, &reason);
                if let Err(e) = self.broker.force_send(&self.dead_letter, copy) {
                    // Never leave it in limbo: back to the queue, error reported.
                    self.queue.push_front(stored);
                    return Err(e.with_operation("dead_letter"));
                }
                self.queue.release();
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Settler for MemorySettler {
    async fn settle(&self, delivery: &Delivery, settlement: Settlement) -> Result<()> {
        self.settle_here(delivery, settlement)
    }

    fn settle_now(&self, delivery: &Delivery, settlement: Settlement) -> SettleNow {
        SettleNow::Done(self.settle_here(delivery, settlement))
    }

    fn abandon(&self, delivery: &Delivery) {
        if let Some(stored) = self.untrack(delivery) {
            self.queue.push_front(stored);
        }
    }
}

#[cfg(test)]
mod tests;
