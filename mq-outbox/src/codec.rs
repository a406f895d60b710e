//! An `mq` [`Message`] to an outbox row and back, field for field: id, key,
//! headers, payload bytes, content type, delay and broker dedup id, so the
//! published message is the one the application wrote (and a duplicate
//! after a crash carries the same id).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use mq_core::{Headers, Message};

use crate::config::millis;
use crate::error::{Error, Result};

/// A message ready to insert.
#[derive(Debug, Clone)]
pub struct NewRow {
    /// Queue or topic.
    pub destination: String,
    /// The `mq` message id.
    pub message_id: String,
    /// The ordering key.
    pub key: Option<String>,
    /// The headers as a JSON object.
    pub headers: String,
    /// The payload.
    pub payload: Bytes,
    /// The content type.
    pub content_type: Option<String>,
    /// The broker dedup id, when set explicitly.
    pub dedup_id: Option<String>,
    /// The delay in milliseconds.
    pub delay_ms: Option<i64>,
    /// Insert time, milliseconds since the Unix epoch.
    pub created_at: i64,
}

impl NewRow {
    /// The row of `message` for `destination`, inserted at `now` (ms).
    pub fn new(destination: &str, message: Message, now: i64) -> Result<Self> {
        if destination.is_empty() {
            return Err(Error::Config("empty destination".to_owned()));
        }
        let parts = message.into_parts();
        let headers: BTreeMap<&str, &str> = parts.headers.iter().collect();
        let headers =
            serde_json::to_string(&headers).map_err(|e| Error::Encode(format!("headers: {e}")))?;
        Ok(NewRow {
            destination: destination.to_owned(),
            message_id: parts.id,
            key: parts.key,
            headers,
            payload: parts.payload,
            content_type: parts.content_type,
            dedup_id: parts.dedup_id,
            delay_ms: parts.delay.map(millis),
            created_at: now,
        })
    }
}

/// A row a relay claimed.
#[derive(Debug, Clone)]
pub struct StoredRow {
    /// The row id (insert order).
    pub id: i64,
    /// Queue or topic.
    pub destination: String,
    /// The `mq` message id.
    pub message_id: String,
    /// The ordering key.
    pub key: Option<String>,
    /// The headers as stored (a JSON object of strings).
    pub headers: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// The content type.
    pub content_type: Option<String>,
    /// The broker dedup id, when set explicitly.
    pub dedup_id: Option<String>,
    /// The delay in milliseconds.
    pub delay_ms: Option<i64>,
    /// Insert time, milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Claims so far, this one included.
    pub attempts: i64,
}

impl StoredRow {
    /// The message to publish at `now` (ms): the stored one, with what is
    /// left of its delay (a message delayed 10 s and relayed 3 s after it
    /// was written is sent with 7 s).
    pub fn to_message(&self, now: i64) -> Result<Message> {
        let headers = decode_headers(&self.headers).map_err(|reason| Error::Decode {
            row: self.id,
            reason,
        })?;
        let mut message = Message::new(Bytes::copy_from_slice(&self.payload))
            .with_id(self.message_id.clone())
            .with_headers(headers);
        if let Some(key) = &self.key {
            message = message.with_key(key.clone());
        }
        if let Some(ct) = &self.content_type {
            message = message.with_content_type(ct.clone());
        }
        if let Some(dedup) = &self.dedup_id {
            message = message.with_dedup_id(dedup.clone());
        }
        if let Some(delay) = self.delay_ms {
            let elapsed = now.saturating_sub(self.created_at).max(0);
            let left = delay.saturating_sub(elapsed);
            if left > 0 {
                let left = u64::try_from(left).unwrap_or(0);
                message = message.with_delay(Duration::from_millis(left));
            }
        }
        Ok(message)
    }
}

/// Headers from their stored JSON object; anything else is an error (the
/// column is user-editable data, never trusted to be well formed).
pub fn decode_headers(json: &str) -> std::result::Result<Headers, String> {
    let map: BTreeMap<String, String> = serde_json::from_str(json)
        .map_err(|e| format!("headers are not a JSON object of strings: {e}"))?;
    Ok(map.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stored(row: NewRow) -> StoredRow {
        StoredRow {
            id: 1,
            destination: row.destination,
            message_id: row.message_id,
            key: row.key,
            headers: row.headers,
            payload: row.payload.to_vec(),
            content_type: row.content_type,
            dedup_id: row.dedup_id,
            delay_ms: row.delay_ms,
            created_at: row.created_at,
            attempts: 1,
        }
    }

    #[test]
    fn message_round_trips_field_for_field() {
        let m = Message::new(vec![0u8, 159, 146, 150])
            .with_header("b", "2")
            .with_header("A", "ü\n\"")
            .with_key("k")
            .with_content_type("application/x")
            .with_dedup_id("d");
        let row = NewRow::new("q", m.clone(), 1_000).expect("encode");
        assert_eq!(row.dedup_id.as_deref(), Some("d"));
        let back = stored(row).to_message(1_000).expect("decode");
        assert_eq!(back, m);
        let plain = Message::new("x");
        let back = stored(NewRow::new("q", plain.clone(), 0).expect("encode"))
            .to_message(0)
            .expect("decode");
        assert_eq!(back, plain);
        assert!(NewRow::new("", Message::new("x"), 0).is_err());
    }

    #[test]
    fn delay_counts_from_the_insert() {
        let m = Message::new("x").with_delay(Duration::from_secs(10));
        let row = stored(NewRow::new("q", m, 1_000).expect("encode"));
        let at = |now| row.to_message(now).expect("decode").delay();
        assert_eq!(at(4_000), Some(Duration::from_secs(7)));
        assert_eq!(at(11_000), None);
        assert_eq!(at(i64::MAX), None);
        assert_eq!(at(i64::MIN), Some(Duration::from_secs(10)));
    }

    #[test]
    fn bad_header_columns_are_errors() {
        for bad in ["", "[]", "{\"a\":1}", "null", "{", "{\"a\":null}"] {
            assert!(decode_headers(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn any_column_text_decodes_or_errors(s in ".{0,64}") {
            let _ = decode_headers(&s);
        }

        #[test]
        fn any_headers_round_trip(h in proptest::collection::btree_map(".{0,8}", ".{0,16}", 0..8)) {
            let headers: Headers = h.clone().into_iter().collect();
            let m = Message::new("p").with_headers(headers.clone());
            let row = NewRow::new("q", m, 0).expect("encode");
            prop_assert_eq!(decode_headers(&row.headers).expect("decode"), headers);
        }
    }
}
