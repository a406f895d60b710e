//! Sending: every `send` is coalesced with concurrent ones into
//! `SendMessageBatch` calls of up to 10 messages (see [`crate::batch`]);
//! `send_batch` chunks its messages into batch calls directly. Each message
//! gets its own outcome: a batch call can answer HTTP 200 and still list
//! failed entries.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use futures::StreamExt;
use mq_core::{BatchReport, Error, ErrorKind, Message, Producer, Result};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::batch::{self, MAX_ENTRIES};
use crate::codec::{self, Wire};
use crate::core::{Budget, Core, QueueInfo, RESERVED_FOR_ATTRIBUTES};
use crate::error::{self, BACKEND};
use crate::fanout;
use crate::topology;

/// The most bytes (bodies and attributes) one `SendMessageBatch` carries.
pub(crate) const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Sends to SQS. Cheap to clone; clones share the batching tasks, and
/// `close` on one closes them all.
#[derive(Clone)]
pub struct SqsProducer {
    inner: Arc<ProducerInner>,
}

struct ProducerInner {
    core: Arc<Core>,
    batchers: Mutex<HashMap<Route, Batcher>>,
    closed: AtomicBool,
}

/// Where a message goes: a queue (by name), or with `fanout=sns` the topic
/// of a destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Route {
    Queue(String),
    Topic(String),
}

/// The batching task of one destination and where to hand it messages.
type Batcher = (mpsc::UnboundedSender<Pending>, JoinHandle<()>);

/// A message waiting for its batch, and where its outcome goes.
struct Pending {
    wire: Wire,
    reply: oneshot::Sender<Result<()>>,
}

impl fmt::Debug for SqsProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsProducer")
            .field("destinations", &self.inner.batchers.lock().len())
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl SqsProducer {
    pub(crate) fn new(core: Arc<Core>) -> Self {
        SqsProducer {
            inner: Arc::new(ProducerInner {
                core,
                batchers: Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
            }),
        }
    }

    fn check_open(&self, destination: &str) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(error::closed("the producer", "send", destination));
        }
        Ok(())
    }

    /// Where `message` sent to `destination` goes: the queue of that name;
    /// with `fanout=sns` its topic, except for a replayed dead letter, which
    /// goes back to the queue it came from ([`fanout::replay_queue`]).
    fn route(&self, destination: &str, message: &Message) -> Result<Route> {
        let core = &self.inner.core;
        if !fanout::enabled(core) {
            return Ok(Route::Queue(destination.to_owned()));
        }
        match fanout::replay_queue(destination, message, core.config.fifo) {
            Some(queue) => Ok(Route::Queue(queue?)),
            None => Ok(Route::Topic(destination.to_owned())),
        }
    }

    /// Checks and encodes `message` for `route`, making the queue or topic
    /// (and its default subscription) on first use.
    async fn prepare_for(&self, route: &Route, message: Message) -> Result<Wire> {
        let core = &self.inner.core;
        match route {
            Route::Queue(queue) => prepare(&*topology::resolve(core, queue).await?, message),
            Route::Topic(destination) => {
                let topic = fanout::publish_target(core, destination).await?;
                let limits = Limits {
                    logical: destination,
                    fifo: topic.fifo,
                    max_size: fanout::max_size(core),
                    limit: "SNS's 256 KiB per message (or max_message_size)",
                };
                encode_within(&limits, message)
            }
        }
    }

    /// The batching task of `route`, started on first use.
    fn batcher(&self, route: &Route) -> mpsc::UnboundedSender<Pending> {
        let mut batchers = self.inner.batchers.lock();
        if let Some((tx, _)) = batchers.get(route) {
            return tx.clone();
        }
        let config = &self.inner.core.config;
        let settings = batch::Settings {
            max_entries: MAX_ENTRIES,
            max_bytes: MAX_BATCH_BYTES,
            linger: config.linger,
            concurrency: config.send_concurrency,
        };
        let core = self.inner.core.clone();
        let target = Arc::new(route.clone());
        let (tx, task) = batch::spawn(
            settings,
            |p: &Pending| p.wire.size(),
            move |pending: Vec<Pending>| {
                let (core, target) = (core.clone(), target.clone());
                async move {
                    let (wires, replies): (Vec<Wire>, Vec<_>) =
                        pending.into_iter().map(|p| (p.wire, p.reply)).unzip();
                    let results = deliver(&core, &target, &wires).await;
                    for (reply, result) in replies.into_iter().zip(results) {
                        // The caller may have stopped waiting; nothing to do then.
                        let _ = reply.send(result);
                    }
                }
            },
        );
        batchers.insert(route.clone(), (tx.clone(), task));
        tx
    }

    /// Sends `messages` (with their index in the caller's batch) along
    /// `route` in batch calls, and returns each one's outcome.
    async fn send_route(
        &self,
        route: &Route,
        messages: Vec<(usize, Message)>,
    ) -> Vec<(usize, Result<()>)> {
        let mut out = Vec::with_capacity(messages.len());
        let mut ready = Vec::with_capacity(messages.len());
        let mut fifo = false;
        for (i, m) in messages {
            match self.prepare_for(route, m).await {
                Ok(wire) => {
                    fifo |= wire.fifo.is_some();
                    ready.push((i, wire));
                }
                Err(e) => out.push((i, Err(e))),
            }
        }
        let core = &self.inner.core;
        let calls = chunks(ready).into_iter().map(|chunk| async move {
            let (indexes, wires): (Vec<usize>, Vec<Wire>) = chunk.into_iter().unzip();
            let outcomes = deliver(core, route, &wires).await;
            indexes.into_iter().zip(outcomes).collect::<Vec<_>>()
        });
        // FIFO order across chunks needs one call after the other.
        let in_flight = if fifo {
            1
        } else {
            core.config.send_concurrency
        };
        let done: Vec<Vec<(usize, Result<()>)>> = futures::stream::iter(calls)
            .buffer_unordered(in_flight)
            .collect()
            .await;
        out.extend(done.into_iter().flatten());
        out
    }
}

