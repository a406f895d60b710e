//! How a [`Message`] maps to AMQP properties and headers, and back.
//!
//! | `mq` | AMQP |
//! |---|---|
//! | payload | body, byte for byte |
//! | headers | `headers` field table, each value a long string (byte-exact) |
//! | message id | `message-id` property |
//! | content type | `content-type` property |
//! | `mq-correlation-id` header | `correlation-id` property |
//! | `mq-reply-to` header | `reply-to` property |
//! | key | `mq-key` header |
//! | persistence | `delivery-mode` 2 (unless `persistent=false`) |
//! | sent at | `timestamp` property (seconds) |
//!
//! A value longer than the 255 bytes an AMQP property holds (ids, content
//! types) travels in the `mq-message-id` / `mq-content-type` /
//! `mq-correlation-id` / `mq-reply-to` header instead. Incoming headers set
//! by other clients with non-string types become text: numbers in decimal,
//! booleans as `true`/`false`, byte arrays as (lossy) UTF-8; nested tables
//! and arrays (such as the broker's `x-death`) are left out of
//! [`Received::headers`](mq_core::Received::headers) because they have no
//! faithful text form (the raw properties stay available through
//! [`RabbitDelivery::properties`](crate::RabbitDelivery::properties)).
//!
//! Attempts: the broker's `x-delivery-count` (quorum queues) or the
//! `redelivered` flag (classic queues: 1 more, a lower bound) is added to
//! the `mq-attempt` header, which this client raises by one whenever it
//! republishes a nacked message.
//!
//! Everything here reads values another client may have set, so nothing
//! panics or overflows on them: a `timestamp` past what [`SystemTime`]
//! holds (pika's `2**64-1`) is no timestamp; an `mq-attempt` that is not a
//! positive number counts as 1, one beyond `u32` as `u32::MAX`; counts add
//! with saturation; decimals of any scale print exactly.
//!
//! A message the broker itself dead-lettered because it exceeded a quorum
//! queue's delivery limit (latest `x-death` reason `delivery_limit`) is
//! given `mq`'s dead-letter headers: `mq-dead-letter-reason` (an earlier
//! reason moves to `mq-previous-reasons`), `mq-original-source` (the queue
//! it died in) and `mq-dead-lettered-at`.

use std::time::SystemTime;

use bytes::Bytes;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use mq_core::message::headers as names;
use mq_core::{Headers, Message, Result};

use crate::error::too_long;

/// The header carrying the ordering key (AMQP has no such property).
pub(crate) const KEY_HEADER: &str = "mq-key";

/// The broker's redelivery counter on quorum queues.
pub(crate) const DELIVERY_COUNT: &str = "x-delivery-count";

const MAX_SHORT: usize = 255;

/// A message ready for `basic.publish`.
#[derive(Debug)]
pub(crate) struct Wire {
    pub(crate) payload: Bytes,
    pub(crate) properties: BasicProperties,
    /// The `mq-reply-to` value when it is this process's direct reply-to
    /// token (the producer resolves it to a channel).
    pub(crate) reply_token: Option<String>,
}

