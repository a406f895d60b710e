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
//! [`RabbitMetadata::properties`](crate::RabbitMetadata::properties)).
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
use mq_core::backend::MessageParts;
use mq_core::message::headers as names;
use mq_core::{Headers, Message, Result};

use crate::error::too_long;

/// The header carrying the ordering key (AMQP has no such property).
pub(crate) const KEY_HEADER: &str = "mq-key";

/// The broker's redelivery counter on quorum queues.
pub(crate) const DELIVERY_COUNT: &str = "x-delivery-count";

const MAX_SHORT: usize = 255;

/// RabbitMQ's direct reply-to pseudo-queue.
pub(crate) const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// How the reply address of a requester of this process starts: a private
/// token the producer resolves to its reply channel (see `rpc.rs`); it
/// never reaches the broker.
pub(crate) const REPLY_TOKEN_PREFIX: &str = "amq.rabbitmq.reply-to#";

/// Whether `reply_to` is a token made by `ReplyRoutes::register`.
pub(crate) fn is_token(reply_to: &str) -> bool {
    reply_to.starts_with(REPLY_TOKEN_PREFIX)
}

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
                if is_token(&value) {
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
        .filter(|id| !id.is_empty())
        .or(id.filter(|id| !id.is_empty()))
        // A message from a client that sets no id (or an empty one) still
        // needs one.
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

    let mut parts = MessageParts::new(payload, id);
    parts.headers = headers;
    parts.key = msg_key;
    parts.content_type = content_type;
    let message = Message::from(parts);
    // `None` when not representable (a peer's `2**64-1`), never a panic.
    let timestamp = properties
        .timestamp()
        .and_then(mq_core::backend::time::from_unix_secs);
    Decoded {
        message,
        attempt,
        timestamp,
    }
}

/// The properties of a received message republished as its retry `copy`
/// (made by [`mq_core::backend::republish::retry_copy`]): every property and header
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
        let next = for_retry(
            &props,
            &mq_core::backend::republish::retry_copy(&received, None),
        );
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

/// Property tests of the decoder fed by the broker and by other clients:
/// arbitrary AMQP properties never panic it, and `mq` messages survive
/// encode -> decode exactly.
#[cfg(test)]
mod properties {
    use super::*;
    use lapin::types::{DecimalValue, FieldArray};
    use mq_core::Received;
    use proptest::collection::{btree_map, vec};
    use proptest::prelude::*;

    /// Cases per property (bounded so the suite stays fast in CI).
    const CASES: u32 = 1024;

    fn short_string() -> impl Strategy<Value = ShortString> {
        // At most 60 chars of up to 4 bytes: within AMQP's 255 bytes.
        ".{0,60}".prop_map(|s| ShortString::try_new(s).unwrap_or_default())
    }

    /// Header names, with the ones the decoder treats specially mixed in.
    fn name() -> impl Strategy<Value = ShortString> {
        prop_oneof![
            4 => short_string(),
            1 => prop_oneof![
                Just(DELIVERY_COUNT),
                Just(names::ATTEMPT),
                Just(names::NOT_BEFORE),
                Just(names::MESSAGE_ID),
                Just(names::CONTENT_TYPE),
                Just(names::CORRELATION_ID),
                Just(names::REPLY_TO),
                Just(names::DEAD_LETTER_REASON),
                Just(KEY_HEADER),
                Just(X_DEATH),
            ]
            .prop_map(ShortString::from),
        ]
    }

    fn timestamp() -> impl Strategy<Value = u64> {
        prop_oneof![
            any::<u64>(),
            Just(u64::MAX),
            Just(i64::MAX as u64),
            Just(i64::MAX as u64 + 1),
            Just(0),
            0u64..4_000_000_000,
        ]
    }

    fn leaf() -> impl Strategy<Value = AMQPValue> {
        prop_oneof![
            any::<bool>().prop_map(AMQPValue::Boolean),
            any::<i8>().prop_map(AMQPValue::ShortShortInt),
            any::<u8>().prop_map(AMQPValue::ShortShortUInt),
            any::<i16>().prop_map(AMQPValue::ShortInt),
            any::<u16>().prop_map(AMQPValue::ShortUInt),
            any::<i32>().prop_map(AMQPValue::LongInt),
            any::<u32>().prop_map(AMQPValue::LongUInt),
            any::<i64>().prop_map(AMQPValue::LongLongInt),
            any::<f32>().prop_map(AMQPValue::Float),
            any::<f64>().prop_map(AMQPValue::Double),
            (any::<u8>(), any::<u32>())
                .prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
            short_string().prop_map(AMQPValue::ShortString),
            // Text, numbers as text (attempt counts) and arbitrary bytes.
            ".{0,40}".prop_map(|s| AMQPValue::LongString(s.into())),
            "[-+ ]?[0-9]{0,25} ?".prop_map(|s| AMQPValue::LongString(s.into())),
            vec(any::<u8>(), 0..64).prop_map(|b| AMQPValue::LongString(b.into())),
            timestamp().prop_map(AMQPValue::Timestamp),
            vec(any::<u8>(), 0..64).prop_map(|b| AMQPValue::ByteArray(b.into())),
            Just(AMQPValue::Void),
        ]
    }

