//! Payload codecs, chosen by content type on receive.
//!
//! JSON is always available ([`Json`], `application/json`); MessagePack
//! ([`MsgPack`], `application/msgpack`) with the `msgpack` feature.
//! [`Message::encode`] records the codec's content type, and
//! [`Received::decode`] picks the codec from the content type of the message
//! it reads, so producers can change format without consumers changing code.
//! A payload that does not decode is an [`ErrorKind::Decode`](crate::ErrorKind::Decode)
//! error, which is permanent: it goes to the dead-letter queue, not into a retry loop.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::delivery::Received;
use crate::error::{Error, Result};
use crate::message::{Message, JSON_CONTENT_TYPE};

/// The content type [`MsgPack`] records.
pub const MSGPACK_CONTENT_TYPE: &str = "application/msgpack";

/// A payload format.
pub trait Codec {
    /// The content type recorded on messages in this format.
    const CONTENT_TYPE: &'static str;
    /// Encodes `value`.
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>>;
    /// Decodes a payload.
    fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T>;
}

/// JSON (`application/json`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl Codec for Json {
    const CONTENT_TYPE: &'static str = JSON_CONTENT_TYPE;
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
        serde_json::to_vec(value).map_err(|e| Error::decode("cannot encode as JSON").with_source(e))
    }
    fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T> {
        serde_json::from_slice(payload)
            .map_err(|e| Error::decode("payload is not the expected JSON").with_source(e))
    }
}

/// MessagePack (`application/msgpack`), with the `msgpack` feature.
#[cfg(feature = "msgpack")]
#[derive(Debug, Clone, Copy, Default)]
pub struct MsgPack;

#[cfg(feature = "msgpack")]
impl Codec for MsgPack {
    const CONTENT_TYPE: &'static str = MSGPACK_CONTENT_TYPE;
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
        rmp_serde::to_vec_named(value)
            .map_err(|e| Error::decode("cannot encode as MessagePack").with_source(e))
    }
    fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T> {
        rmp_serde::from_slice(payload)
            .map_err(|e| Error::decode("payload is not the expected MessagePack").with_source(e))
    }
}

fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

impl Message {
    /// A message whose payload is `value` in format `C`, with `C`'s content type.
    pub fn encode<C: Codec, T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        Ok(Message::new(C::encode(value)?).with_content_type(C::CONTENT_TYPE))
    }
}

impl Received {
    /// The payload decoded with the codec its content type names (JSON when
    /// it names none).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        let ct = self.content_type().map(essence);
        let result = match ct.as_deref() {
            None | Some("application/json") => Json::decode(self.payload()),
            Some(ct) if ct.ends_with("+json") => Json::decode(self.payload()),
            #[cfg(feature = "msgpack")]
            Some("application/msgpack" | "application/x-msgpack") => MsgPack::decode(self.payload()),
            Some(other) => Err(Error::decode(format!(
                "no codec for content type {other:?} (JSON always; MessagePack with feature `msgpack`)"
            ))),
        };
        result.map_err(|e| e.with_destination(self.source().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Resize {
        image: String,
        width: u32,
    }

    #[test]
    fn json_round_trip_by_content_type() {
        let job = Resize {
            image: "a.png".into(),
            width: 64,
        };
        let m = Message::encode::<Json, _>(&job).expect("encode");
        assert_eq!(m.content_type(), Some("application/json"));
        let r = Received::new("q", m, 1);
        assert_eq!(r.decode::<Resize>().expect("decode"), job);
    }

    #[cfg(feature = "msgpack")]
    #[test]
    fn msgpack_round_trip_by_content_type() {
        let job = Resize {
            image: "a.png".into(),
            width: 64,
        };
        let m = Message::encode::<MsgPack, _>(&job).expect("encode");
        assert_eq!(m.content_type(), Some(MSGPACK_CONTENT_TYPE));
        assert!(m.payload().len() < serde_json::to_vec(&job).expect("json").len());
        let r = Received::new("q", m, 1);
        assert_eq!(r.decode::<Resize>().expect("decode"), job);
    }

    #[test]
    fn unknown_content_type_and_garbage_are_permanent_decode_errors() {
        let r = Received::new(
            "q",
            Message::new("x").with_content_type("application/avro"),
            1,
        );
        let e = r.decode::<Resize>().expect_err("no codec");
        assert_eq!(e.kind(), crate::ErrorKind::Decode);
        assert!(!e.is_retryable());
        let r = Received::new(
            "q",
            Message::new("{oops").with_content_type("application/json"),
            1,
        );
        assert_eq!(
            r.decode::<Resize>().expect_err("garbage").kind(),
            crate::ErrorKind::Decode
        );
    }
}