fn long(value: impl Into<Vec<u8>>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

fn key(name: &str) -> Result<ShortString> {
    ShortString::try_new(name).map_err(|_| too_long("header name", name))
}

/// Encodes `message` for publishing.
pub(crate) fn encode(message: Message, persistent: bool) -> Result<Wire> {
    let parts = message.into_parts();
    let mut table = FieldTable::default();
    let mut properties = BasicProperties::default();
    let mut reply_token = None;
    for (name, value) in parts.headers {
        if value.len() <= MAX_SHORT {
            if name == names::CORRELATION_ID {
                properties = properties.with_correlation_id(
                    ShortString::try_new(value)
                        .map_err(|e| mq_core::Error::config(format!("correlation id: {e}")))?,
                );
                continue;
            }
            if name == names::REPLY_TO {
                if crate::rpc::is_token(&value) {
                    reply_token = Some(value);
                } else {
                    properties = properties.with_reply_to(
                        ShortString::try_new(value)
                            .map_err(|e| mq_core::Error::config(format!("reply-to: {e}")))?,
                    );
                }
                continue;
            }
        }
        table.insert(key(&name)?, long(value));
    }
    if let Some(k) = parts.key {
        table.insert(ShortString::from(KEY_HEADER), long(k));
    }
    if parts.id.len() <= MAX_SHORT {
        properties = properties.with_message_id(
            ShortString::try_new(parts.id)
                .map_err(|e| mq_core::Error::config(format!("message id: {e}")))?,
        );
    } else {
        table.insert(ShortString::from(names::MESSAGE_ID), long(parts.id));
    }
    if let Some(ct) = parts.content_type {
        if ct.len() <= MAX_SHORT {
            properties = properties.with_content_type(
                ShortString::try_new(ct)
                    .map_err(|e| mq_core::Error::config(format!("content type: {e}")))?,
            );
        } else {
            table.insert(ShortString::from(names::CONTENT_TYPE), long(ct));
        }
    }
    if persistent {
        properties = properties.with_delivery_mode(2);
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    properties = properties.with_timestamp(now).with_headers(table);
    Ok(Wire {
        payload: parts.payload,
        properties,
        reply_token,
    })
}

/// Text of a header value, if it has one.
fn text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::DecimalValue(d) => decimal(d.value, d.scale),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
        AMQPValue::Void => String::new(),
        AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_) => return None,
    })
}

/// `value` × 10^-`scale` in decimal, exactly, for every scale (0-255).
fn decimal(value: u32, scale: u8) -> String {
    let digits = value.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = padded.split_at(padded.len() - scale);
    format!("{whole}.{fraction}")
}

/// The attempt an `mq-attempt` value records: a positive number as it is,
/// one too big for `u32` as `u32::MAX`, anything else (zero, negative, not
/// a number) 1. Another client can set any value here.
fn recorded_attempt(value: &str) -> u32 {
    let value = value.trim();
    let digits = value.strip_prefix('+').unwrap_or(value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return 1;
    }
    match digits.parse::<u32>() {
        Ok(0) => 1,
        Ok(n) => n,
        // Only digits, so the number is too big.
        Err(_) => u32::MAX,
    }
}

/// The header RabbitMQ adds when it dead-letters a message: an array of
/// tables, the latest death first.
const X_DEATH: &str = "x-death";

/// `x-death` reason of a quorum queue's delivery limit.
const DELIVERY_LIMIT: &str = "delivery_limit";

fn field<'a>(table: &'a FieldTable, name: &str) -> Option<&'a AMQPValue> {
    table
        .inner()
        .iter()
        .find(|(k, _)| k.as_str() == name)
        .map(|(_, v)| v)
}

/// The queue and time (Unix seconds) of the latest death in an `x-death`
/// value, if the broker dead-lettered the message for its delivery limit.
fn delivery_limit_death(value: &AMQPValue) -> Option<(String, Option<u64>)> {
    let AMQPValue::FieldArray(deaths) = value else {
        return None;
    };
    let AMQPValue::FieldTable(latest) = deaths.as_slice().first()? else {
        return None;
    };
    if field(latest, "reason").and_then(text).as_deref() != Some(DELIVERY_LIMIT) {
        return None;
    }
    let queue = field(latest, "queue").and_then(text).unwrap_or_default();
    let time = field(latest, "time").and_then(integer);
    Some((queue, time))
}

/// Writes `mq`'s dead-letter headers for a message the broker dead-lettered
/// past a delivery limit in `queue` at `time` (Unix seconds).
fn broker_dead_letter_headers(headers: &mut Headers, queue: &str, time: Option<u64>) {
    let reason = format!("RabbitMQ dead-lettered it: delivery limit exceeded in queue `{queue}`");
    if let Some(earlier) = headers.remove(names::DEAD_LETTER_REASON) {
        if earlier != reason {
            let history = match headers.remove(names::PREVIOUS_REASONS) {
                Some(older) => format!("{older}\n{earlier}"),
                None => earlier,
            };
            headers.insert(names::PREVIOUS_REASONS, history);
        }
    }
    headers.insert(names::DEAD_LETTER_REASON, reason);
    if !queue.is_empty() {
        headers.insert(names::ORIGINAL_SOURCE, queue);
    }
    if let Some(ms) = time.and_then(|secs| secs.checked_mul(1000)) {
        headers.insert(names::DEAD_LETTERED_AT, ms.to_string());
    }
}

