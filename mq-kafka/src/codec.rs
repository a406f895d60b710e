//! How an `mq` message maps onto a Kafka record and back.
//!
//! | `mq` | Kafka record |
//! |---|---|
//! | payload | value |
//! | key | key (the partition key) |
//! | headers | headers, in order, values as UTF-8 bytes |
//! | id | header `mq-message-id` (absent on foreign records: `<topic>-<partition>-<offset>`) |
//! | content type | header `mq-content-type` |
//! | attempt | header `mq-attempt` on records of the retry topic (elsewhere 1: a record of the source or dead-letter topic is a first delivery) |
//! | not before (retry delay) | header `mq-not-before`, milliseconds since the Unix epoch, honoured only on the group's retry topic |
//!
//! `mq-message-id` and `mq-content-type` are read into fields and removed
//! from the headers a handler sees, and so is `mq-not-before` on the retry
//! topic; every other header is passed through unchanged, so headers set by
//! a native client arrive byte-exact (values that are not UTF-8 are decoded
//! lossily, since `mq` headers are strings; a header without a value reads
//! as empty). On the source topic `mq-not-before` is an ordinary header: a
//! foreign producer cannot stall a partition with it.
//!
//! Every number in a header or record is parsed checked and clamped: an
//! attempt that does not parse, is 0 or exceeds `u32` counts as 1 or
//! `u32::MAX`; a time that is not representable is ignored.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use mq_core::backend::time::from_unix_millis;
use mq_core::message::headers as h;
use mq_core::{Headers, Message, Received};
use rdkafka::message::{Header, Headers as _, OwnedHeaders};

use crate::metadata::KafkaMetadata;

/// Header carrying the time (ms since the Unix epoch) before which a retried
/// message must not be delivered; honoured only on `mq`'s retry topics.
pub use mq_core::message::headers::NOT_BEFORE;

/// Record headers for `message`, with its id and content type as `mq-` headers.
pub(crate) fn record_headers(message: &Message) -> OwnedHeaders {
    let mut out = OwnedHeaders::new_with_capacity(message.headers().len() + 2);
    for (k, v) in message.headers().iter() {
        out = out.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    out = out.insert(Header {
        key: h::MESSAGE_ID,
        value: Some(message.id().as_bytes()),
    });
    if let Some(ct) = message.content_type() {
        out = out.insert(Header {
            key: h::CONTENT_TYPE,
            value: Some(ct.as_bytes()),
        });
    }
    out
}

/// An upper bound of the bytes the record of `message` takes beyond
/// [`Message::encoded_len`]: the record batch header (61), the record's own
/// fields (at most 36: length, attributes, timestamp and offset deltas, key
/// and value lengths, header count), and per header two length varints (at
/// most 5 each), plus the names of the id and content-type headers. What
/// librdkafka compares with `message.max.bytes` is within this.
pub(crate) fn record_overhead(message: &Message) -> usize {
    const BATCH: usize = 61;
    const RECORD: usize = 36;
    const PER_HEADER: usize = 10;
    // Room for one header more: `mq-truncated`, added when a copy is cut.
    let headers = message.headers().len() + 3;
    BATCH + RECORD + PER_HEADER * headers + h::MESSAGE_ID.len() + h::CONTENT_TYPE.len()
}

/// `mq-attempt` as sent by anyone: a number from 1 to `u32::MAX`; what does
/// not parse counts as a first delivery.
pub(crate) fn parse_attempt(value: &str) -> u32 {
    let digits = value.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return 1;
    }
    // All digits: the parse fails only on overflow.
    digits.parse::<u32>().unwrap_or(u32::MAX).max(1)
}

/// A time in milliseconds since the Unix epoch, as a header carries it;
/// `None` if it does not parse or is not representable.
pub(crate) fn parse_millis(value: &str) -> Option<SystemTime> {
    value.trim().parse::<u64>().ok().and_then(from_unix_millis)
}

