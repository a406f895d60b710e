//! Incoming messages and their settlement.
//!
//! A [`Delivery`] is a received message that the broker still holds for us.
//! It must be settled exactly once: [`Delivery::ack`], [`Delivery::nack`],
//! [`Delivery::nack_after`] or [`Delivery::dead_letter`]. Each takes `self`,
//! so the compiler rules out settling twice. A delivery dropped without being
//! settled is handed back to its backend, which makes it available again
//! (at-least-once): nothing is lost because a task panicked or returned early.

use std::any::Any;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::message::{Extras, Headers, Message, MessageId, JSON_CONTENT_TYPE};

/// What to do with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settlement {
    /// Processing succeeded: remove the message.
    Ack,
    /// Processing failed: deliver the message again, after `delay` if given.
    Nack {
        /// How long the message stays invisible before it is redelivered.
        delay: Option<Duration>,
    },
    /// The message cannot be processed: move it to the dead-letter destination.
    DeadLetter {
        /// Why; recorded in the `mq-dead-letter-reason` header.
        reason: String,
    },
}

/// The backend side of settlement. Backends implement this once and share it
/// (behind an `Arc`) between all deliveries of a consumer; per-delivery data
/// such as a delivery tag travels in [`Received::metadata`].
#[async_trait::async_trait]
pub trait Settler: Send + Sync + 'static {
    /// Settles `delivery` as `settlement` says. Called at most once per delivery.
    async fn settle(&self, delivery: &Delivery, settlement: Settlement) -> Result<()>;

    /// Settles `delivery` without waiting when the backend can (an ack that
    /// only marks an offset or drops a stored message), or hands the
    /// settlement back for [`settle`](Settler::settle). Every settlement
    /// tries this first: it spares the common ack the boxed future of an
    /// async trait method (a fifth of the memory backend's consume path).
    /// The default hands every settlement back.
    fn settle_now(&self, delivery: &Delivery, settlement: Settlement) -> SettleNow {
        let _ = delivery;
        SettleNow::Later(settlement)
    }

    /// The delivery was dropped without being settled. This must not block:
    /// return the message to the broker (or let the broker's lease expire) so
    /// that it is delivered again.
    fn abandon(&self, delivery: &Delivery);
}

/// What [`Settler::settle_now`] did.
#[derive(Debug)]
pub enum SettleNow {
    /// Settled, or failed to, without waiting.
    Done(Result<()>),
    /// This settlement needs to wait: [`Settler::settle`] takes it.
    Later(Settlement),
}

/// The content of a received message, shared by all clones of it.
#[derive(Debug, Clone)]
pub(crate) struct Body {
    pub(crate) payload: Bytes,
    pub(crate) headers: Headers,
    pub(crate) id: MessageId,
    /// Key and content type (the message's box; its delay and dedup id are
    /// not read here).
    pub(crate) extras: Option<Box<Extras>>,
    /// When the message was first sent, if the broker tells. Here rather
    /// than in `Received`: it belongs to the message, and every delivery
    /// (moved a few times on its way to the handler) is 16 bytes smaller.
    pub(crate) timestamp: Option<SystemTime>,
}

impl From<Message> for Body {
    fn from(message: Message) -> Self {
        Body {
            payload: message.payload,
            headers: message.headers,
            id: message.id,
            extras: message.extras,
            timestamp: None,
        }
    }
}

impl Body {
    fn key(&self) -> Option<&str> {
        self.extras.as_ref()?.key.as_deref()
    }

    fn content_type(&self) -> Option<&str> {
        self.extras.as_ref()?.content_type.as_deref()
    }
}

/// A received message's content (payload, headers, id, key, content type
/// and timestamp) without its delivery, shared with the [`Received`] it
/// came from. A backend that keeps what it handed out, to return it to the
/// broker at a close or a rebalance, keeps this: one reference count per
/// delivery, where a clone of the [`Received`] takes four (its source,
/// group and metadata are shared too), and each is an atomic operation on
/// the application's hot path.
#[derive(Clone)]
pub struct Content(Arc<Body>);

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Content")
            .field("id", &self.0.id)
            .field("payload_len", &self.0.payload.len())
            .finish_non_exhaustive()
    }
}

