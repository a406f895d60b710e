//! What backend authors need: the second tier of the API (OpenDAL's `raw`).
//! Applications use the items at the top of the crate; a crate adding a
//! broker uses these.
//!
//! # Adding a backend
//!
//! 1. A crate `mq-<name>` with the same files as the others (see any
//!    backend's `lib.rs` docs for the file order): `lib.rs` (docs,
//!    [`Driver`], registration), `config.rs` (URL options through
//!    [`UrlOptions`], parser tests beside it), `error.rs` (native error to
//!    [`Error`](crate::Error), in one place), `metadata.rs` (the typed
//!    delivery metadata, `<Name>Metadata`), `codec.rs` (native message to and
//!    from [`Message`](crate::Message)), `core.rs` (the connection state the
//!    rest shares), `topology.rs` (destinations and groups to native
//!    objects), `settle.rs` (a [`Settler`]; copies for retry and dead letter
//!    through [`republish`]), `producer.rs`, `consumer.rs`, `backend.rs` (the
//!    [`Backend`] value that makes producers and consumers).
//! 2. `pub const DRIVER: Driver` in its `lib.rs`.
//! 3. One line in the facade's list `mq::BACKENDS` (and a cargo feature of
//!    `mq` named as `Driver::feature`).
//! 4. Run the conformance suite (`mq_core::testkit`, feature `testkit`)
//!    against it: set `MQ_TEST_<KEY>_URL` and run `cargo test -p mq-tests
//!    --features <feature> --test conformance`.
//!
//! The rules every backend shares live in core, once: the checks on a send
//! (destination, size, delay against [`Capabilities`](crate::Capabilities)),
//! the republished copies ([`republish`]), checked time arithmetic
//! ([`time`]), the dead-letter destination
//! ([`ConsumerOptions::dead_letter`](crate::ConsumerOptions::dead_letter)).

pub use crate::checks::check_send;
pub use crate::client::Backend;
pub use crate::dead_letter_reader::{
    DeadLetterListing, DeadLetterReader, HoldingReader, LogPosition, RotatingReader,
};
pub use crate::delivery::{SettleNow, Settlement, Settler};
pub use crate::driver::{ConnectFn, ConnectFuture, ConnectStrFn, Connector, Driver, TestImage};
pub use crate::message::MessageParts;
pub use crate::prefetch::Prefetch;
pub use crate::registry::Registry;
pub use crate::republish;
pub use crate::time;
pub use crate::url::{is_secret_key, parse_duration, redact_str, RedactedUrl, Secret, UrlOptions};
