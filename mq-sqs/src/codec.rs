//! How an `mq` message maps onto an SQS message and back.
//!
//! SQS carries a text body and at most 10 message attributes, and both may
//! contain only the characters XML allows. So:
//!
//! * The body is the payload when the payload is such text; otherwise it is
//!   the payload in standard base64 and the attribute `mq-body-encoding` says
//!   `base64` (an empty payload, which SQS does not accept, is a one-space
//!   body with `mq-body-encoding: empty`).
//! * The message id, content type and key travel as the String attributes
//!   `mq-message-id`, `mq-content-type` and `mq-key`.
//! * Headers travel as String attributes of the same name while there are
//!   slots left. A header whose name SQS does not accept as an attribute name
//!   (or that starts with `AWS.`/`Amazon.`), whose value is empty or has a
//!   character SQS refuses, and every header past the ninth attribute, goes
//!   into one JSON object in the String attribute `mq-headers`. Any number of
//!   headers therefore round-trips byte-exactly.
//! * Received attributes set by other clients become headers: String and
//!   Number values as they are, Binary values in standard base64.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use aws_sdk_sqs::types::{Message as SqsMessage, MessageSystemAttributeName};
use aws_smithy_types::base64;
use bytes::Bytes;
use mq_core::message::MessageParts;
use mq_core::{headers, Error, Message, Result};

use crate::config::{secs_i32, MAX_DELAY};
use crate::BACKEND;

/// Attribute carrying the message id.
pub const ATTR_MESSAGE_ID: &str = headers::MESSAGE_ID;
/// Attribute carrying the content type.
pub const ATTR_CONTENT_TYPE: &str = headers::CONTENT_TYPE;
/// Attribute carrying the ordering key.
pub const ATTR_KEY: &str = "mq-key";
/// Attribute saying how the body encodes the payload (`base64`, `empty`).
pub const ATTR_BODY_ENCODING: &str = "mq-body-encoding";
/// Attribute carrying, as one JSON object, the headers that are not attributes.
pub const ATTR_HEADERS: &str = "mq-headers";

/// The most message attributes SQS accepts on one message.
pub const MAX_ATTRIBUTES: usize = 10;

/// The data type of every attribute `mq` writes.
const STRING: &str = "String";

/// The message group of keyless messages on FIFO queues.
pub const DEFAULT_GROUP_ID: &str = "mq-default";

/// An `mq` message ready for `SendMessage`/`SendMessageBatch`.
#[derive(Debug, Clone)]
pub(crate) struct Wire {
    pub(crate) body: String,
    /// String attributes, name to value.
    pub(crate) attributes: Vec<(String, String)>,
    /// `DelaySeconds`, if the message has a delay.
    pub(crate) delay_seconds: Option<i32>,
    /// `MessageGroupId` and `MessageDeduplicationId` (FIFO queues only).
    pub(crate) fifo: Option<(String, String)>,
}

impl Wire {
    /// Bytes SQS counts against `MaximumMessageSize`: the body plus each
    /// attribute's name, data type and value.
    pub(crate) fn size(&self) -> usize {
        self.body.len()
            + self
                .attributes
                .iter()
                .map(|(n, v)| n.len() + STRING.len() + v.len())
                .sum::<usize>()
    }
}

/// Whether SQS accepts `c` in a body or attribute value (the XML character set).
fn sqs_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

fn sqs_text(s: &str) -> bool {
    s.chars().all(sqs_char)
}

/// Whether SQS accepts `name` as a message attribute name: up to 256 of
/// `A-Za-z0-9_-.`, no leading, trailing or doubled `.`, not `AWS.`/`Amazon.`.
pub(crate) fn valid_attribute_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && !lower.starts_with("aws.")
        && !lower.starts_with("amazon.")
}

/// Whether `(name, value)` can be its own String attribute.
fn native(name: &str, value: &str) -> bool {
    valid_attribute_name(name) && !value.is_empty() && sqs_text(value)
}

/// JSON for the `mq-headers` attribute, escaped so SQS accepts every
/// character (serde_json escapes control characters; U+FFFE and U+FFFF are
/// escaped here).
fn packed_json(packed: &BTreeMap<&str, &str>) -> Result<String> {
    let json = serde_json::to_string(packed).map_err(|e| {
        Error::decode("cannot encode headers as JSON")
            .with_backend(BACKEND)
            .with_source(e)
    })?;
    if sqs_text(&json) {
        return Ok(json);
    }
    let mut out = String::with_capacity(json.len() + 12);
    for c in json.chars() {
        if sqs_char(c) {
            out.push(c);
        } else {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        }
    }
    Ok(out)
}