/// A received message: what a handler sees. Cheap to clone: the content is
/// shared, not copied (a retry runs the handler on a clone).
#[derive(Clone)]
pub struct Received {
    pub(crate) body: Arc<Body>,
    pub(crate) source: Arc<str>,
    pub(crate) group: Option<Arc<str>>,
    pub(crate) attempt: u32,
    /// Where the memory backend tracks this delivery (its outstanding
    /// slab); 0 elsewhere. Beside `attempt`, it takes no room of its own.
    pub(crate) slot: u32,
    pub(crate) metadata: Option<Arc<dyn Any + Send + Sync>>,
    /// The backend's name, set by the client's consumer wrapper.
    pub(crate) backend: &'static str,
}

impl Received {
    /// A received message from `source` built from `message` (for backends and tests).
    ///
    /// `attempt` is 1 on the first delivery.
    ///
    /// `source` may be an `Arc<str>` the backend shares between all its
    /// deliveries (no allocation per message).
    pub fn new(source: impl Into<Arc<str>>, message: Message, attempt: u32) -> Self {
        Received {
            body: Arc::new(Body::from(message)),
            source: source.into(),
            group: None,
            attempt: attempt.max(1),
            slot: 0,
            metadata: None,
            backend: "",
        }
    }

    /// A received message from `source` with `content` kept from an earlier
    /// delivery (see [`Content`]), without copying it.
    pub fn from_content(source: impl Into<Arc<str>>, content: Content, attempt: u32) -> Self {
        Received {
            body: content.0,
            source: source.into(),
            group: None,
            attempt: attempt.max(1),
            slot: 0,
            metadata: None,
            backend: "",
        }
    }

    /// Its content, shared (see [`Content`]).
    pub fn content(&self) -> Content {
        Content(self.body.clone())
    }

    /// Sets the consumer group the message was received by (an `Arc<str>`
    /// shared by a consumer's deliveries costs no allocation per message).
    pub fn with_group<G: Into<Arc<str>>>(mut self, group: Option<G>) -> Self {
        self.group = group.map(Into::into);
        self
    }

    /// Sets when the message was first sent.
    pub fn with_timestamp(mut self, timestamp: Option<SystemTime>) -> Self {
        match Arc::get_mut(&mut self.body) {
            // A backend sets it right after `new`: the body is not shared yet.
            Some(body) => body.timestamp = timestamp,
            None => {
                let mut body = Body::clone(&self.body);
                body.timestamp = timestamp;
                self.body = Arc::new(body);
            }
        }
        self
    }

    /// Attaches backend-specific metadata, read back with [`Received::metadata`].
    pub fn with_metadata<T: Any + Send + Sync>(mut self, metadata: T) -> Self {
        self.metadata = Some(Arc::new(metadata));
        self
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.body.payload
    }

    /// The headers as sent.
    pub fn headers(&self) -> &Headers {
        &self.body.headers
    }

    /// The ordering/partition key.
    pub fn key(&self) -> Option<&str> {
        self.body.key()
    }

    /// The message id.
    pub fn id(&self) -> &str {
        self.body.id.as_str()
    }

    /// The content type.
    pub fn content_type(&self) -> Option<&str> {
        self.body.content_type()
    }

    /// The queue or topic the message was received from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The backend that delivered the message (`"memory"`, `"rabbitmq"`, ...),
    /// when it came through a [`Client`](crate::Client); empty otherwise.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The consumer group, if the consumer was in one.
    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }

    /// Delivery attempt: 1 the first time, counted across redeliveries (and,
    /// where the broker allows, across process restarts).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the message was first sent, if the broker tells.
    pub fn timestamp(&self) -> Option<SystemTime> {
        self.body.timestamp
    }

    /// Backend-specific metadata of type `T` (for example a Kafka partition
    /// and offset), if this delivery carries it.
    pub fn metadata<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.metadata.as_deref().and_then(|m| m.downcast_ref::<T>())
    }

    /// Why the message was dead-lettered (`mq-dead-letter-reason`), when it
    /// was read from a dead-letter destination.
    pub fn dead_letter_reason(&self) -> Option<&str> {
        self.body
            .headers
            .get(crate::message::headers::DEAD_LETTER_REASON)
    }

    /// The payload decoded from JSON.
    ///
    /// A failure is an [`ErrorKind::Decode`](crate::ErrorKind::Decode) error,
    /// which is permanent: the retry middleware dead-letters it instead of
    /// retrying a message that can never decode.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        if let Some(ct) = self.content_type() {
            if !is_json_content_type(ct) {
                return Err(Error::decode(format!(
                    "message {} has content type {ct:?}, not JSON",
                    self.id()
                ))
                .with_destination(self.source.to_string()));
            }
        }
        serde_json::from_slice(&self.body.payload).map_err(|e| {
            Error::decode(format!("message {} is not the expected JSON", self.body.id))
                .with_destination(self.source.to_string())
                .with_source(e)
        })
    }

    /// The payload as UTF-8 text.
    pub fn text(&self) -> Result<&str> {
        std::str::from_utf8(&self.body.payload).map_err(|e| {
            Error::decode(format!("message {} is not UTF-8", self.body.id)).with_source(e)
        })
    }

    /// A new message with this one's payload, headers, key, id and content
    /// type (for republishing, e.g. to a retry or dead-letter destination).
    pub fn to_message(&self) -> Message {
        let b = &self.body;
        // Built field by field: `Message::new` would generate an id only
        // to replace it.
        Message {
            payload: b.payload.clone(),
            headers: b.headers.clone(),
            id: b.id.clone(),
            extras: Extras {
                key: b.key().map(str::to_owned),
                content_type: b.content_type().map(str::to_owned),
                delay: None,
                dedup_id: None,
            }
            .boxed(),
        }
    }
}