/// Sends `wires` along `route` in one call: [`send_to`] a queue or
/// [`fanout::publish`] to a topic.
async fn deliver(core: &Core, route: &Route, wires: &[Wire]) -> Vec<Result<()>> {
    match route {
        Route::Queue(queue) => send_to(core, queue, wires).await,
        Route::Topic(destination) => fanout::publish(core, destination, wires).await,
    }
}

/// What a message is checked against before it is sent.
struct Limits<'a> {
    /// The destination, for errors.
    logical: &'a str,
    /// FIFO: a message group and deduplication id.
    fifo: bool,
    /// The largest wire size (body and attributes) accepted.
    max_size: usize,
    /// That limit's name, for errors.
    limit: &'a str,
}

/// Checks `message` against `limits` (its encoded length within
/// `max_size` less [`RESERVED_FOR_ATTRIBUTES`], then its wire size within
/// `max_size`) and encodes it.
fn encode_within(limits: &Limits<'_>, message: Message) -> Result<Wire> {
    let logical = limits.logical;
    let size = message.encoded_len();
    let allowed = limits.max_size.saturating_sub(RESERVED_FOR_ATTRIBUTES);
    if size > allowed {
        return Err(Error::too_large(
            size,
            allowed,
            &format!(
                "{}, {} bytes, less {RESERVED_FOR_ATTRIBUTES} kept for mq's attributes",
                limits.limit, limits.max_size
            ),
        )
        .with_backend(BACKEND)
        .with_operation("send")
        .with_destination(logical));
    }
    let wire = codec::encode(message, limits.fifo).map_err(|e| e.with_destination(logical))?;
    if wire.size() > limits.max_size {
        return Err(Error::too_large(
            wire.size(),
            limits.max_size,
            &format!(
                "{}, counting body and attributes as sent (base64 makes a binary payload a third larger)",
                limits.limit
            ),
        )
        .with_backend(BACKEND)
        .with_operation("send")
        .with_destination(logical));
    }
    Ok(wire)
}