fn integer(value: &AMQPValue) -> Option<u64> {
    match value {
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::Timestamp(n) => Some(*n),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.trim().parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok(),
        _ => None,
    }
}

/// The fields of a received message.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) message: Message,
    pub(crate) attempt: u32,
    pub(crate) timestamp: Option<SystemTime>,
}

/// Decodes a delivery's body and properties.
pub(crate) fn decode(payload: Bytes, properties: &BasicProperties, redelivered: bool) -> Decoded {
    let mut headers = Headers::new();
    let mut msg_key = None;
    let mut id = None;
    let mut content_type = None;
    let mut delivery_count = None;
    let mut broker_death = None;
    if let Some(table) = properties.headers() {
        for (name, value) in table {
            match name.as_str() {
                KEY_HEADER => msg_key = text(value),
                names::MESSAGE_ID => id = text(value),
                names::CONTENT_TYPE => content_type = text(value),
                other => {
                    if other == DELIVERY_COUNT {
                        delivery_count = integer(value);
                    }
                    if other == X_DEATH {
                        broker_death = delivery_limit_death(value);
                    }
                    if let Some(t) = text(value) {
                        headers.insert(other, t);
                    }
                }
            }
        }
    }
    if let Some((queue, time)) = broker_death {
        broker_dead_letter_headers(&mut headers, &queue, time);
    }
    if let Some(c) = properties.correlation_id() {
        if !headers.contains(names::CORRELATION_ID) {
            headers.insert(names::CORRELATION_ID, c.as_str());
        }
    }
    if let Some(r) = properties.reply_to() {
        if !headers.contains(names::REPLY_TO) {
            headers.insert(names::REPLY_TO, r.as_str());
        }
    }
    let id = properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str().to_owned())
        .or(id)
        // A message from a client that sets no id still needs one.
        .unwrap_or_else(mq_core::message::new_message_id);
    let content_type = properties
        .content_type()
        .as_ref()
        .map(|s| s.as_str().to_owned())
        .or(content_type);

    let recorded = headers.get(names::ATTEMPT).map_or(1, recorded_attempt);
    let redeliveries = match delivery_count {
        Some(n) => u32::try_from(n).unwrap_or(u32::MAX),
        None => u32::from(redelivered),
    };
    let attempt = recorded.saturating_add(redeliveries);

    let mut message = Message::new(payload).with_headers(headers).with_id(id);
    if let Some(k) = msg_key {
        message = message.with_key(k);
    }
    if let Some(ct) = content_type {
        message = message.with_content_type(ct);
    }
    // `None` when not representable (a peer's `2**64-1`), never a panic.
    let timestamp = properties
        .timestamp()
        .and_then(mq_core::time::from_unix_secs);
    Decoded {
        message,
        attempt,
        timestamp,
    }
}