fn is_json_content_type(ct: &str) -> bool {
    let essence = ct.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case(JSON_CONTENT_TYPE) || essence.ends_with("+json")
}

/// Milliseconds since the Unix epoch (0 for times before it).
pub fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl fmt::Debug for Received {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Received")
            .field("id", &self.body.id)
            .field("source", &self.source)
            .field("group", &self.group)
            .field("attempt", &self.attempt)
            .field("key", &self.body.key())
            .field("payload_len", &self.body.payload.len())
            .field("headers", &self.body.headers)
            .field("content_type", &self.body.content_type())
            .finish()
    }
}

/// A received message the broker holds until it is settled.
///
/// Dereferences to [`Received`] for the message fields. Settle it with one of
/// the consuming methods; it may be moved to and settled from any task.
///
/// Settling twice does not compile:
///
/// ```compile_fail
/// # async fn twice(delivery: mq_core::Delivery) -> mq_core::Result<()> {
/// delivery.ack().await?;
/// delivery.nack().await?; // error[E0382]: use of moved value: `delivery`
/// # Ok(()) }
/// ```
pub struct Delivery {
    received: Received,
    settler: Option<Arc<dyn Settler>>,
    /// Where the client's instrumentation counts this delivery's
    /// settlement (none for a backend used without a `Client`).
    counts: Option<Arc<SettleCounters>>,
}

/// The settlement counters of one (backend, source, group), which the
/// client's consumer wrapper hands each delivery: the delivery counts its
/// own outcome, so no wrapper settler (and no second boxed future per
/// settle) stands between it and the backend.
pub(crate) struct SettleCounters {
    pub(crate) acked: metrics::Counter,
    pub(crate) nacked: metrics::Counter,
    pub(crate) dead_lettered: metrics::Counter,
    pub(crate) abandoned: metrics::Counter,
}

impl SettleCounters {
    fn for_settlement(&self, settlement: &Settlement) -> &metrics::Counter {
        match settlement {
            Settlement::Ack => &self.acked,
            Settlement::Nack { .. } => &self.nacked,
            Settlement::DeadLetter { .. } => &self.dead_lettered,
        }
    }
}

impl Delivery {
    /// A delivery settled through `settler` (for backends).
    pub fn new(received: Received, settler: Arc<dyn Settler>) -> Self {
        Delivery {
            received,
            settler: Some(settler),
            counts: None,
        }
    }

    /// The message fields, to change in place (the instrumentation stamps
    /// the backend's name), and where to count the settlement.
    pub(crate) fn instrument(&mut self, counts: &Arc<SettleCounters>) -> &mut Received {
        self.counts = Some(counts.clone());
        &mut self.received
    }

    /// The message fields.
    pub fn received(&self) -> &Received {
        &self.received
    }

    /// Processing succeeded: remove the message from the broker.
    pub async fn ack(self) -> Result<()> {
        self.settle(Settlement::Ack).await
    }

    /// Processing failed: deliver the message again now (attempt + 1).
    pub async fn nack(self) -> Result<()> {
        self.settle(Settlement::Nack { delay: None }).await
    }

    /// Processing failed: deliver the message again once `delay` has passed.
    /// A delay beyond [`FAR_FUTURE`](crate::time::FAR_FUTURE) is clamped to
    /// it; backends clamp further to what their broker allows (see their docs).
    pub async fn nack_after(self, delay: Duration) -> Result<()> {
        let delay = Some(crate::time::clamp(delay));
        self.settle(Settlement::Nack { delay }).await
    }

