//! `mq`: one async API for RabbitMQ, Kafka, Amazon SQS and an in-memory
//! broker. Swap brokers by changing one URL:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> mq::Result<()> {
//! use mq::{Message, Producer};
//!
//! let client = mq::connect("memory://docs").await?;
//! let producer = client.producer().await?;
//! producer.send("emails", Message::new("hello")).await?;
//!
//! let mut consumer = client.consumer("emails").await?;
//! let delivery = mq::Consumer::receive(&mut consumer).await?;
//! assert_eq!(delivery.payload().as_ref(), b"hello");
//! delivery.ack().await?;
//! # Ok(()) }
//! ```
//!
//! Everything in [`mq_core`] is re-exported here; this crate adds
//! [`connect`] and the [`registry()`] of the backends compiled in by cargo
//! features (`rabbit`, `kafka`, `sqs`; `memory://` is always on); the
//! `outbox` feature adds `mq::outbox` (transactional outbox and inbox).
//!
#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]
#![forbid(unsafe_code)]

pub use mq_core::*;

/// The transactional outbox and inbox on `sqlx` (SQLite, PostgreSQL): a
/// database write and a message that happen together, effects exactly once
/// (feature `outbox`; see the `mq-outbox` crate).
#[cfg(feature = "outbox")]
pub use mq_outbox as outbox;

/// A backend `mq` knows, compiled in or not: the one list the registry, the
/// "enable feature X" hints, the conformance test and the CLI iterate
/// (adding a backend is one line here; see CONTRIBUTING.md).
#[derive(Debug, Clone, Copy)]
pub struct KnownBackend {
    /// The cargo feature of `mq` that adds it.
    pub feature: &'static str,
    /// Its URL schemes (what a hint names when the feature is off).
    pub schemes: &'static [&'static str],
    /// The backend, when this build has it.
    pub driver: Option<&'static backend::Driver>,
}

/// One [`KnownBackend`] line: its driver when the feature is on.
macro_rules! known {
    ($feature:literal, $krate:ident, $schemes:expr) => {
        KnownBackend {
            feature: $feature,
            schemes: &$schemes,
            driver: {
                #[cfg(feature = $feature)]
                {
                    Some(&$krate::DRIVER)
                }
                #[cfg(not(feature = $feature))]
                {
                    None
                }
            },
        }
    };
}

/// Every broker backend, whether this build has it or not (`memory://` is
/// always there: [`memory::DRIVER`]).
pub const BACKENDS: &[KnownBackend] = &[
    known!("rabbit", mq_rabbit, ["amqp", "amqps"]),
    known!("kafka", mq_kafka, ["kafka", "kafka+mock"]),
    known!("sqs", mq_sqs, ["sqs", "sqs+http", "sqs+https"]),
];

/// The drivers this build has: `memory://` and each enabled backend.
pub fn drivers() -> impl Iterator<Item = &'static backend::Driver> {
    std::iter::once(&memory::DRIVER).chain(BACKENDS.iter().filter_map(|b| b.driver))
}

/// A registry of every backend this build has: `memory://` plus the
/// schemes of the enabled features. Schemes of disabled features are
/// registered as hints, so connecting to one says which feature adds it.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    for driver in drivers() {
        registry.register_driver(driver);
    }
    for known in BACKENDS.iter().filter(|b| b.driver.is_none()) {
        for scheme in known.schemes {
            registry.hint(
                scheme,
                format!("enable the `{}` feature of mq to add it", known.feature),
            );
        }
    }
    registry
}

/// Connects to the broker `url` names, e.g. `memory://`,
/// `amqp://user:pass@host:5672/vhost`, `kafka://host:9092`.
///
/// An unknown scheme is a [`ErrorKind::Config`] error listing the schemes
/// this build supports and the cargo feature that adds a missing one.
pub async fn connect(url: &str) -> Result<Client> {
    registry().connect(url).await
}