/// Encodes `message` for a queue (`fifo`: a FIFO queue).
pub(crate) fn encode(message: Message, fifo: bool) -> Result<Wire> {
    let MessageParts {
        payload,
        headers,
        key,
        id,
        content_type,
        delay,
        ..
    } = message.into_parts();

    let delay_seconds =
        match delay {
            None => None,
            Some(d) if d.is_zero() => None,
            Some(_) if fifo => return Err(Error::unsupported(
                "SQS FIFO queues take no per-message delay (set the queue's DelaySeconds instead)",
            )
            .with_backend(BACKEND)
            .with_operation("send")),
            Some(d) if d > MAX_DELAY => {
                return Err(Error::unsupported(format!(
                "SQS delays a message by at most 15 minutes (DelaySeconds 900); asked for {d:?}"
            ))
                .with_backend(BACKEND)
                .with_operation("send"))
            }
            Some(d) => Some(secs_i32(d)),
        };

    let (body, encoding) = match std::str::from_utf8(&payload) {
        Ok("") => (" ".to_owned(), Some("empty")),
        Ok(text) if sqs_text(text) => (text.to_owned(), None),
        _ => (base64::encode(&payload), Some("base64")),
    };

    // Our own fields first, so they get the native slots.
    let mut fields: Vec<(&str, &str)> = Vec::with_capacity(headers.len() + 4);
    fields.push((ATTR_MESSAGE_ID, &id));
    if let Some(ct) = &content_type {
        fields.push((ATTR_CONTENT_TYPE, ct));
    }
    if let Some(k) = &key {
        fields.push((ATTR_KEY, k));
    }
    if let Some(e) = encoding {
        fields.push((ATTR_BODY_ENCODING, e));
    }
    fields.extend(headers.iter().filter(|(k, _)| !is_reserved_attribute(k)));

    let all_native = fields.len() <= MAX_ATTRIBUTES && fields.iter().all(|(n, v)| native(n, v));
    let mut attributes = Vec::with_capacity(fields.len().min(MAX_ATTRIBUTES));
    let mut packed = BTreeMap::new();
    for (name, value) in fields {
        if all_native || (attributes.len() < MAX_ATTRIBUTES - 1 && native(name, value)) {
            attributes.push((name.to_owned(), value.to_owned()));
        } else {
            packed.insert(name, value);
        }
    }
    if !packed.is_empty() {
        attributes.push((ATTR_HEADERS.to_owned(), packed_json(&packed)?));
    }

    let fifo = fifo.then(|| {
        let group = key.clone().unwrap_or_else(|| DEFAULT_GROUP_ID.to_owned());
        (group, dedup_id(&id))
    });
    Ok(Wire {
        body,
        attributes,
        delay_seconds,
        fifo,
    })
}

/// Names `mq` uses for its own fields; a header of that name is dropped on
/// send (the field wins) and never shown as a header on receive.
fn is_reserved_attribute(name: &str) -> bool {
    matches!(
        name,
        ATTR_MESSAGE_ID | ATTR_CONTENT_TYPE | ATTR_KEY | ATTR_BODY_ENCODING | ATTR_HEADERS
    )
}

/// A FIFO `MessageDeduplicationId` from a message id: the id itself when SQS
/// accepts it (up to 128 of alphanumerics and punctuation), else a stable hash.
fn dedup_id(id: &str) -> String {
    if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) {
        return id.to_owned();
    }
    // FNV-1a, 128 bits as two 64-bit halves: stable across processes.
    let mut a: u64 = 0xcbf2_9ce4_8422_2325;
    let mut b: u64 = 0x8422_2325_cbf2_9ce4;
    for byte in id.bytes() {
        a = (a ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        b = (b ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3 ^ 0x10);
    }
    format!("mq-{a:016x}{b:016x}")
}

/// A received SQS message, decoded.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) message: Message,
    pub(crate) attempt: u32,
    pub(crate) sent_at: Option<SystemTime>,
}

