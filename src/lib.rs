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
//! [`connect`] and the [`registry`] of the backends compiled in by cargo
//! features (`rabbit`, `kafka`, `sqs`; `memory://` is always on).
//!
#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]
#![forbid(unsafe_code)]

pub use mq_core::*;

/// A registry of every backend this build has: `memory://` plus the
/// schemes of the enabled features. Schemes of disabled features are
/// registered as hints, so connecting to one says which feature adds it.
pub fn registry() -> Registry {
    let mut registry = Registry::with_memory();
    #[cfg(feature = "rabbit")]
    mq_rabbit::register(&mut registry);
    #[cfg(feature = "kafka")]
    mq_kafka::register(&mut registry);
    #[cfg(feature = "sqs")]
    mq_sqs::register(&mut registry);
    for (schemes, hint) in DISABLED_BACKENDS {
        for scheme in *schemes {
            registry.hint(scheme, *hint);
        }
    }
    registry
}

/// The schemes of the backends this build leaves out, and the feature that adds each.
const DISABLED_BACKENDS: &[(&[&str], &str)] = &[
    #[cfg(not(feature = "rabbit"))]
    (
        &["amqp", "amqps"],
        "enable the `rabbit` feature of mq to add it",
    ),
    #[cfg(not(feature = "kafka"))]
    (
        &["kafka", "kafka+mock"],
        "enable the `kafka` feature of mq to add it",
    ),
    #[cfg(not(feature = "sqs"))]
    (
        &["sqs", "sqs+http", "sqs+https"],
        "enable the `sqs` feature of mq to add it",
    ),
];

/// Connects to the broker `url` names, e.g. `memory://`,
/// `amqp://user:pass@host:5672/vhost`, `kafka://host:9092`.
///
/// An unknown scheme is a [`ErrorKind::Config`] error listing the schemes
/// this build supports and the cargo feature that adds a missing one.
pub async fn connect(url: &str) -> Result<Client> {
    registry().connect(url).await
}
