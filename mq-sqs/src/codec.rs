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
use std::time::SystemTime;

use aws_sdk_sqs::types::{Message as SqsMessage, MessageSystemAttributeName};
use aws_smithy_types::base64;
use bytes::Bytes;
use mq_core::backend::MessageParts;
use mq_core::{headers, Error, Message, Result};

use crate::config::{secs_i32, MAX_DELAY};
use crate::error::BACKEND;

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
        dedup_id,
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

    // The broker dedup id, not the message id: a republished copy (retry,
    // dead letter, redrive) carries a fresh one, so SQS never swallows it as
    // a duplicate of the original within its 5-minute window.
    let fifo = fifo.then(|| {
        let group = key.clone().unwrap_or_else(|| DEFAULT_GROUP_ID.to_owned());
        (group, deduplication_id(dedup_id.as_deref().unwrap_or(&id)))
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

/// A FIFO `MessageDeduplicationId` from a message's broker dedup id
/// ([`Message::dedup_id`]: the message id, or a fresh one on a republished
/// copy): the id itself when SQS accepts it (up to 128 of alphanumerics and
/// punctuation), else a stable hash.
pub(crate) fn deduplication_id(id: &str) -> String {
    if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) {
        return id.to_owned();
    }
    format!("mq-{}", stable_hash(id))
}

/// 32 hex digits of `text`'s FNV-1a hash (128 bits as two 64-bit halves):
/// the same in every process, for names made from other names.
pub(crate) fn stable_hash(text: &str) -> String {
    let mut a: u64 = 0xcbf2_9ce4_8422_2325;
    let mut b: u64 = 0x8422_2325_cbf2_9ce4;
    for byte in text.bytes() {
        a = (a ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        b = (b ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3 ^ 0x10);
    }
    format!("{a:016x}{b:016x}")
}

/// A count SQS reports as text, saturating at `u32::MAX` (a value past it is
/// "very many", not 1); anything that is not a number is 1.
fn parse_count(text: &str) -> u32 {
    let digits = text.trim();
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse::<u32>().unwrap_or(u32::MAX)
    } else {
        1
    }
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

    let mut parts = MessageParts::new(payload, id);
    parts.headers = fields.into_iter().collect();
    parts.key = key;
    parts.content_type = content_type;
    let message = Message::from(parts);
    let attempt = system_attr(MessageSystemAttributeName::ApproximateReceiveCount)
        .map_or(1, |n| parse_count(n))
        .max(1);
    // Checked: a bogus SentTimestamp (an emulator, a proxy) is no time at
    // all rather than a panic in `UNIX_EPOCH + d`.
    let sent_at = system_attr(MessageSystemAttributeName::SentTimestamp)
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .and_then(mq_core::backend::time::from_unix_millis);
    Decoded {
        message,
        attempt,
        sent_at,
    }
}

/// What SQS would hand back for `wire` (tests).
#[cfg(test)]
pub(crate) fn received(wire: &Wire, receive_count: u32) -> SqsMessage {
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
        let value = aws_sdk_sqs::types::MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
            .expect("attribute");
        b = b.message_attributes(n, value);
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sqs::types::MessageAttributeValue;
    use std::time::Duration;

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
        assert_eq!(dedup, deduplication_id("id with spaces"), "stable");
        assert_ne!(dedup, deduplication_id("id with spaces!"));
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

    /// A message with the given system attributes and no message attributes.
    fn with_system(count: &str, sent: &str) -> SqsMessage {
        SqsMessage::builder()
            .message_id("sqs-id")
            .body("b")
            .attributes(MessageSystemAttributeName::ApproximateReceiveCount, count)
            .attributes(MessageSystemAttributeName::SentTimestamp, sent)
            .build()
    }

    /// Defect 6c (issue 14): counts and timestamps from the broker are
    /// parsed with checked arithmetic: a receive count past `u32::MAX` is
    /// `u32::MAX` (it used to become attempt 1, as if new), and a timestamp
    /// that is not a representable time is none.
    #[test]
    fn huge_receive_counts_and_sent_timestamps_are_clamped() {
        let d = decode(&with_system("4294967296", &u64::MAX.to_string()));
        assert_eq!(d.attempt, u32::MAX, "a huge count saturates");
        assert_eq!(
            d.sent_at,
            mq_core::backend::time::from_unix_millis(u64::MAX)
        );
        for (count, sent) in [
            ("99999999999999999999999999", "99999999999999999999999999"),
            ("-5", "-1"),
            ("", ""),
            ("1e9", "1.7e12"),
            ("0", "0"),
        ] {
            let d = decode(&with_system(count, sent));
            assert!(d.attempt >= 1, "{count}");
            if count.starts_with('9') {
                assert_eq!(d.attempt, u32::MAX, "{count}");
            }
            if sent == "0" {
                assert_eq!(d.sent_at, Some(SystemTime::UNIX_EPOCH));
            } else {
                assert_eq!(d.sent_at, None, "{sent}");
            }
        }
    }

    mod properties {
        use super::*;
        use proptest::collection::{btree_map, vec};
        use proptest::prelude::*;

        /// Cases per property (bounded so the suite runs in seconds).
        const CASES: u32 = 512;

        fn attribute_value() -> impl Strategy<Value = MessageAttributeValue> {
            let text = prop_oneof![
                ".{0,40}",
                "[0-9.eE+-]{0,60}",
                Just("{\"mq-message-id\":\"x\"".to_owned()),
            ];
            prop_oneof![
                (
                    prop_oneof![
                        Just("String"),
                        Just("String.custom"),
                        Just("Number"),
                        Just("Number.float")
                    ],
                    text
                )
                    .prop_map(|(t, v)| MessageAttributeValue::builder()
                        .data_type(t)
                        .string_value(v)
                        .build()
                        .expect("string attribute")),
                (
                    prop_oneof![Just("Binary"), Just("Binary.gz")],
                    vec(any::<u8>(), 0..64)
                )
                    .prop_map(|(t, b)| MessageAttributeValue::builder()
                        .data_type(t)
                        .binary_value(aws_sdk_sqs::primitives::Blob::new(b))
                        .build()
                        .expect("binary attribute")),
                // A type but no value at all (SQS never sends this; a proxy might).
                Just(
                    MessageAttributeValue::builder()
                        .data_type("String")
                        .build()
                        .expect("empty")
                ),
            ]
        }

        /// What a peer might put into `mq-headers`: ours, JSON of another
        /// shape, garbage, or a large object.
        fn packed_headers() -> impl Strategy<Value = String> {
            prop_oneof![
                btree_map(".{0,12}", ".{0,24}", 0..12)
                    .prop_map(|m| serde_json::to_string(&m).unwrap_or_default()),
                ".{0,64}",
                Just("[1,2,3]".to_owned()),
                Just("{\"a\":{\"nested\":true},\"b\":1}".to_owned()),
                Just("\"\\ud800\"".to_owned()),
                (1usize..2000).prop_map(|n| {
                    let m: BTreeMap<String, String> = (0..n)
                        .map(|i| (format!("h{i}"), "v".repeat(i % 50)))
                        .collect();
                    serde_json::to_string(&m).unwrap_or_default()
                }),
            ]
        }

        fn foreign_message() -> impl Strategy<Value = SqsMessage> {
            (
                btree_map(".{0,20}", attribute_value(), 0..14),
                proptest::option::of(packed_headers()),
                proptest::option::of(prop_oneof![Just("base64"), Just("empty"), Just("rot13")]),
                proptest::option::of(".{0,64}"),
                proptest::option::of(".{0,24}"),
                proptest::option::of(".{0,24}"),
                proptest::option::of(".{0,24}"),
            )
                .prop_map(|(attrs, packed, encoding, body, count, sent, group)| {
                    let mut b = SqsMessage::builder().set_body(body).receipt_handle("rh");
                    for (name, value) in attrs {
                        b = b.message_attributes(name, value);
                    }
                    if let Some(json) = packed {
                        b = b.message_attributes(
                            ATTR_HEADERS,
                            MessageAttributeValue::builder()
                                .data_type("String")
                                .string_value(json)
                                .build()
                                .expect("packed"),
                        );
                    }
                    if let Some(e) = encoding {
                        b = b.message_attributes(
                            ATTR_BODY_ENCODING,
                            MessageAttributeValue::builder()
                                .data_type("String")
                                .string_value(e)
                                .build()
                                .expect("encoding"),
                        );
                    }
                    if let Some(c) = count {
                        b = b.attributes(MessageSystemAttributeName::ApproximateReceiveCount, c);
                    }
                    if let Some(s) = sent {
                        b = b.attributes(MessageSystemAttributeName::SentTimestamp, s);
                    }
                    if let Some(g) = group {
                        b = b.attributes(MessageSystemAttributeName::MessageGroupId, g);
                    }
                    b.build()
                })
        }

        /// Header names and values an application may use (reserved names
        /// are taken by the mapping and excluded).
        fn headers() -> impl Strategy<Value = BTreeMap<String, String>> {
            let name = prop_oneof![
                "[A-Za-z0-9_.-]{1,20}",
                ".{0,16}",
                "(AWS|Amazon|aws)\\.[a-z]{1,8}",
                "mq-[a-z-]{1,12}",
            ]
            .prop_filter("reserved by the mapping", |n| !is_reserved_attribute(n));
            let value = prop_oneof![
                "[ -~]{0,40}",
                ".{0,40}",
                Just(String::new()),
                vec(any::<char>(), 0..16).prop_map(|c| c.into_iter().collect::<String>()),
            ];
            btree_map(name, value, 0..30)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(CASES))]

            /// Whatever a peer (boto3, another SDK, a proxy) sends, decoding
            /// never panics and yields a usable delivery.
            #[test]
            fn decoding_foreign_attributes_never_panics(m in foreign_message()) {
                let d = decode(&m);
                prop_assert!(d.attempt >= 1);
            }

            /// Any message (binary payloads, any number of headers with any
            /// names and values, non-UTF-8 or XML-refused characters) is
            /// encoded within SQS's rules and decodes to exactly itself.
            #[test]
            fn headers_round_trip_through_attributes(
                payload in vec(any::<u8>(), 0..200),
                headers in headers(),
                id in ".{0,40}",
                key in proptest::option::of(".{0,20}"),
                content_type in proptest::option::of(".{0,20}"),
            ) {
                let mut m = Message::new(payload).with_id(id).with_headers(headers.into_iter().collect());
                if let Some(k) = key {
                    m = m.with_key(k);
                }
                if let Some(ct) = content_type {
                    m = m.with_content_type(ct);
                }
                let wire = encode(m.clone(), false).expect("encode");
                prop_assert!(wire.attributes.len() <= MAX_ATTRIBUTES);
                prop_assert!(!wire.body.is_empty() && sqs_text(&wire.body));
                for (n, v) in &wire.attributes {
                    prop_assert!(valid_attribute_name(n), "{}", n);
                    prop_assert!(!v.is_empty() && sqs_text(v), "{}={:?}", n, v);
                }
                let decoded = decode(&received(&wire, 1));
                prop_assert_eq!(decoded.message, m);
            }
        }
    }
}