/// Decodes a received SQS message (ours or another client's).
pub(crate) fn decode(msg: &SqsMessage) -> Decoded {
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    let mut packed: Option<String> = None;
    for (name, value) in msg.message_attributes().into_iter().flatten() {
        let text = if value.data_type().starts_with("Binary") {
            value
                .binary_value()
                .map(|b| base64::encode(b.as_ref()))
                .unwrap_or_default()
        } else {
            value.string_value().unwrap_or_default().to_owned()
        };
        if name == ATTR_HEADERS {
            packed = Some(text);
        } else {
            fields.insert(name.clone(), text);
        }
    }
    if let Some(json) = packed {
        match serde_json::from_str::<BTreeMap<String, String>>(&json) {
            Ok(map) => fields.extend(map),
            // Not ours after all: keep it as an ordinary header.
            Err(_) => {
                fields.insert(ATTR_HEADERS.to_owned(), json);
            }
        }
    }

    let system = msg.attributes();
    let system_attr = |name: MessageSystemAttributeName| system.and_then(|a| a.get(&name));
    let id = fields
        .remove(ATTR_MESSAGE_ID)
        .or_else(|| msg.message_id().map(str::to_owned))
        .unwrap_or_default();
    let content_type = fields.remove(ATTR_CONTENT_TYPE);
    let key = fields.remove(ATTR_KEY).or_else(|| {
        system_attr(MessageSystemAttributeName::MessageGroupId)
            .filter(|g| g.as_str() != DEFAULT_GROUP_ID)
            .cloned()
    });
    let body = msg.body().unwrap_or_default();
    let payload = match fields.remove(ATTR_BODY_ENCODING).as_deref() {
        Some("empty") => Bytes::new(),
        Some("base64") => match base64::decode(body) {
            Ok(bytes) => Bytes::from(bytes),
            Err(e) => {
                tracing::warn!(%id, error = %e, "mq-body-encoding says base64 but the body is not; delivering the body as it is");
                Bytes::copy_from_slice(body.as_bytes())
            }
        },
        Some(other) => {
            tracing::warn!(%id, encoding = other, "unknown mq-body-encoding; delivering the body as it is");
            Bytes::copy_from_slice(body.as_bytes())
        }
        None => Bytes::copy_from_slice(body.as_bytes()),
    };

    let mut message = Message::new(payload)
        .with_id(id)
        .with_headers(fields.into_iter().collect());
    if let Some(k) = key {
        message = message.with_key(k);
    }
    if let Some(ct) = content_type {
        message = message.with_content_type(ct);
    }
    let attempt = system_attr(MessageSystemAttributeName::ApproximateReceiveCount)
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    let sent_at = system_attr(MessageSystemAttributeName::SentTimestamp)
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
    Decoded {
        message,
        attempt,
        sent_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sqs::types::MessageAttributeValue;

    /// What SQS would hand back for `wire`.
    fn received(wire: &Wire, receive_count: u32) -> SqsMessage {
        let mut b = SqsMessage::builder()
            .message_id("sqs-generated-id")
            .receipt_handle("rh")
            .body(wire.body.clone())
            .attributes(
                MessageSystemAttributeName::ApproximateReceiveCount,
                receive_count.to_string(),
            )
            .attributes(MessageSystemAttributeName::SentTimestamp, "1700000000123");
        for (n, v) in &wire.attributes {
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
                .expect("attribute");
            b = b.message_attributes(n, value);
        }
        b.build()
    }

    fn round_trip(m: Message) -> (Wire, Decoded) {
        let wire = encode(m, false).expect("encode");
        for (n, v) in &wire.attributes {
            assert!(valid_attribute_name(n), "{n}");
            assert!(!v.is_empty() && sqs_text(v), "{n}={v:?}");
        }
        assert!(sqs_text(&wire.body) && !wire.body.is_empty());
        assert!(wire.attributes.len() <= MAX_ATTRIBUTES);
        let decoded = decode(&received(&wire, 2));
        (wire, decoded)
    }

    #[test]
    fn text_message_with_few_headers_is_all_native() {
        let m = Message::new("hello")
            .with_id("id-1")
            .with_key("k")
            .with_content_type("text/plain")
            .with_header("tenant", "acme")
            .with_header("X-Mixed-Case", "Value");
        let (wire, d) = round_trip(m.clone());
        assert_eq!(wire.body, "hello");
        let names: Vec<&str> = wire.attributes.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "mq-message-id",
                "mq-content-type",
                "mq-key",
                "X-Mixed-Case",
                "tenant"
            ]
        );
        assert_eq!(d.message, m);
        assert_eq!(d.attempt, 2);
        assert_eq!(
            d.sent_at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
        );
    }

    #[test]
    fn binary_empty_and_odd_values_round_trip() {
        for payload in [
            b"payload \xc3\xa9 \0 end".to_vec(),
            vec![0xff, 0xfe, 0x00],
            Vec::new(),
            "caf\u{e9} \u{fffe}".as_bytes().to_vec(),
        ] {
            let m = Message::new(payload.clone())
                .with_header("empty", "")
                .with_header("nul", "a\0b")
                .with_header("bad name!", "v")
                .with_header("AWS.reserved", "v")
                .with_header("nonchar", "x\u{ffff}y")
                .with_header("unicode", "caf\u{e9} \u{2713}");
            let (wire, d) = round_trip(m.clone());
            assert!(wire.attributes.iter().any(|(n, _)| n == ATTR_HEADERS));
            assert_eq!(d.message, m, "payload {payload:?}");
        }
    }

    #[test]
    fn any_number_of_headers_fits_in_ten_attributes() {
        let mut m = Message::new("x").with_key("k").with_content_type("t");
        for i in 0..50 {
            m = m.with_header(format!("h{i:02}"), format!("value {i}"));
        }
        let (wire, d) = round_trip(m.clone());
        assert_eq!(wire.attributes.len(), MAX_ATTRIBUTES);
        assert_eq!(
            wire.attributes.last().map(|(n, _)| n.as_str()),
            Some(ATTR_HEADERS)
        );
        assert_eq!(d.message, m);

        // Exactly ten fields: all native, no JSON.
        let mut m = Message::new("x");
        for i in 0..9 {
            m = m.with_header(format!("h{i}"), "v");
        }
        let (wire, d) = round_trip(m.clone());
        assert_eq!(wire.attributes.len(), 10);
        assert!(wire.attributes.iter().all(|(n, _)| n != ATTR_HEADERS));
        assert_eq!(d.message, m);
    }

    #[test]
    fn size_counts_body_names_types_and_values() {
        let wire = encode(Message::new("abc").with_id("at-limit"), false).expect("encode");
        assert_eq!(
            wire.size(),
            3 + "mq-message-id".len() + 6 + "at-limit".len()
        );
    }

    #[test]
    fn delays_are_checked_and_rounded_up() {
        let w = encode(
            Message::new("x").with_delay(Duration::from_millis(1500)),
            false,
        )
        .expect("d");
        assert_eq!(w.delay_seconds, Some(2));
        let err = encode(
            Message::new("x").with_delay(Duration::from_secs(901)),
            false,
        )
        .expect_err("too long");
        assert_eq!(err.kind(), mq_core::ErrorKind::Unsupported);
        assert!(err.to_string().contains("15 minutes"), "{err}");
        let err =
            encode(Message::new("x").with_delay(Duration::from_secs(1)), true).expect_err("fifo");
        assert_eq!(err.kind(), mq_core::ErrorKind::Unsupported);
    }

    #[test]
    fn fifo_group_and_dedup_ids() {
        let w = encode(
            Message::new("x").with_id("order-1").with_key("customer-7"),
            true,
        )
        .expect("w");
        assert_eq!(w.fifo, Some(("customer-7".into(), "order-1".into())));
        let w = encode(Message::new("x").with_id("id with spaces"), true).expect("w");
        let (group, dedup) = w.fifo.expect("fifo");
        assert_eq!(group, DEFAULT_GROUP_ID);
        assert!(dedup.starts_with("mq-") && dedup.len() <= 128, "{dedup}");
        assert_eq!(dedup, dedup_id("id with spaces"), "stable");
        assert_ne!(dedup, dedup_id("id with spaces!"));
    }

    #[test]
    fn foreign_messages_become_headers() {
        let msg = SqsMessage::builder()
            .message_id("sqs-id")
            .body("from boto3")
            .message_attributes(
                "Author",
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value("ada")
                    .build()
                    .expect("a"),
            )
            .message_attributes(
                "count",
                MessageAttributeValue::builder()
                    .data_type("Number")
                    .string_value("42")
                    .build()
                    .expect("n"),
            )
            .message_attributes(
                "blob",
                MessageAttributeValue::builder()
                    .data_type("Binary")
                    .binary_value(aws_sdk_sqs::primitives::Blob::new(vec![1u8, 2, 3]))
                    .build()
                    .expect("b"),
            )
            .build();
        let d = decode(&msg);
        assert_eq!(d.message.id(), "sqs-id");
        assert_eq!(d.message.payload().as_ref(), b"from boto3");
        assert_eq!(d.message.headers().get("Author"), Some("ada"));
        assert_eq!(d.message.headers().get("count"), Some("42"));
        assert_eq!(d.message.headers().get("blob"), Some("AQID"));
        assert_eq!(d.attempt, 1);
    }

    #[test]
    fn attribute_names() {
        for ok in ["a", "X-Mixed_Case.v2", "traceparent", "mq-reply-to"] {
            assert!(valid_attribute_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".a",
            "a.",
            "a..b",
            "AWS.x",
            "amazon.y",
            "sp ace",
            "é",
            &"a".repeat(257),
        ] {
            assert!(!valid_attribute_name(bad), "{bad}");
        }
    }
}
