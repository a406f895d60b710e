//! Dead letters as JSON Lines: one object per line, read back byte-exactly.
//!
//! ```json
//! {"id":"0190...","key":null,"content_type":null,"headers":{"mq-dead-letter-reason":"550"},"payload":"hello"}
//! {"id":"0191...","key":"k","content_type":null,"headers":{},"payload":"AP8=","payload_encoding":"base64"}
//! ```
//!
//! The payload is the text itself when it is UTF-8, else standard base64
//! with `"payload_encoding": "base64"`. Every header is kept (the `mq-*`
//! dead-letter headers too, all but a listing's own mark `mq-dlq-scan`), and `source` records where the line was read
//! from (informational; import ignores it). Unknown fields are an error, so
//! a misspelt field in a hand-edited file is not silently dropped.

use std::collections::BTreeMap;

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::delivery::Received;
use crate::error::{Error, Result};
use crate::message::{Headers, Message};

/// Value of `payload_encoding` for base64 payloads.
pub const BASE64: &str = "base64";

/// One line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The message id.
    pub id: String,
    /// The ordering key.
    #[serde(default)]
    pub key: Option<String>,
    /// The content type.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Every header, in key order.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The payload: text, or base64 when `payload_encoding` says so.
    pub payload: String,
    /// `"base64"` when the payload is not UTF-8; absent for text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_encoding: Option<String>,
    /// Where the dead letter was read from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Record {
    /// The record of `letter`.
    pub fn of(letter: &Received) -> Self {
        let (payload, payload_encoding) = match std::str::from_utf8(letter.payload()) {
            Ok(text) => (text.to_owned(), None),
            Err(_) => (
                base64::engine::general_purpose::STANDARD.encode(letter.payload()),
                Some(BASE64.to_owned()),
            ),
        };
        Record {
            id: letter.id().to_owned(),
            key: letter.key().map(str::to_owned),
            content_type: letter.content_type().map(str::to_owned),
            // The mark of a listing that moved the letter (SQS FIFO) is
            // bookkeeping of that listing, not part of the message.
            headers: letter
                .headers()
                .iter()
                .filter(|(k, _)| *k != crate::message::headers::DLQ_SCAN)
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            payload,
            payload_encoding,
            source: Some(letter.source().to_owned()),
        }
    }

    /// The payload bytes.
    pub fn payload_bytes(&self) -> Result<Bytes> {
        match self.payload_encoding.as_deref() {
            None => Ok(Bytes::from(self.payload.clone().into_bytes())),
            Some(BASE64) => base64::engine::general_purpose::STANDARD
                .decode(self.payload.as_bytes())
                .map(Bytes::from)
                .map_err(|e| {
                    Error::decode(format!("message {}: payload is not base64", self.id))
                        .with_source(e)
                }),
            Some(other) => Err(Error::decode(format!(
                "message {}: unknown payload_encoding {other:?} (expected \"base64\" or none)",
                self.id
            ))),
        }
    }

    /// The message this record describes (same id, key, content type,
    /// headers and payload bytes).
    pub fn to_message(&self) -> Result<Message> {
        if self.id.is_empty() {
            return Err(Error::decode("a record has an empty id"));
        }
        let mut m = Message::new(self.payload_bytes()?)
            .with_id(self.id.clone())
            .with_headers(self.headers.iter().collect::<Headers>());
        if let Some(k) = &self.key {
            m = m.with_key(k.clone());
        }
        if let Some(ct) = &self.content_type {
            m = m.with_content_type(ct.clone());
        }
        Ok(m)
    }

    /// One line of JSON (no newline).
    pub fn to_line(&self) -> Result<String> {
        serde_json::to_string(self)
            .map_err(|e| Error::decode("cannot encode a record as JSON").with_source(e))
    }

    /// Parses one line (surrounding whitespace allowed).
    pub fn from_line(line: &str) -> Result<Self> {
        let record: Record = serde_json::from_str(line.trim())
            .map_err(|e| Error::decode("not a dead-letter record").with_source(e))?;
        // Validate the payload now, so a bad line is reported with its number.
        record.payload_bytes()?;
        Ok(record)
    }
}

/// Parses a whole JSON Lines text: blank lines are skipped; the first bad
/// line is an error naming its number (1-based), and nothing is returned.
pub fn parse_lines(text: &str) -> Result<Vec<Record>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            Record::from_line(l).map_err(|e| {
                Error::decode(format!("line {}: {e}", i.saturating_add(1))).with_source(e)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn received(payload: Vec<u8>, headers: Vec<(String, String)>, key: Option<String>) -> Received {
        let mut m = Message::new(payload)
            .with_id("id-1")
            .with_headers(headers.into_iter().collect::<Headers>());
        if let Some(k) = key {
            m = m.with_key(k);
        }
        Received::new("jobs-dlq", m, 1)
    }

    #[test]
    fn text_stays_text_and_bytes_become_base64() {
        let r = Record::of(&received(b"hello".to_vec(), vec![], None));
        assert_eq!(r.payload, "hello");
        assert_eq!(r.payload_encoding, None);
        let r = Record::of(&received(vec![0, 0xff, 0xfe], vec![], None));
        assert_eq!(r.payload_encoding.as_deref(), Some(BASE64));
        let back = Record::from_line(&r.to_line().expect("line")).expect("parse");
        assert_eq!(
            back.payload_bytes().expect("bytes").as_ref(),
            [0, 0xff, 0xfe]
        );
    }

    #[test]
    fn bad_lines_name_their_number() {
        let text = "{\"id\":\"a\",\"payload\":\"x\"}\n\n{\"id\":\"b\",\"payload\":\"!!\",\"payload_encoding\":\"base64\"}\n";
        let e = parse_lines(text).expect_err("bad base64");
        assert!(e.to_string().contains("line 3"), "{e}");
        let e = parse_lines("{\"id\":\"a\",\"payload\":\"x\",\"paylod\":1}").expect_err("typo");
        assert_eq!(e.kind(), crate::ErrorKind::Decode);
        let e = parse_lines("{\"id\":\"a\",\"payload\":\"x\",\"payload_encoding\":\"hex\"}")
            .expect_err("encoding");
        assert_eq!(e.kind(), crate::ErrorKind::Decode);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn decoder_never_panics(text in ".{0,300}", bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_lines(&text);
            let _ = parse_lines(&String::from_utf8_lossy(&bytes));
            let _ = Record::from_line(&text).map(|r| r.to_message());
        }

        #[test]
        fn round_trip_is_exact(
            payload in proptest::collection::vec(any::<u8>(), 0..200),
            headers in proptest::collection::vec((".{0,12}", ".{0,24}"), 0..6),
            key in proptest::option::of(".{0,10}"),
        ) {
            let r = received(payload.clone(), headers, key);
            let line = Record::of(&r).to_line().expect("encode");
            prop_assert!(!line.contains('\n'));
            let back = parse_lines(&format!("{line}\n")).expect("decode");
            prop_assert_eq!(back.len(), 1);
            let m = back[0].to_message().expect("message");
            prop_assert_eq!(m.payload().as_ref(), &payload[..]);
            prop_assert_eq!(m.headers(), r.headers());
            prop_assert_eq!(m.id(), r.id());
            prop_assert_eq!(m.key(), r.key());
        }
    }
}