/// What a fetched record says, read without any consumer state: the poll
/// thread parses a burst of records this way before it takes the
/// consumer's lock once for all of them.
pub(crate) struct Parsed {
    pub(crate) message: Message,
    /// `mq-attempt` (records of the retry topic only), else 1.
    pub(crate) attempt: u32,
    pub(crate) timestamp: Option<SystemTime>,
    /// `mq-not-before` (records of the retry topic only).
    pub(crate) not_before: Option<SystemTime>,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
}

/// Where the poll thread copies payloads to: small payloads of a burst
/// share one allocation (a chunk), so a record costs one allocation fewer.
/// The application frees deliveries on its own thread; with the system
/// allocator every such free of a poll-thread allocation takes that
/// allocator arena's lock, which the poll thread needs for its next
/// allocation (perf: most of the poll thread's blocking at 450k records/s).
/// A delivery held unsettled keeps its whole chunk alive: at most
/// [`PAYLOAD_CHUNK`] per delivery, so 16 MiB for a prefetch of 1,000 in the
/// worst case, when every held delivery is alone in its chunk.
#[derive(Debug)]
pub(crate) struct PayloadChunks {
    chunk: bytes::BytesMut,
    /// Bytes per chunk; 0: every payload gets its own allocation.
    size: usize,
}

/// Bytes per shared payload chunk.
pub(crate) const PAYLOAD_CHUNK: usize = 16 * 1024;

/// Payloads above this get an allocation of their own.
const SHARED_PAYLOAD_MAX: usize = 1024;

impl PayloadChunks {
    /// Chunks of `size` bytes (0: no sharing, for a single record).
    pub(crate) fn new(size: usize) -> Self {
        PayloadChunks {
            chunk: bytes::BytesMut::new(),
            size,
        }
    }

    /// A copy of `payload`, in the current chunk if it is small.
    pub(crate) fn copy(&mut self, payload: &[u8]) -> bytes::Bytes {
        if payload.is_empty() {
            return bytes::Bytes::new();
        }
        if payload.len() > SHARED_PAYLOAD_MAX.min(self.size) {
            return bytes::Bytes::copy_from_slice(payload);
        }
        if self.chunk.capacity() - self.chunk.len() < payload.len() {
            self.chunk = bytes::BytesMut::with_capacity(self.size);
        }
        self.chunk.extend_from_slice(payload);
        self.chunk.split().freeze()
    }
}

/// `bytes` as text: borrowed when they are UTF-8 (checked at full speed),
/// else with U+FFFD for each invalid sequence.
fn text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Parses a fetched record, its payload copied through `chunks`.
/// `from_retry`: the record is from the group's retry topic, the only
/// place `mq-attempt` and `mq-not-before` are honoured. Never panics,
/// whatever the record holds.
pub(crate) fn parse<M: rdkafka::Message>(
    msg: &M,
    from_retry: bool,
    chunks: &mut PayloadChunks,
) -> Parsed {
    let mut headers = Headers::new();
    let mut id = None;
    let mut content_type = None;
    let mut attempt = 1u32;
    let mut not_before = None;
    if let Some(hs) = msg.headers() {
        for hd in hs.iter() {
            let raw = hd.value.unwrap_or_default();
            if hd.key == h::MESSAGE_ID {
                // Borrowed when valid UTF-8: the id goes into the message
                // without an allocation of its own.
                id = Some(text(raw));
                continue;
            }
            let value = text(raw).into_owned();
            match hd.key {
                h::CONTENT_TYPE => content_type = Some(value),
                h::ATTEMPT if from_retry => {
                    attempt = parse_attempt(&value);
                    headers.insert(hd.key, value);
                }
                NOT_BEFORE if from_retry => not_before = parse_millis(&value),
                _ => {
                    headers.insert(hd.key, value);
                }
            }
        }
    }
    let id = id.unwrap_or_else(|| {
        Cow::Owned(format!(
            "{}-{}-{}",
            msg.topic(),
            msg.partition(),
            msg.offset()
        ))
    });
    let payload = chunks.copy(msg.payload().unwrap_or(&[]));
    let mut message = Message::from_wire(payload, &id).with_headers(headers);
    if let Some(key) = msg.key() {
        message = message.with_key(text(key));
    }
    if let Some(ct) = content_type {
        message = message.with_content_type(ct);
    }
    let timestamp = msg
        .timestamp()
        .to_millis()
        .and_then(|ms| u64::try_from(ms).ok())
        .and_then(from_unix_millis);
    Parsed {
        message,
        attempt,
        timestamp,
        not_before,
        partition: msg.partition(),
        offset: msg.offset(),
    }
}

