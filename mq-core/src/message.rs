//! The outgoing message and its headers.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use crate::error::{Error, Result};

/// Header names `mq` itself reads and writes. Every name starts with the
/// reserved prefix `mq-`; applications should not use that prefix.
pub mod headers {
    /// The reserved prefix of every header `mq` sets.
    pub const RESERVED_PREFIX: &str = "mq-";
    /// Delivery attempt carried by backends that count attempts in a header.
    pub const ATTEMPT: &str = "mq-attempt";
    /// Why a message was dead-lettered.
    pub const DEAD_LETTER_REASON: &str = "mq-dead-letter-reason";
    /// The queue or topic a dead-lettered message came from.
    pub const ORIGINAL_SOURCE: &str = "mq-original-source";
    /// The consumer group a dead-lettered message was consumed by.
    pub const ORIGINAL_GROUP: &str = "mq-original-group";
    /// When the message was dead-lettered, in milliseconds since the Unix epoch.
    pub const DEAD_LETTERED_AT: &str = "mq-dead-lettered-at";
    /// Correlation id linking a reply to its request.
    pub const CORRELATION_ID: &str = "mq-correlation-id";
    /// Where the reply to a request should be sent.
    pub const REPLY_TO: &str = "mq-reply-to";
    /// The message id, for backends without a native id property.
    pub const MESSAGE_ID: &str = "mq-message-id";
    /// The content type, for backends without a native property.
    pub const CONTENT_TYPE: &str = "mq-content-type";
    /// When the message was first sent, in milliseconds since the Unix epoch.
    pub const SENT_AT: &str = "mq-sent-at";
    /// A retry copy must not be delivered before this time (milliseconds since
    /// the Unix epoch). Honoured only on `mq`'s own retry destinations.
    pub const NOT_BEFORE: &str = "mq-not-before";
    /// How many times the message was replayed from a dead-letter destination.
    pub const REPLAYED: &str = "mq-replayed";
    /// Reasons of earlier dead-letterings, oldest first, one per line.
    pub const PREVIOUS_REASONS: &str = "mq-previous-reasons";
    /// Set on a dead-letter copy whose reason headers were cut to fit the
    /// destination's size limit: the number of bytes removed.
    pub const TRUNCATED: &str = "mq-truncated";
    /// The scan that moved a dead letter to the back of its queue
    /// ([`RotatingReader`](crate::dead_letter_reader::RotatingReader)).
    pub const DLQ_SCAN: &str = "mq-dlq-scan";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace state.
    pub const TRACESTATE: &str = "tracestate";
}