    fn table_of(
        inner: impl Strategy<Value = AMQPValue>,
        size: usize,
    ) -> impl Strategy<Value = FieldTable> {
        vec((name(), inner), 0..size).prop_map(|entries| {
            let mut t = FieldTable::default();
            for (k, v) in entries {
                t.insert(k, v);
            }
            t
        })
    }

    /// Any field value, nested tables and arrays included (depth 3).
    fn value() -> impl Strategy<Value = AMQPValue> {
        leaf().prop_recursive(3, 48, 6, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..6).prop_map(|v| AMQPValue::FieldArray(FieldArray::from(v))),
                table_of(inner, 6).prop_map(AMQPValue::FieldTable),
            ]
        })
    }

    /// An `x-death` as the broker writes it, with arbitrary field values.
    fn x_death() -> impl Strategy<Value = AMQPValue> {
        let reason = prop_oneof![
            Just(AMQPValue::LongString(DELIVERY_LIMIT.into())),
            Just(AMQPValue::LongString("expired".into())),
            value(),
        ];
        (
            reason,
            value(),
            prop_oneof![timestamp().prop_map(AMQPValue::Timestamp), value()],
            vec(value(), 0..3),
        )
            .prop_map(|(reason, queue, time, rest)| {
                let mut death = FieldTable::default();
                death.insert("reason".into(), reason);
                death.insert("queue".into(), queue);
                death.insert("time".into(), time);
                let mut deaths = vec![AMQPValue::FieldTable(death)];
                deaths.extend(rest);
                AMQPValue::FieldArray(FieldArray::from(deaths))
            })
    }

    fn properties() -> impl Strategy<Value = BasicProperties> {
        let headers = (table_of(value(), 12), proptest::option::of(x_death()));
        (
            proptest::option::of(headers),
            proptest::option::of(timestamp()),
            proptest::option::of(short_string()),
            proptest::option::of(short_string()),
            proptest::option::of(short_string()),
            proptest::option::of(short_string()),
            proptest::option::of(short_string()),
        )
            .prop_map(|(headers, ts, id, ct, corr, reply, expiration)| {
                let mut p = BasicProperties::default();
                if let Some((mut table, death)) = headers {
                    if let Some(d) = death {
                        table.insert(X_DEATH.into(), d);
                    }
                    p = p.with_headers(table);
                }
                if let Some(ts) = ts {
                    p = p.with_timestamp(ts);
                }
                if let Some(v) = id {
                    p = p.with_message_id(v);
                }
                if let Some(v) = ct {
                    p = p.with_content_type(v);
                }
                if let Some(v) = corr {
                    p = p.with_correlation_id(v);
                }
                if let Some(v) = reply {
                    p = p.with_reply_to(v);
                }
                if let Some(v) = expiration {
                    p = p.with_expiration(v);
                }
                p
            })
    }

    /// A header name `mq` round-trips as it is: not one of the names that
    /// stand for a field of the message (key, id, content type).
    fn app_name() -> impl Strategy<Value = String> {
        ".{0,60}".prop_filter("names standing for message fields", |n| {
            ![KEY_HEADER, names::MESSAGE_ID, names::CONTENT_TYPE].contains(&n.as_str())
        })
    }

    fn message() -> impl Strategy<Value = Message> {
        (
            vec(any::<u8>(), 0..256),
            btree_map(app_name(), ".{0,300}", 0..12),
            proptest::option::of(".{0,300}"),
            ".{1,300}",
            proptest::option::of(".{0,300}"),
        )
            .prop_map(|(payload, headers, key, id, ct)| {
                let mut m = Message::new(payload).with_id(id);
                for (k, v) in headers {
                    // A direct reply-to token is resolved by the producer,
                    // not sent.
                    if k == names::REPLY_TO && is_token(&v) {
                        continue;
                    }
                    m = m.with_header(k, v);
                }
                if let Some(k) = key {
                    m = m.with_key(k);
                }
                if let Some(ct) = ct {
                    m = m.with_content_type(ct);
                }
                m
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(CASES))]

        /// Whatever a peer or the broker puts in the properties, decoding
        /// does not panic, the attempt is at least 1, the message has an id,
        /// and a timestamp is kept exactly when `SystemTime` can hold it.
        #[test]
        fn decode_never_panics(
            props in properties(),
            payload in vec(any::<u8>(), 0..64),
            redelivered in any::<bool>(),
        ) {
            let d = decode(Bytes::from(payload.clone()), &props, redelivered);
            prop_assert!(d.attempt >= 1);
            prop_assert!(!d.message.id().is_empty());
            prop_assert_eq!(d.message.payload().as_ref(), payload.as_slice());
            let expected = props.timestamp().and_then(mq_core::backend::time::from_unix_secs);
            prop_assert_eq!(d.timestamp, expected);
            // The retry copy of anything received encodes and decodes again.
            let received = Received::new("q", d.message, d.attempt);
            let copy = mq_core::backend::republish::retry_copy(&received, None);
            let next = decode(Bytes::new(), &for_retry(&props, &copy), false);
            prop_assert_eq!(next.attempt, d.attempt.saturating_add(1));
        }

        /// `mq` messages survive encode -> AMQP -> decode exactly: payload,
        /// id, key, content type and every header, byte for byte.
        #[test]
        fn mq_messages_round_trip(m in message()) {
            let wire = encode(m.clone(), true).expect("names within 255 bytes encode");
            let d = decode(wire.payload, &wire.properties, false);
            prop_assert_eq!(d.message.payload(), m.payload());
            prop_assert_eq!(d.message.id(), m.id());
            prop_assert_eq!(d.message.key(), m.key());
            prop_assert_eq!(d.message.content_type(), m.content_type());
            prop_assert_eq!(d.message.headers(), m.headers());
            prop_assert!(d.timestamp.is_some());
        }

        /// Attempt counts from peers are clamped, never overflow.
        #[test]
        fn attempts_are_clamped(
            recorded in prop_oneof![".{0,30}", "[-+ ]?[0-9]{0,30} ?"],
            count in prop_oneof![value(), any::<i64>().prop_map(AMQPValue::LongLongInt)],
            redelivered in any::<bool>(),
        ) {
            let mut table = FieldTable::default();
            table.insert(names::ATTEMPT.into(), AMQPValue::LongString(recorded.clone().into()));
            table.insert(DELIVERY_COUNT.into(), count);
            let props = BasicProperties::default().with_headers(table);
            let d = decode(Bytes::new(), &props, redelivered);
            let base = recorded_attempt(&recorded);
            prop_assert!(d.attempt >= base);
            prop_assert!(base >= 1);
        }

        /// Decimals of every scale print exactly.
        #[test]
        fn decimals_print_exactly(value in any::<u32>(), scale in any::<u8>()) {
            let s = decimal(value, scale);
            let digits: String = s.chars().filter(char::is_ascii_digit).collect();
            let expected = value.to_string();
            prop_assert_eq!(digits.trim_start_matches('0'), expected.trim_start_matches('0'));
            if scale > 0 {
                prop_assert_eq!(s.split_once('.').map(|(_, f)| f.len()), Some(usize::from(scale)));
            }
        }
    }

    #[test]
    fn extreme_values() {
        assert_eq!(recorded_attempt("-5"), 1);
        assert_eq!(recorded_attempt("0"), 1);
        assert_eq!(recorded_attempt(" 7 "), 7);
        assert_eq!(recorded_attempt("+7"), 7);
        assert_eq!(recorded_attempt("99999999999999999999"), u32::MAX);
        assert_eq!(recorded_attempt("abc"), 1);
        assert_eq!(recorded_attempt(""), 1);
        assert_eq!(decimal(5, 3), "0.005");
        assert_eq!(decimal(1234, 2), "12.34");
        assert_eq!(decimal(u32::MAX, 0), "4294967295");
        let props = BasicProperties::default().with_timestamp(u64::MAX);
        assert_eq!(decode(Bytes::new(), &props, false).timestamp, None);
        let mut table = FieldTable::default();
        table.insert(DELIVERY_COUNT.into(), AMQPValue::LongLongInt(i64::MAX));
        table.insert(
            names::ATTEMPT.into(),
            AMQPValue::LongString("99999999999999999999".into()),
        );
        let props = BasicProperties::default().with_headers(table);
        assert_eq!(decode(Bytes::new(), &props, true).attempt, u32::MAX);
    }

    #[test]
    fn broker_dead_letters_get_a_reason() {
        let mut death = FieldTable::default();
        death.insert(
            "reason".into(),
            AMQPValue::LongString(DELIVERY_LIMIT.into()),
        );
        death.insert("queue".into(), AMQPValue::LongString("orders".into()));
        death.insert("time".into(), AMQPValue::Timestamp(1_700_000_000));
        let mut table = FieldTable::default();
        table.insert(
            X_DEATH.into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        );
        table.insert(
            names::DEAD_LETTER_REASON.into(),
            AMQPValue::LongString("earlier".into()),
        );
        let props = BasicProperties::default().with_headers(table);
        let d = decode(Bytes::new(), &props, false);
        let h = d.message.headers();
        assert!(h
            .get(names::DEAD_LETTER_REASON)
            .is_some_and(|r| r.contains("delivery limit") && r.contains("orders")));
        assert_eq!(h.get(names::PREVIOUS_REASONS), Some("earlier"));
        assert_eq!(h.get(names::ORIGINAL_SOURCE), Some("orders"));
        assert_eq!(h.get(names::DEAD_LETTERED_AT), Some("1700000000000"));
    }
}