impl Parsed {
    /// The delivery of the record: `source` is the topic reported to the
    /// handler (the original topic for records of a retry topic), `topic`
    /// the record's own topic name; both, like `group`, are shared by every
    /// record of a consumer (no allocation per record for them).
    /// `extra_attempts`: deliveries of this offset the broker cannot count
    /// (handed back by a rebalance or a close).
    pub(crate) fn into_received(
        self,
        topic: Arc<str>,
        source: &Arc<str>,
        group: Option<&Arc<str>>,
        generation: u64,
        extra_attempts: u32,
    ) -> Received {
        Received::new(
            source.clone(),
            self.message,
            self.attempt.saturating_add(extra_attempts),
        )
        .with_group(group.cloned())
        .with_timestamp(self.timestamp)
        .with_metadata(KafkaMetadata {
            topic,
            partition: self.partition,
            offset: self.offset,
            generation,
        })
    }
}

/// Parses a fetched record and makes its delivery in one step (see
/// [`parse`] and [`Parsed::into_received`]).
pub(crate) fn decode<M: rdkafka::Message>(
    msg: &M,
    topic: Arc<str>,
    source: &Arc<str>,
    group: Option<&Arc<str>>,
    generation: u64,
    from_retry: bool,
    extra_attempts: u32,
) -> Received {
    // One record: a shared chunk would only hold it alone.
    parse(msg, from_retry, &mut PayloadChunks::new(0)).into_received(
        topic,
        source,
        group,
        generation,
        extra_attempts,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use mq_core::backend::republish::retry_copy;
    use proptest::prelude::*;
    use rdkafka::message::OwnedMessage;
    use rdkafka::Timestamp;

    /// A record's delivery and the `mq-not-before` it carries.
    struct Decoded {
        received: Received,
        not_before: Option<SystemTime>,
    }

    /// A record of topic `source` read by `group`, parsed and made into a
    /// delivery as the consumer does.
    fn decode_as(
        msg: &OwnedMessage,
        source: &str,
        group: &str,
        generation: u64,
        from_retry: bool,
        extra: u32,
    ) -> Decoded {
        let source: Arc<str> = source.into();
        let group: Arc<str> = group.into();
        let parsed = parse(msg, from_retry, &mut PayloadChunks::new(0));
        let not_before = parsed.not_before;
        Decoded {
            received: parsed.into_received(
                source.clone(),
                &source,
                Some(&group),
                generation,
                extra,
            ),
            not_before,
        }
    }

    fn record(
        payload: Option<Vec<u8>>,
        key: Option<Vec<u8>>,
        timestamp: Timestamp,
        headers: OwnedHeaders,
    ) -> OwnedMessage {
        OwnedMessage::new(payload, key, "t".into(), timestamp, 3, 42, Some(headers))
    }

    #[test]
    fn mq_headers_are_parsed_checked() {
        assert_eq!(parse_attempt("3"), 3);
        assert_eq!(parse_attempt(" 7 "), 7);
        assert_eq!(parse_attempt("0"), 1);
        assert_eq!(parse_attempt("-1"), 1);
        assert_eq!(parse_attempt("x"), 1);
        assert_eq!(parse_attempt(""), 1);
        assert_eq!(parse_attempt("18446744073709551616"), u32::MAX);
        assert_eq!(parse_millis("99999999999999999").is_some(), cfg!(unix));
        assert_eq!(parse_millis("-5"), None);
        assert_eq!(parse_millis("soon"), None);
    }

    /// Defect 6b of issue 14: `mq-not-before` and `mq-attempt` are
    /// honoured only on the retry topic; on the source topic they are
    /// ordinary headers.
    #[test]
    fn not_before_counts_only_on_the_retry_topic() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: NOT_BEFORE,
                value: Some("99999999999999999"),
            })
            .insert(Header {
                key: h::ATTEMPT,
                value: Some("5"),
            });
        let msg = record(Some(b"x".to_vec()), None, Timestamp::NotAvailable, headers);
        let source = decode_as(&msg, "t", "g", 1, false, 0);
        assert_eq!(source.not_before, None);
        assert_eq!(source.received.attempt(), 1);
        assert_eq!(
            source.received.headers().get(NOT_BEFORE),
            Some("99999999999999999")
        );
        let retry = decode_as(&msg, "t", "g", 1, true, 0);
        assert!(retry.not_before.is_some() || !cfg!(unix));
        assert_eq!(retry.received.attempt(), 5);
        assert_eq!(retry.received.headers().get(NOT_BEFORE), None);
    }

    fn header_name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(h::MESSAGE_ID.to_owned()),
            Just(h::CONTENT_TYPE.to_owned()),
            Just(h::ATTEMPT.to_owned()),
            Just(NOT_BEFORE.to_owned()),
            Just(h::SENT_AT.to_owned()),
            Just(h::DEAD_LETTER_REASON.to_owned()),
            "\\PC{0,12}",
            ".{0,12}",
        ]
    }

    fn header_value() -> impl Strategy<Value = Option<Vec<u8>>> {
        prop_oneof![
            Just(None),
            proptest::collection::vec(any::<u8>(), 0..24).prop_map(Some),
            prop_oneof![
                Just("18446744073709551616".to_owned()),
                Just("99999999999999999999999".to_owned()),
                Just("-1".to_owned()),
                Just("0".to_owned()),
                Just(u64::MAX.to_string()),
                Just(i64::MAX.to_string()),
                "[0-9]{0,25}",
            ]
            .prop_map(|s| Some(s.into_bytes())),
        ]
    }

    fn timestamp() -> impl Strategy<Value = Timestamp> {
        prop_oneof![
            Just(Timestamp::NotAvailable),
            any::<i64>().prop_map(Timestamp::CreateTime),
            any::<i64>().prop_map(Timestamp::LogAppendTime),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Whatever a foreign producer puts in a record (any header names,
        /// non-UTF-8 or null values, bogus `mq-*` values, any timestamp),
        /// decoding never panics, the attempt stays in 1..=u32::MAX, and
        /// outside the retry topic nothing schedules the record.
        #[test]
        fn decoding_foreign_records_never_panics(
            headers in proptest::collection::vec((header_name(), header_value()), 0..12),
            payload in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
            ts in timestamp(),
            from_retry in any::<bool>(),
            extra in any::<u32>(),
        ) {
            let mut hs = OwnedHeaders::new();
            for (k, v) in &headers {
                hs = hs.insert(Header { key: k.as_str(), value: v.as_deref() });
            }
            let msg = record(payload.clone(), key, ts, hs);
            let d = decode_as(&msg, "src", "grp", 7, from_retry, extra);
            prop_assert!(d.received.attempt() >= 1);
            if !from_retry {
                prop_assert_eq!(d.received.attempt(), 1u32.saturating_add(extra));
                prop_assert!(d.not_before.is_none());
            }
            prop_assert_eq!(d.received.payload().as_ref(), payload.as_deref().unwrap_or(&[]));
            for (k, _) in &headers {
                // librdkafka hands header names out as C strings: a name
                // arrives cut at its first NUL.
                let k = k.split('\0').next().unwrap_or("");
                let reserved = [h::MESSAGE_ID, h::CONTENT_TYPE].contains(&k)
                    || (from_retry && k == NOT_BEFORE);
                prop_assert_eq!(d.received.headers().contains(k), !reserved, "{}", k);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// mq -> Kafka record -> mq keeps payload, key, id, content type and
        /// every header byte-exact (on the source topic, `mq-*` headers
        /// other than id and content type are ordinary headers too); a retry
        /// copy read from the retry topic counts one attempt more.
        #[test]
        fn messages_round_trip_through_records(
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            headers in proptest::collection::btree_map(
                header_name().prop_filter("id and content type are fields; librdkafka names are C strings", |k| {
                    k != h::MESSAGE_ID && k != h::CONTENT_TYPE && !k.contains('\0')
                }),
                ".{0,24}",
                0..8,
            ),
            key in proptest::option::of(".{0,16}"),
            id in "\\PC{1,40}",
            content_type in proptest::option::of("[a-z/+.-]{1,20}"),
            attempt in 1u32..,
        ) {
            let mut m = Message::new(payload).with_id(id).with_headers(headers.into_iter().collect());
            if let Some(k) = key {
                m = m.with_key(k);
            }
            if let Some(ct) = content_type {
                m = m.with_content_type(ct);
            }
            let msg = record(
                Some(m.payload().to_vec()),
                m.key().map(|k| k.as_bytes().to_vec()),
                Timestamp::CreateTime(1_700_000_000_000),
                record_headers(&m),
            );
            let d = decode_as(&msg, "src", "grp", 1, false, 0).received;
            prop_assert_eq!(d.payload(), m.payload());
            prop_assert_eq!(d.headers(), m.headers());
            prop_assert_eq!(d.key(), m.key());
            prop_assert_eq!(d.id(), m.id());
            prop_assert_eq!(d.content_type(), m.content_type());
            prop_assert_eq!(d.timestamp(), from_unix_millis(1_700_000_000_000));

            let original = Received::new("src", m, attempt);
            let copy = retry_copy(&original, Some(std::time::Duration::from_secs(60)));
            let msg = record(Some(copy.payload().to_vec()), None, Timestamp::NotAvailable, record_headers(&copy));
            let again = decode_as(&msg, "src", "grp", 1, true, 0);
            prop_assert_eq!(again.received.attempt(), attempt.saturating_add(1));
            prop_assert!(again.not_before.is_some());
            prop_assert_eq!(again.received.id(), original.id());
        }
    }

    #[test]
    fn payloads_of_a_burst_share_chunks() {
        let mut chunks = PayloadChunks::new(64);
        let a = chunks.copy(b"first payload");
        let b = chunks.copy(&[7u8; 40]);
        assert_eq!(b.as_ptr(), a[a.len()..].as_ptr(), "a and b share a chunk");
        // Does not fit the rest of the chunk: a new one.
        let c = chunks.copy(&[9u8; 40]);
        assert_ne!(c.as_ptr(), b[b.len()..].as_ptr());
        // Larger than a chunk: its own allocation.
        assert_eq!(&chunks.copy(&[1u8; 100])[..], &[1u8; 100]);
        assert!(chunks.copy(b"").is_empty());
        assert_eq!(&PayloadChunks::new(0).copy(b"x")[..], b"x");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Every copy equals its payload, whatever the sizes and whichever
        /// earlier copies are dropped (a chunk lives while any copy in it does).
        #[test]
        fn payload_chunks_copy_exactly(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..1500), 0..64),
            keep in proptest::collection::vec(any::<bool>(), 64),
            size in prop_oneof![Just(0usize), Just(64usize), Just(PAYLOAD_CHUNK)],
        ) {
            let mut chunks = PayloadChunks::new(size);
            let mut kept = Vec::new();
            for (i, p) in payloads.iter().enumerate() {
                let copy = chunks.copy(p);
                prop_assert_eq!(&copy[..], &p[..]);
                if keep[i] {
                    kept.push((i, copy));
                }
            }
            drop(chunks);
            for (i, copy) in kept {
                prop_assert_eq!(&copy[..], &payloads[i][..]);
            }
        }
    }
}
