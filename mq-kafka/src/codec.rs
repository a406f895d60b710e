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

use std::time::SystemTime;

use mq_core::message::headers as h;
use mq_core::time::from_unix_millis;
use mq_core::{Headers, Message, Received};
use rdkafka::message::{Header, Headers as _, OwnedHeaders};

/// Header carrying the time (ms since the Unix epoch) before which a retried
/// message must not be delivered; honoured only on `mq`'s retry topics.
pub use mq_core::message::headers::NOT_BEFORE;

/// Where a delivery sits in Kafka: read it with
/// [`Received::metadata::<KafkaMetadata>()`](mq_core::Received::metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaMetadata {
    /// The topic the record was read from (the retry topic for a retried message;
    /// [`Received::source`](mq_core::Received::source) is always the original topic).
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Which assignment of the partition handed it out (stale after a revoke).
    pub(crate) generation: u64,
}

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

/// What the consumer needs of a fetched record before handing it out.
pub(crate) struct Decoded {
    pub(crate) received: Received,
    pub(crate) not_before: Option<SystemTime>,
}

/// Decodes a fetched record; `source` is the topic reported to the handler
/// (the original topic for records of a retry topic). `from_retry`: the
/// record is from the group's retry topic, the only place `mq-attempt` and
/// `mq-not-before` are honoured. Never panics, whatever the record holds.
pub(crate) fn decode<M: rdkafka::Message>(
    msg: &M,
    source: &str,
    group: &str,
    generation: u64,
    from_retry: bool,
    extra_attempts: u32,
) -> Decoded {
    let mut headers = Headers::new();
    let mut id = None;
    let mut content_type = None;
    let mut attempt = 1u32;
    let mut not_before = None;
    if let Some(hs) = msg.headers() {
        for hd in hs.iter() {
            let value = hd
                .value
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            match hd.key {
                h::MESSAGE_ID => id = Some(value),
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
    let id = id.unwrap_or_else(|| format!("{}-{}-{}", msg.topic(), msg.partition(), msg.offset()));
    let mut message = Message::new(bytes::Bytes::copy_from_slice(msg.payload().unwrap_or(&[])))
        .with_headers(headers)
        .with_id(id);
    if let Some(k) = msg.key() {
        message = message.with_key(String::from_utf8_lossy(k).into_owned());
    }
    if let Some(ct) = content_type {
        message = message.with_content_type(ct);
    }
    let timestamp = msg
        .timestamp()
        .to_millis()
        .and_then(|ms| u64::try_from(ms).ok())
        .and_then(from_unix_millis);
    let received = Received::new(
        source.to_owned(),
        message,
        attempt.saturating_add(extra_attempts),
    )
    .with_group(Some(group.to_owned()))
    .with_timestamp(timestamp)
    .with_metadata(KafkaMetadata {
        topic: msg.topic().to_owned(),
        partition: msg.partition(),
        offset: msg.offset(),
        generation,
    });
    Decoded {
        received,
        not_before,
    }
}