/// Checks `message` against the queue's limits and encodes it.
pub(crate) fn prepare(info: &QueueInfo, message: Message) -> Result<Wire> {
    let limit = format!("SQS MaximumMessageSize of queue `{}`", info.logical);
    let limits = Limits {
        logical: &info.logical,
        fifo: info.fifo,
        max_size: info.max_size,
        limit: &limit,
    };
    encode_within(&limits, message)
}

/// Rounds of [`fit_copy`]: each measures the encoding's overhead again.
const FIT_ROUNDS: usize = 8;

/// Encodes a republished copy (a dead letter) for the queue of `info`, its
/// reason headers cut ([`mq_core::backend::republish::fit_to_size`]) so that the copy
/// fits the queue's `MaximumMessageSize` as SQS counts it: body plus each
/// attribute's name, type and value. What the encoding adds to
/// [`Message::encoded_len`] (base64 of a binary payload, attribute names and
/// types, the `mq-headers` JSON with its escapes) is measured on the encoded
/// copy, not guessed: the copy is cut by the excess and encoded again, for a
/// few rounds (a cut can move a header between its own attribute and the
/// JSON). Unlike [`prepare`], no fixed reserve is kept: the wire size is
/// exact. A copy that cannot fit without touching its payload, id or the
/// application's headers is `TooLarge`.
pub(crate) fn fit_copy(info: &QueueInfo, message: Message) -> Result<Wire> {
    let limit = info.max_size;
    let mut budget = limit;
    let mut last = 0;
    for _ in 0..FIT_ROUNDS {
        let candidate =
            mq_core::backend::republish::fit_to_size(message.clone(), budget).map_err(|e| {
                e.with_backend(BACKEND)
                    .with_destination(info.logical.clone())
            })?;
        let wire = codec::encode(candidate, info.fifo)
            .map_err(|e| e.with_destination(info.logical.clone()))?;
        last = wire.size();
        if last <= limit {
            return Ok(wire);
        }
        let next = budget.saturating_sub(last - limit);
        if next == budget {
            break;
        }
        budget = next;
    }
    Err(Error::too_large(
        last,
        limit,
        "SQS MaximumMessageSize, counting body and attributes as sent (the dead-letter reason cut as far as it goes)",
    )
    .with_backend(BACKEND)
    .with_operation("dead-letter")
    .with_destination(info.logical.clone()))
}

fn attributes(wire: &Wire) -> Result<HashMap<String, MessageAttributeValue>> {
    wire.attributes
        .iter()
        .map(|(name, value)| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map(|v| (name.clone(), v))
                .map_err(|e| {
                    Error::config("invalid message attribute")
                        .with_backend(BACKEND)
                        .with_source(e)
                })
        })
        .collect()
}

/// Sends `wires` to the queue of `logical` in one call and returns each
/// one's outcome. When the queue turns out to be gone it is resolved (and,
/// with `create_queues`, created) again and the call retried once.
pub(crate) async fn send_to(core: &Core, logical: &str, wires: &[Wire]) -> Vec<Result<()>> {
    let mut retried = false;
    loop {
        let info = match topology::resolve(core, logical).await {
            Ok(info) => info,
            Err(e) => return error::replicate_each(&e, wires.len()),
        };
        match call(core, &info, wires).await {
            Ok(results) => return results,
            Err(e) if !retried && core.gone(&info, &e) => retried = true,
            Err(e) => return error::replicate_each(&e, wires.len()),
        }
    }
}

/// One `SendMessage` (a single message) or `SendMessageBatch` call. `Err`
/// is a failure of the whole call; `Ok` holds each entry's outcome.
async fn call(core: &Core, info: &QueueInfo, wires: &[Wire]) -> Result<Vec<Result<()>>> {
    let client = &core.clients.ops;
    let logical = info.logical.as_str();
    let _request = core.permit(Budget::Send).await;
    if let [wire] = wires {
        let mut req = client
            .send_message()
            .queue_url(&info.url)
            .message_body(&wire.body)
            .set_message_attributes(Some(attributes(wire)?))
            .set_delay_seconds(wire.delay_seconds);
        if let Some((group, dedup)) = &wire.fifo {
            req = req.message_group_id(group).message_deduplication_id(dedup);
        }
        req.send()
            .await
            .map_err(|e| error::sdk(e, "send", logical))?;
        return Ok(vec![Ok(())]);
    }
    let mut entries = Vec::with_capacity(wires.len());
    for (i, wire) in wires.iter().enumerate() {
        let mut entry = SendMessageBatchRequestEntry::builder()
            .id(i.to_string())
            .message_body(&wire.body)
            .set_message_attributes(Some(attributes(wire)?))
            .set_delay_seconds(wire.delay_seconds);
        if let Some((group, dedup)) = &wire.fifo {
            entry = entry
                .message_group_id(group)
                .message_deduplication_id(dedup);
        }
        entries.push(entry.build().map_err(error::invalid_entry)?);
    }
    let sent = client
        .send_message_batch()
        .queue_url(&info.url)
        .set_entries(Some(entries))
        .send()
        .await;
    error::answer(sent, wires.len(), "send", logical)
}