/// The content type `send_json` and [`Message::json`] record.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// Message headers: string keys to string values, iterated in key order.
///
/// Keys are case-sensitive and kept byte-exact, so a header set by a client in
/// another language comes back with the same spelling.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers(BTreeMap<String, String>);

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`, returning the previous value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> Option<String> {
        self.0.insert(key.into(), value.into())
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.0.remove(key)
    }

    /// Whether `key` is set.
    pub fn contains(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Headers in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Total bytes of keys and values, used for size limits.
    pub fn encoded_len(&self) -> usize {
        self.0.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter()).finish()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Headers(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl<K: Into<String>, V: Into<String>> Extend<(K, V)> for Headers {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        self.0
            .extend(iter.into_iter().map(|(k, v)| (k.into(), v.into())));
    }
}

impl IntoIterator for Headers {
    type Item = (String, String);
    type IntoIter = std::collections::btree_map::IntoIter<String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// A new message id: a UUIDv7 (milliseconds since the epoch, then 74
/// random bits), so ids sort by creation time to the millisecond and two
/// processes never collide in practice. The random bits come from a
/// per-thread `fastrand` generator: ids need uniqueness, not secrecy, and
/// this costs no system call per message.
pub fn new_message_id() -> String {
    MessageId::generate().into_string()
}

/// The eight lower-case hex digits of `x`, most significant first, without
/// a loop: each nibble is moved into a byte of its own, then every byte
/// becomes its ASCII digit at once (`+ '0'`, and `+ 39` more for `a`-`f`).
fn hex8(x: u32) -> [u8; 8] {
    let x = u64::from(x);
    let x = (x | (x << 16)) & 0x0000_FFFF_0000_FFFF;
    let x = (x | (x << 8)) & 0x00FF_00FF_00FF_00FF;
    let nibbles = (x | (x << 4)) & 0x0F0F_0F0F_0F0F_0F0F;
    // Bit 4 of `nibble + 6` is set exactly for the nibbles 10-15.
    let letters = ((nibbles + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (nibbles + 0x3030_3030_3030_3030 + letters * 39).to_be_bytes()
}

/// Bytes of an id kept inside the message instead of on the heap: a
/// hyphenated UUID (36) fits, with room for a short prefix.
const INLINE_ID: usize = 38;

/// A message id, stored inline when it fits (every generated UUID does).
/// A `String` id cost an allocation when a message was made, another for
/// each copy a pipeline keeps for its report, and their frees, on every
/// message (a quarter of the memory backend's per-message allocator work).
#[derive(Clone)]
pub(crate) enum MessageId {
    /// Always valid UTF-8: only ever copied from a `&str`.
    Inline {
        len: u8,
        bytes: [u8; INLINE_ID],
    },
    Heap(String),
}

impl MessageId {
    /// A fresh UUIDv7 (see [`new_message_id`]), laid out as RFC 9562
    /// section 5.7 says: 48 bits of Unix milliseconds, the version (7), 12
    /// random bits, the variant (`10`), 62 random bits. Built from two
    /// random words and hex-encoded eight digits at a time, since an id is
    /// made for every message sent (callgrind: 256 instructions per id, 84
    /// of them the clock read, against 290 with `uuid`'s builder and
    /// encoder). The milliseconds come from the coarse clock (`clock.rs`),
    /// up to a kernel tick behind: RFC 9562 lets a generator use a clock
    /// of less precision, and ids made within one tick stay unique through
    /// their 74 random bits.
    pub(crate) fn generate() -> Self {
        let millis = crate::clock::now_coarse()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let high = ((millis & 0xFFFF_FFFF_FFFF) << 16) | 0x7000 | (fastrand::u64(..) & 0x0FFF);
        let low = (fastrand::u64(..) & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
        MessageId::hyphenated(high, low)
    }

    /// The 8-4-4-4-12 lower-case hex form of the UUID `high`, `low`.
    fn hyphenated(high: u64, low: u64) -> Self {
        const LEN: usize = 36;
        let (h0, h1) = (hex8((high >> 32) as u32), hex8(high as u32));
        let (l0, l1) = (hex8((low >> 32) as u32), hex8(low as u32));
        let mut bytes = [b'-'; INLINE_ID];
        bytes[0..8].copy_from_slice(&h0);
        bytes[9..13].copy_from_slice(&h1[..4]);
        bytes[14..18].copy_from_slice(&h1[4..]);
        bytes[19..23].copy_from_slice(&l0[..4]);
        bytes[24..28].copy_from_slice(&l0[4..]);
        bytes[28..36].copy_from_slice(&l1);
        MessageId::Inline {
            len: LEN as u8,
            bytes,
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // Cannot fail (see the variant); "" would be the harmless answer.
            MessageId::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            MessageId::Heap(s) => s,
        }
    }

    /// Bytes of the id, without the UTF-8 check of `as_str` (every send's
    /// size check asks).
    pub(crate) fn len(&self) -> usize {
        match self {
            MessageId::Inline { len, .. } => usize::from(*len),
            MessageId::Heap(s) => s.len(),
        }
    }

    pub(crate) fn into_string(self) -> String {
        match self {
            MessageId::Heap(s) => s,
            inline => inline.as_str().to_owned(),
        }
    }
}

impl From<&str> for MessageId {
    fn from(s: &str) -> Self {
        match u8::try_from(s.len()) {
            Ok(len) if s.len() <= INLINE_ID => {
                let mut bytes = [0u8; INLINE_ID];
                bytes[..s.len()].copy_from_slice(s.as_bytes());
                MessageId::Inline { len, bytes }
            }
            _ => MessageId::Heap(s.to_owned()),
        }
    }
}

impl From<String> for MessageId {
    fn from(s: String) -> Self {
        if s.len() <= INLINE_ID {
            MessageId::from(s.as_str())
        } else {
            MessageId::Heap(s)
        }
    }
}

impl PartialEq for MessageId {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for MessageId {}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message to send.
///
/// Built with chained setters:
///
/// ```
/// use mq_core::Message;
/// use std::time::Duration;
///
/// let msg = Message::new("resize photo 42")
///     .with_header("tenant", "acme")
///     .with_key("photo-42")
///     .with_delay(Duration::from_secs(5));
/// assert_eq!(msg.headers().get("tenant"), Some("acme"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    pub(crate) payload: Bytes,
    pub(crate) headers: Headers,
    pub(crate) id: MessageId,
    /// `None` while every optional field is unset.
    pub(crate) extras: Option<Box<Extras>>,
}

