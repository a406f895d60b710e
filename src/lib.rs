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
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]
#![forbid(unsafe_code)]

pub use mq_core::*;

#[cfg(feature = "redis")]
mod redis_store;
#[cfg(feature = "redis")]
pub use redis_store::RedisDedupStore;

/// A registry of every backend this build has: `memory://` plus the
/// schemes of the enabled features. Schemes of disabled features are
/// registered as hints, so connecting to one says which feature adds it.
pub fn registry() -> Registry {
    let mut registry = Registry::with_memory();
    #[cfg(feature = "rabbit")]
    mq_rabbit::register(&mut registry);
    #[cfg(not(feature = "rabbit"))]
    hint_backend(&mut registry, &["amqp", "amqps"], "rabbit", false);
    #[cfg(feature = "kafka")]
    mq_kafka::register(&mut registry);
    #[cfg(not(feature = "kafka"))]
    hint_backend(&mut registry, &["kafka"], "kafka", false);
    #[cfg(feature = "sqs")]
    mq_sqs::register(&mut registry);
    #[cfg(not(feature = "sqs"))]
    hint_backend(
        &mut registry,
        &["sqs", "sqs+http", "sqs+https"],
        "sqs",
        false,
    );
    registry
}

/// Backends whose crates do not exist yet: the feature is declared, so the
/// hint tells whether it is off or simply not implemented in this version.
fn hint_backend(registry: &mut Registry, schemes: &[&'static str], feature: &str, enabled: bool) {
    let how: &'static str = match (feature, enabled) {
        ("rabbit", false) => "enable the `rabbit` feature of mq to add it",
        ("kafka", false) => "enable the `kafka` feature of mq to add it",
        ("sqs", false) => "enable the `sqs` feature of mq to add it",
        _ => "its backend is not implemented in this version of mq yet",
    };
    for scheme in schemes {
        registry.hint(scheme, how);
    }
}

/// Connects to the broker `url` names, e.g. `memory://`,
/// `amqp://user:pass@host:5672/vhost`, `kafka://host:9092`.
///
/// An unknown scheme is a [`ErrorKind::Config`] error listing the schemes
/// this build supports and the cargo feature that adds a missing one.
pub async fn connect(url: &str) -> Result<Client> {
    registry().connect(url).await
}