/// The properties of a received message republished as its retry `copy`
/// (made by [`mq_core::republish::retry_copy`]): every property and header
/// of the original kept, headers of every type included, except the
/// broker's delivery counter; `mq-attempt` and `mq-not-before` as the copy
/// has them (the core decides the attempt and scheduling rules).
pub(crate) fn for_retry(properties: &BasicProperties, copy: &Message) -> BasicProperties {
    const FROM_COPY: [&str; 2] = [names::ATTEMPT, names::NOT_BEFORE];
    let mut table = FieldTable::default();
    if let Some(old) = properties.headers() {
        for (name, value) in old {
            let name_str = name.as_str();
            if name_str != DELIVERY_COUNT && !FROM_COPY.contains(&name_str) {
                table.insert(name.clone(), value.clone());
            }
        }
    }
    for name in FROM_COPY {
        if let Some(value) = copy.headers().get(name) {
            table.insert(ShortString::from(name), long(value));
        }
    }
    properties.clone().with_headers(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(m: Message, redelivered: bool) -> Decoded {
        let wire = encode(m, true).expect("encode");
        decode(wire.payload, &wire.properties, redelivered)
    }

    #[test]
    fn every_field_round_trips() {
        let sent = Message::new("p\0\u{e9}")
            .with_id("id-1")
            .with_key("k")
            .with_content_type("text/plain; charset=utf-8")
            .with_header("X-Mixed-Case", "Value")
            .with_header("unicode", "caf\u{e9} \u{2713}")
            .with_header("empty", "")
            .with_header(names::CORRELATION_ID, "c-1")
            .with_header(names::REPLY_TO, "replies");
        let wire = encode(sent.clone(), true).expect("encode");
        assert_eq!(
            wire.properties
                .correlation_id()
                .as_ref()
                .map(|s| s.as_str()),
            Some("c-1")
        );
        assert_eq!(
            wire.properties.reply_to().as_ref().map(|s| s.as_str()),
            Some("replies")
        );
        assert_eq!(
            wire.properties.message_id().as_ref().map(|s| s.as_str()),
            Some("id-1")
        );
        assert_eq!(*wire.properties.delivery_mode(), Some(2));
        let got = decode(wire.payload, &wire.properties, false);
        assert_eq!(got.message.payload(), sent.payload());
        assert_eq!(got.message.id(), "id-1");
        assert_eq!(got.message.key(), Some("k"));
        assert_eq!(got.message.content_type(), sent.content_type());
        assert_eq!(got.message.headers(), sent.headers());
        assert_eq!(got.attempt, 1);
        assert!(got.timestamp.is_some());
    }

    #[test]
    fn long_values_travel_in_headers() {
        let long_id = "i".repeat(300);
        let long_ct = "c".repeat(300);
        let long_corr = "r".repeat(300);
        let got = round_trip(
            Message::new("x")
                .with_id(long_id.clone())
                .with_content_type(long_ct.clone())
                .with_header(names::CORRELATION_ID, long_corr.clone()),
            false,
        );
        assert_eq!(got.message.id(), long_id);
        assert!(!got.message.headers().contains(names::MESSAGE_ID));
        assert_eq!(got.message.content_type(), Some(long_ct.as_str()));
        assert_eq!(
            got.message.headers().get(names::CORRELATION_ID),
            Some(long_corr.as_str())
        );
        let err = encode(Message::new("x").with_header("h".repeat(256), "v"), true)
            .expect_err("header name too long");
        assert_eq!(err.kind(), mq_core::ErrorKind::Config);
    }

    #[test]
    fn attempts() {
        assert_eq!(round_trip(Message::new("x"), false).attempt, 1);
        assert_eq!(round_trip(Message::new("x"), true).attempt, 2);
        let again = Message::new("x").with_header(names::ATTEMPT, "3");
        assert_eq!(round_trip(again.clone(), false).attempt, 3);
        assert_eq!(round_trip(again, true).attempt, 4);
        // Quorum queues count redeliveries exactly.
        let mut props = encode(Message::new("x"), true).expect("encode").properties;
        let mut table = props.headers().clone().unwrap_or_default();
        table.insert(DELIVERY_COUNT.into(), AMQPValue::LongLongInt(2));
        props = props.with_headers(table);
        assert_eq!(decode(Bytes::new(), &props, true).attempt, 3);
        let received = mq_core::Received::new("q", decode(Bytes::new(), &props, true).message, 3);
        let next = for_retry(&props, &mq_core::republish::retry_copy(&received, None));
        let d = decode(Bytes::new(), &next, false);
        assert_eq!(d.attempt, 4);
        assert!(!d.message.headers().contains(DELIVERY_COUNT));
    }

    #[test]
    fn foreign_header_types_become_text() {
        let mut table = FieldTable::default();
        table.insert("n".into(), AMQPValue::LongInt(-5));
        table.insert("b".into(), AMQPValue::Boolean(true));
        table.insert("s".into(), AMQPValue::ShortString("short".into()));
        table.insert(
            "d".into(),
            AMQPValue::DecimalValue(lapin::types::DecimalValue {
                scale: 2,
                value: 1234,
            }),
        );
        table.insert("t".into(), AMQPValue::FieldTable(FieldTable::default()));
        let props = BasicProperties::default().with_headers(table);
        let d = decode(Bytes::from_static(b"x"), &props, false);
        let h = d.message.headers();
        assert_eq!(h.get("n"), Some("-5"));
        assert_eq!(h.get("b"), Some("true"));
        assert_eq!(h.get("s"), Some("short"));
        assert_eq!(h.get("d"), Some("12.34"));
        assert!(!h.contains("t"));
        assert!(!d.message.id().is_empty(), "a message without id gets one");
    }
}