/// The fields most messages leave unset, behind one pointer. A message is
/// moved several times on its way to a broker; at 192 bytes each move was a
/// `memcpy` call (about ten per send on the memory backend), at 104 it is a
/// few vector moves. The shared body of a received message keeps the same
/// box, so it is smaller too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Extras {
    pub(crate) key: Option<String>,
    pub(crate) content_type: Option<String>,
    pub(crate) delay: Option<Duration>,
    pub(crate) dedup_id: Option<String>,
}

impl Extras {
    /// `None` when nothing is set, so equal messages compare equal.
    pub(crate) fn boxed(self) -> Option<Box<Extras>> {
        (self != Extras::default()).then(|| Box::new(self))
    }
}

impl Message {
    /// A message with `payload` and a fresh UUIDv7 id.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Message {
            payload: payload.into(),
            headers: Headers::new(),
            id: MessageId::generate(),
            extras: None,
        }
    }

    /// A received message as a backend decodes it: `payload` and the `id`
    /// its wire format carried (none is generated). An id of up to 40 bytes
    /// (a UUID) is stored in the message, so this allocates nothing for it;
    /// set the rest with the `with_*` methods.
    pub fn from_wire(payload: Bytes, id: &str) -> Self {
        Message {
            payload,
            headers: Headers::new(),
            id: MessageId::from(id),
            extras: None,
        }
    }

    /// A message whose payload is `value` as JSON, with content type `application/json`.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        let payload = serde_json::to_vec(value)
            .map_err(|e| Error::decode("cannot encode value as JSON").with_source(e))?;
        Ok(Message::new(payload).with_content_type(JSON_CONTENT_TYPE))
    }

    /// Adds a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key, value);
        self
    }

    /// Replaces all headers.
    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// Sets the ordering/partition key: messages with the same key keep their order.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.extras_mut().key = Some(key.into());
        self
    }

    /// Sets the message id (used for deduplication); the default is a UUIDv7.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = MessageId::from(id.into());
        self
    }

    /// Sets the content type (MIME type) of the payload.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.extras_mut().content_type = Some(content_type.into());
        self
    }

    /// Delays delivery: consumers do not see the message before `delay` has passed.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.extras_mut().delay = Some(delay);
        self
    }

    /// Sets the broker's deduplication id (SQS FIFO `MessageDeduplicationId`),
    /// which defaults to the message id. Copies `mq` republishes (retry,
    /// dead letter, replay) get a fresh one, so a broker never drops them as
    /// duplicates of the original, while the message id stays the same for
    /// application-level deduplication.
    pub fn with_dedup_id(mut self, dedup_id: impl Into<String>) -> Self {
        self.extras_mut().dedup_id = Some(dedup_id.into());
        self
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The broker deduplication id: the one set with
    /// [`Message::with_dedup_id`], else the message id.
    pub fn dedup_id(&self) -> &str {
        self.extras
            .as_ref()
            .and_then(|e| e.dedup_id.as_deref())
            .unwrap_or(self.id.as_str())
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The headers, to change them.
    pub fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }

    /// The ordering/partition key.
    pub fn key(&self) -> Option<&str> {
        self.extras.as_ref()?.key.as_deref()
    }

    /// The message id.
    pub fn id(&self) -> &str {
        self.id.as_str()
    }

    /// The content type.
    pub fn content_type(&self) -> Option<&str> {
        self.extras.as_ref()?.content_type.as_deref()
    }

    /// The delivery delay.
    pub fn delay(&self) -> Option<Duration> {
        self.extras.as_ref()?.delay
    }

    fn extras_mut(&mut self) -> &mut Extras {
        self.extras.get_or_insert_with(Box::default)
    }

    /// Bytes this message occupies for size limits: payload plus headers, key,
    /// id and content type. Backends compare this against their limit.
    pub fn encoded_len(&self) -> usize {
        self.payload.len()
            + self.headers.encoded_len()
            + self.key().map_or(0, str::len)
            + self.id.len()
            + self.content_type().map_or(0, str::len)
    }

    /// Splits the message into its parts (for backends).
    pub fn into_parts(self) -> MessageParts {
        let extras = self.extras.map(|e| *e).unwrap_or_default();
        MessageParts {
            payload: self.payload,
            headers: self.headers,
            key: extras.key,
            id: self.id.into_string(),
            content_type: extras.content_type,
            delay: extras.delay,
            dedup_id: extras.dedup_id,
        }
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("key", &self.key())
            .field("payload_len", &self.payload.len())
            .field("headers", &self.headers)
            .field("content_type", &self.content_type())
            .field("delay", &self.delay())
            .field(
                "dedup_id",
                &self.extras.as_ref().and_then(|e| e.dedup_id.as_ref()),
            )
            .finish()
    }
}