/// Groups `(index, wire)` pairs into batches of at most 10 entries and
/// [`MAX_BATCH_BYTES`], in order.
fn chunks(ready: Vec<(usize, Wire)>) -> Vec<Vec<(usize, Wire)>> {
    let mut out: Vec<Vec<(usize, Wire)>> = Vec::new();
    let mut bytes = 0;
    for (i, wire) in ready {
        let size = wire.size();
        match out.last_mut() {
            Some(last) if last.len() < MAX_ENTRIES && bytes + size <= MAX_BATCH_BYTES => {
                bytes += size;
                last.push((i, wire));
            }
            _ => {
                bytes = size;
                out.push(vec![(i, wire)]);
            }
        }
    }
    out
}

#[async_trait]
impl Producer for SqsProducer {
    async fn send(&self, destination: &str, message: Message) -> Result<()> {
        self.check_open(destination)?;
        let route = self.route(destination, &message)?;
        let wire = self.prepare_for(&route, message).await?;
        let (reply, outcome) = oneshot::channel();
        self.batcher(&route)
            .send(Pending { wire, reply })
            .map_err(|_| error::closed("the producer", "send", destination))?;
        outcome.await.unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Broker,
                "the batching task stopped before the message was sent",
            )
            .with_backend(BACKEND)
            .with_operation("send")
            .with_destination(destination))
        })
    }

    /// Chunks into batch calls of up to 10 (one call after the other for
    /// FIFO); with `fanout=sns`, `PublishBatch` calls to the topic (replayed
    /// dead letters apart, to their queue).
    async fn send_batch(&self, destination: &str, messages: Vec<Message>) -> BatchReport {
        let ids: Vec<String> = messages.iter().map(|m| m.id().to_owned()).collect();
        let mut results: Vec<Option<Result<()>>> = ids.iter().map(|_| None).collect();
        // Messages by route, in order (with fan-out, replays go apart).
        let mut routes: Vec<(Route, Vec<(usize, Message)>)> = Vec::new();
        for (i, m) in messages.into_iter().enumerate() {
            let route = match self
                .check_open(destination)
                .and_then(|()| self.route(destination, &m))
            {
                Ok(route) => route,
                Err(e) => {
                    results[i] = Some(Err(e));
                    continue;
                }
            };
            match routes.iter_mut().find(|(r, _)| *r == route) {
                Some((_, list)) => list.push((i, m)),
                None => routes.push((route, vec![(i, m)])),
            }
        }
        for (route, list) in routes {
            for (i, r) in self.send_route(&route, list).await {
                results[i] = Some(r);
            }
        }
        BatchReport::new(
            ids.into_iter()
                .zip(results)
                .map(|(id, r)| {
                    let r = r.unwrap_or_else(|| {
                        Err(Error::new(ErrorKind::Broker, "message was not sent")
                            .with_backend(BACKEND))
                    });
                    (id, r)
                })
                .collect(),
        )
    }

    fn health(&self) -> mq_core::observe::Health {
        self.inner.core.clients.health.health()
    }

    /// Stops accepting sends and waits until every queued message was sent.
    async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        let batchers: Vec<_> = self.inner.batchers.lock().drain().collect();
        for (_, (tx, task)) in batchers {
            drop(tx);
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "an SQS batching task failed");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_respect_count_and_bytes() {
        let wire = |n: usize| {
            codec::encode(Message::new(vec![b'a'; n]).with_id("i"), false).expect("wire")
        };
        let ready: Vec<(usize, Wire)> = (0..23).map(|i| (i, wire(10))).collect();
        let sizes: Vec<usize> = chunks(ready).iter().map(Vec::len).collect();
        assert_eq!(sizes, [10, 10, 3]);
        let big = 600 * 1024;
        let ready = vec![(0, wire(big)), (1, wire(big)), (2, wire(10)), (3, wire(10))];
        let got: Vec<Vec<usize>> = chunks(ready)
            .iter()
            .map(|c| c.iter().map(|(i, _)| *i).collect())
            .collect();
        assert_eq!(got, [vec![0], vec![1, 2, 3]]);
    }

    fn queue(logical: &str, fifo: bool, max_size: usize) -> QueueInfo {
        QueueInfo {
            logical: logical.into(),
            url: format!("http://sqs.test/000000000000/{logical}"),
            fifo,
            max_size,
            redrive_target: None,
        }
    }

    /// What a consumer of `source` gets for `wire`.
    fn receive(source: &str, wire: &Wire) -> mq_core::Received {
        let decoded = codec::decode(&codec::received(wire, 1));
        mq_core::Received::new(source, decoded.message, decoded.attempt)
    }

    fn attribute<'a>(wire: &'a Wire, name: &str) -> Option<&'a str> {
        wire.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Defect 2 (issue 14): on a FIFO queue, a copy sent with the original's
    /// `MessageDeduplicationId` within SQS's 5-minute window is accepted and
    /// silently dropped, and the original is then deleted: the message is
    /// lost. moto forgets a deduplication id once its message is deleted
    /// (AWS keeps it for 5 minutes from the send), so this is checked on the
    /// ids the copies carry: the wire entry of a dead letter (what the
    /// settler sends), of a second dead-lettering of the same message, and
    /// of a redrive (`mq dlq --redrive`'s replay copy) each carry their own
    /// deduplication id, while the `mq` id stays the same.
    #[test]
    fn fifo_republished_copies_are_never_deduplicated_away() {
        let source = queue("jobs.fifo", true, 1024 * 1024);
        let dlq = queue("jobs-dlq.fifo", true, 1024 * 1024);
        let original = Message::new("payload")
            .with_id("order-1")
            .with_key("customer-7");
        let sent = prepare(&source, original).expect("original");
        let delivery = receive("jobs.fifo", &sent);

        let first = fit_copy(
            &dlq,
            mq_core::backend::republish::dead_letter_copy(&delivery, "boom"),
        )
        .expect("dead letter");
        let second = fit_copy(
            &dlq,
            mq_core::backend::republish::dead_letter_copy(&delivery, "boom"),
        )
        .expect("second dead letter");
        let dead = receive("jobs-dlq.fifo", &first);
        let replay = prepare(&source, mq_core::backend::republish::replay_copy(&dead))
            .expect("redrive copy");

        let wires = [&sent, &first, &second, &replay];
        let mut dedup_ids: Vec<&str> = Vec::new();
        for wire in wires {
            let (group, dedup) = wire.fifo.as_ref().expect("FIFO entry");
            assert_eq!(group, "customer-7", "same message group");
            assert!(
                !dedup.is_empty() && dedup.len() <= 128,
                "SQS accepts {dedup}"
            );
            assert_eq!(
                attribute(wire, codec::ATTR_MESSAGE_ID),
                Some("order-1"),
                "the mq id stays for application-level dedup"
            );
            dedup_ids.push(dedup);
        }
        assert_eq!(dedup_ids[0], "order-1", "the original's is its id");
        let mut distinct = dedup_ids.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            wires.len(),
            "every copy has its own MessageDeduplicationId: {dedup_ids:?}"
        );
    }

    /// A copy's own dedup id goes through the same sanitising as a message
    /// id: what SQS would refuse becomes a stable hash.
    #[test]
    fn dedup_ids_are_sanitised_like_message_ids() {
        let info = queue("q.fifo", true, 1024 * 1024);
        let wire = prepare(
            &info,
            Message::new("x")
                .with_id("plain")
                .with_dedup_id("has spaces é"),
        )
        .expect("wire");
        let (_, dedup) = wire.fifo.expect("fifo");
        assert_eq!(dedup, codec::deduplication_id("has spaces é"));
        assert!(dedup.starts_with("mq-") && dedup.is_ascii(), "{dedup}");
    }

    /// Defect 4 (issue 14): a dead letter that would exceed the dead-letter
    /// queue's MaximumMessageSize once the reason is added is cut to fit as
    /// SQS counts it (base64 body, attribute names and types, the packed
    /// `mq-headers` JSON with its escapes), not refused.
    #[test]
    fn dead_letter_copy_is_cut_to_fit_the_wire_size() {
        let dlq = queue("jobs-dlq", false, 2048);
        // Binary payload (base64 on the wire) and more headers than slots.
        let mut m = Message::new(vec![0xffu8; 700]).with_id("big-1");
        for i in 0..12 {
            m = m.with_header(format!("h{i:02}"), "value");
        }
        let delivery = mq_core::Received::new("jobs", m.clone(), 3);
        // Control characters: each is six bytes of JSON escape once packed.
        let reason = "line\u{1}\"quoted\" ".repeat(200);
        let copy = mq_core::backend::republish::dead_letter_copy(&delivery, &reason);
        assert!(
            codec::encode(copy.clone(), false).expect("encode").size() > 2048,
            "the uncut copy does not fit"
        );
        let wire = fit_copy(&dlq, copy).expect("cut to fit");
        assert!(wire.size() <= 2048, "{} bytes", wire.size());
        let got = receive("jobs-dlq", &wire).to_message();
        assert_eq!(got.payload(), m.payload(), "payload untouched");
        assert_eq!(got.id(), "big-1");
        for i in 0..12 {
            assert_eq!(got.headers().get(&format!("h{i:02}")), Some("value"));
        }
        let kept = got
            .headers()
            .get(mq_core::headers::DEAD_LETTER_REASON)
            .expect("reason");
        assert!(reason.starts_with(kept) && kept.len() < reason.len());
        assert!(got.headers().get(mq_core::headers::TRUNCATED).is_some());

        // What cannot fit even without the reason is TooLarge (the settler
        // then returns the message to its queue).
        let huge = mq_core::Received::new("jobs", Message::new(vec![b'a'; 4000]), 1);
        let err = fit_copy(
            &dlq,
            mq_core::backend::republish::dead_letter_copy(&huge, "why"),
        )
        .expect_err("too large");
        assert_eq!(err.kind(), ErrorKind::TooLarge);
    }

    mod properties {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// A dead-letter copy that `fit_copy` accepts is within the
            /// queue's size as SQS counts it, with payload, id and the
            /// application's headers intact.
            #[test]
            fn fitted_dead_letters_are_within_the_wire_limit(
                payload in vec(any::<u8>(), 0..1500),
                headers in vec(("[a-z]{1,8}", ".{0,30}"), 0..15),
                reason in ".{0,3000}",
                earlier in proptest::option::of(".{0,600}"),
                max_size in 1024usize..4096,
                fifo in any::<bool>(),
            ) {
                let mut m = Message::new(payload).with_id("p-1");
                for (n, v) in headers {
                    m = m.with_header(n, v);
                }
                if let Some(e) = earlier {
                    m = m.with_header(mq_core::headers::DEAD_LETTER_REASON, e);
                }
                let delivery = mq_core::Received::new("src", m.clone(), 1);
                let copy = mq_core::backend::republish::dead_letter_copy(&delivery, &reason);
                match fit_copy(&queue("src-dlq", fifo, max_size), copy) {
                    Ok(wire) => {
                        prop_assert!(wire.size() <= max_size, "{} > {}", wire.size(), max_size);
                        let got = receive("src-dlq", &wire).to_message();
                        prop_assert_eq!(got.payload(), m.payload());
                        prop_assert_eq!(got.id(), "p-1");
                    }
                    Err(e) => prop_assert_eq!(e.kind(), ErrorKind::TooLarge),
                }
            }
        }
    }
}
