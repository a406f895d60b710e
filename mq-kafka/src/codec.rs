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
//! | not before (retry delay) | header `mq-not-before`, milliseconds since the Unix epoch |
//!
//! `mq-message-id`, `mq-content-type` and `mq-not-before` are read into
//! fields and removed from the headers a handler sees; every other header is passed through unchanged,
//! so headers set by a native client arrive byte-exact (values that are not
//! UTF-8 are decoded lossily, since `mq` headers are strings).

use std::time::{Duration, SystemTime};

use mq_core::delivery::unix_millis;
use mq_core::message::headers as h;
use mq_core::{Headers, Message, Received};
use rdkafka::message::{BorrowedMessage, Header, Headers as _, OwnedHeaders};
use rdkafka::Message as _;

/// Header carrying the time (ms since the Unix epoch) before which a retried
/// message must not be delivered.
pub const NOT_BEFORE: &str = "mq-not-before";

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
pub(crate) fn record_headers(message: &Message, extra: &[(&str, &str)]) -> OwnedHeaders {
    let mut out = OwnedHeaders::new_with_capacity(message.headers().len() + 2 + extra.len());
    for (k, v) in message.headers().iter() {
        if extra.iter().any(|(e, _)| *e == k) {
            continue;
        }
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
    for (k, v) in extra {
        out = out.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    out
}

/// What the consumer needs of a fetched record before handing it out.
pub(crate) struct Decoded {
    pub(crate) received: Received,
    pub(crate) not_before: Option<SystemTime>,
}

/// Decodes a fetched record; `source` is the topic reported to the handler
/// (the original topic for records of a retry topic).
pub(crate) fn decode(
    msg: &BorrowedMessage<'_>,
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
                h::ATTEMPT => {
                    if from_retry {
                        attempt = value.parse().unwrap_or(1);
                    }
                    headers.insert(hd.key, value);
                }
                NOT_BEFORE => {
                    not_before = value
                        .parse::<u64>()
                        .ok()
                        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
                }
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
        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
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

/// The copy of `received` that goes to the retry topic: attempt + 1 and, for
/// a delayed nack, the time before which it must not be delivered.
pub(crate) fn retry_message(
    received: &Received,
    delay: Option<Duration>,
) -> (Message, Vec<(&'static str, String)>) {
    let mut extra = vec![(h::ATTEMPT, received.attempt().saturating_add(1).to_string())];
    if let Some(d) = delay.filter(|d| !d.is_zero()) {
        extra.push((NOT_BEFORE, unix_millis(SystemTime::now() + d).to_string()));
    }
    (received.to_message(), extra)
}