impl From<MessageParts> for Message {
    fn from(p: MessageParts) -> Self {
        Message {
            payload: p.payload,
            headers: p.headers,
            id: MessageId::from(p.id),
            extras: Extras {
                key: p.key,
                content_type: p.content_type,
                delay: p.delay,
                dedup_id: p.dedup_id,
            }
            .boxed(),
        }
    }
}

/// The fields of a [`Message`], owned, for backends that map them to a wire format.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MessageParts {
    /// The payload.
    pub payload: Bytes,
    /// The headers.
    pub headers: Headers,
    /// The ordering/partition key.
    pub key: Option<String>,
    /// The message id.
    pub id: String,
    /// The content type.
    pub content_type: Option<String>,
    /// The delivery delay.
    pub delay: Option<Duration>,
    /// The broker deduplication id, when it differs from the message id
    /// (see [`Message::dedup_id`]).
    pub dedup_id: Option<String>,
}

impl MessageParts {
    /// The parts of a message with `payload` and the given `id` and nothing
    /// else, for a backend decoding a received message: unlike
    /// [`Message::new`] no id is generated only to be replaced.
    pub fn new(payload: Bytes, id: String) -> Self {
        MessageParts {
            payload,
            headers: Headers::new(),
            key: None,
            id,
            content_type: None,
            delay: None,
            dedup_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_uuid_v7() {
        let a = Message::new("a");
        let b = Message::new("b");
        assert_ne!(a.id(), b.id());
        let parsed = uuid::Uuid::parse_str(a.id()).expect("uuid");
        assert_eq!(parsed.get_version_num(), 7);
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(a.id(), parsed.hyphenated().to_string(), "canonical form");
        // The timestamp is now, to the millisecond.
        let (secs, _) = parsed.get_timestamp().expect("v7 has one").to_unix();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        assert!(now.abs_diff(secs) <= 2, "{secs} vs {now}");
    }

    #[test]
    fn hex_digits_of_every_nibble() {
        assert_eq!(&hex8(0x0123_4567), b"01234567");
        assert_eq!(&hex8(0x89ab_cdef), b"89abcdef");
        assert_eq!(&hex8(0), b"00000000");
        assert_eq!(&hex8(u32::MAX), b"ffffffff");
    }

    proptest::proptest! {
        /// The hyphenated form is exactly `uuid`'s for any bits.
        #[test]
        fn hyphenated_matches_uuid(high: u64, low: u64) {
            let ours = MessageId::hyphenated(high, low);
            let theirs = uuid::Uuid::from_u64_pair(high, low).hyphenated().to_string();
            proptest::prop_assert_eq!(ours.as_str(), theirs.as_str());
        }
    }

    #[test]
    fn json_sets_content_type() {
        let m = Message::json(&serde_json::json!({"n": 1})).expect("json");
        assert_eq!(m.content_type(), Some(JSON_CONTENT_TYPE));
        assert_eq!(m.payload().as_ref(), br#"{"n":1}"#);
    }

    #[test]
    fn headers_keep_exact_keys_in_order() {
        let h: Headers = [("b", "2"), ("A", "1"), ("a", "3")].into_iter().collect();
        let keys: Vec<_> = h.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["A", "a", "b"]);
    }

    #[test]
    fn optional_fields_round_trip_and_unset_ones_take_no_box() {
        let m = Message::new("p");
        assert!(m.extras.is_none());
        assert_eq!(Message::from(m.clone().into_parts()), m);
        let m = m
            .with_key("k")
            .with_content_type("text/plain")
            .with_delay(Duration::from_secs(3))
            .with_dedup_id("d");
        assert_eq!(
            (m.key(), m.content_type(), m.delay(), m.dedup_id()),
            (
                Some("k"),
                Some("text/plain"),
                Some(Duration::from_secs(3)),
                "d"
            )
        );
        assert_eq!(Message::from(m.clone().into_parts()), m);
        assert!(std::mem::size_of::<Message>() <= 104);
    }

    #[test]
    fn ids_inline_or_on_the_heap_read_back_the_same() {
        for id in [
            "",
            "a",
            &"x".repeat(INLINE_ID),
            &"y".repeat(INLINE_ID + 1),
            "é✓",
        ] {
            let m = Message::new("p").with_id(id);
            assert_eq!(m.id(), id);
            assert_eq!(m.clone().into_parts().id, id);
            assert_eq!(Message::from(m.into_parts()).id(), id);
        }
        assert!(matches!(
            MessageId::generate(),
            MessageId::Inline { len: 36, .. }
        ));
    }

    #[test]
    fn debug_hides_payload_bytes() {
        let m = Message::new("secret payload");
        let dbg = format!("{m:?}");
        assert!(!dbg.contains("secret payload"));
        assert!(dbg.contains("payload_len: 14"));
    }
}