    /// The message cannot be processed: move it to the dead-letter
    /// destination with `reason` in the `mq-dead-letter-reason` header.
    pub async fn dead_letter(self, reason: impl Into<String>) -> Result<()> {
        self.settle(Settlement::DeadLetter {
            reason: reason.into(),
        })
        .await
    }

    /// Settles as `settlement` says.
    pub async fn settle(mut self, settlement: Settlement) -> Result<()> {
        let Some(settler) = self.settler.take() else {
            return Err(Error::new(
                crate::ErrorKind::AlreadySettled,
                format!("delivery {} was already settled", self.received.id()),
            ));
        };
        // Taken, not cloned: the delivery is settled from here on, and a
        // counter handle clone is a reference count up and down per settle.
        let counts = self.counts.take();
        let counter = counts.as_ref().map(|c| c.for_settlement(&settlement));
        let result = match settler.settle_now(&self, settlement) {
            SettleNow::Done(result) => result,
            SettleNow::Later(settlement) => settler.settle(&self, settlement).await,
        };
        if let (Ok(()), Some(counter)) = (&result, counter) {
            counter.increment(1);
        }
        result
    }
}

impl Deref for Delivery {
    type Target = Received;
    fn deref(&self) -> &Received {
        &self.received
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(settler) = self.settler.take() {
            if let Some(counts) = &self.counts {
                counts.abandoned.increment(1);
            }
            tracing::debug!(id = %self.received.id(), source = %self.received.source,
                "delivery dropped unsettled; returning it to the broker");
            settler.abandon(self);
        }
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("received", &self.received)
            .field("settled", &self.settler.is_none())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    #[async_trait::async_trait]
    impl Settler for Recorder {
        async fn settle(&self, d: &Delivery, s: Settlement) -> Result<()> {
            self.0.lock().push(format!("{}:{s:?}", d.id()));
            Ok(())
        }
        fn abandon(&self, d: &Delivery) {
            self.0.lock().push(format!("{}:abandoned", d.id()));
        }
    }

    fn delivery(rec: &Arc<Recorder>, id: &str) -> Delivery {
        Delivery::new(
            Received::new("q", Message::new("x").with_id(id), 1),
            rec.clone(),
        )
    }

    #[tokio::test]
    async fn settles_once_and_drop_abandons_only_unsettled() {
        let rec = Arc::new(Recorder::default());
        delivery(&rec, "a").ack().await.expect("ack");
        delivery(&rec, "b")
            .nack_after(Duration::from_secs(1))
            .await
            .expect("nack");
        drop(delivery(&rec, "c"));
        assert_eq!(
            *rec.0.lock(),
            ["a:Ack", "b:Nack { delay: Some(1s) }", "c:abandoned"]
        );
    }

    /// A delivery made again from kept content has the original's fields
    /// and shares its payload.
    #[test]
    fn from_content_shares_the_content_of_the_original() {
        let original = Received::new(
            "q",
            Message::new("body")
                .with_id("m-1")
                .with_key("k")
                .with_header("h", "v"),
            3,
        )
        .with_timestamp(Some(SystemTime::UNIX_EPOCH));
        let again = Received::from_content("q2", original.content(), 0);
        assert_eq!(again.id(), "m-1");
        assert_eq!(again.key(), Some("k"));
        assert_eq!(again.headers().get("h"), Some("v"));
        assert_eq!(again.timestamp(), Some(SystemTime::UNIX_EPOCH));
        assert_eq!(again.source(), "q2");
        assert_eq!(again.attempt(), 1, "attempts start at 1");
        assert_eq!(again.group(), None);
        assert_eq!(again.payload().as_ptr(), original.payload().as_ptr());
        assert!(format!("{:?}", original.content()).contains("m-1"));
    }

    #[test]
    fn json_decode_failure_is_permanent_decode_error() {
        let r = Received::new("q", Message::new("not json"), 1);
        let err = r.json::<serde_json::Value>().expect_err("must fail");
        assert_eq!(err.kind(), crate::ErrorKind::Decode);
        assert!(!err.is_retryable());
        let r = Received::new("q", Message::new("{}").with_content_type("text/plain"), 1);
        assert_eq!(
            r.json::<serde_json::Value>()
                .expect_err("wrong type")
                .kind(),
            crate::ErrorKind::Decode
        );
    }
}
