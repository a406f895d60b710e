#![doc = include_str!("../README.md")]
//!
//! # Source files
//!
//! Every backend crate of `mq` has the same files. Each uses only files
//! listed above it, so there is no import cycle:
//!
//! ```text
//! error        lapin errors -> mq_core::Error (the one place), BACKEND
//! config       URL and options -> RabbitConfig
//! metadata     RabbitMetadata: the AMQP details of a delivery
//! codec        Message <-> AMQP body, properties and headers
//! connection   one connection per client, reconnected with backoff
//! core         Shared: settings, connection, reply routes of one client
//! topology     destinations and groups -> exchanges, queues, bindings
//! publish      one confirmed publish along a route (sends, retries, dead letters)
//! settle       the Settler: ack, nack (retry copies), dead-letter
//! producer     RabbitProducer
//! rpc          direct reply-to consumers
//! consumer     RabbitConsumer
//! backend      RabbitBackend: capabilities, health, stats, producers, consumers
//! lib          DRIVER, register, connect
//! ```
//!
//! `python3 scripts/module_cycles.py mq-rabbit/src` checks it and prints the
//! layers: `{error, metadata} < {codec, config} < connection < {core,
//! topology} < {publish, rpc} < {producer, settle} < consumer < backend`.
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]
#![forbid(unsafe_code)]

mod acks;
mod backend;
mod codec;
mod config;
mod connection;
mod consumer;
mod core;
mod error;
mod metadata;
mod producer;
mod publish;
mod rpc;
mod settle;
mod topology;

pub use backend::RabbitBackend;
pub use config::{
    AuthMechanism, QueueType, RabbitConfig, Topology, DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_OPERATION_TIMEOUT,
};
pub use consumer::RabbitConsumer;
pub use metadata::RabbitMetadata;
pub use producer::RabbitProducer;

/// The AMQP client this backend is built on, for what `mq` does not cover
/// (e.g. reading [`RabbitMetadata::properties`]).
pub use lapin;

use mq_core::backend::{Connector, Driver, RedactedUrl, Registry, TestImage};
use mq_core::{Client, Result};

use crate::error::BACKEND;

/// The URL schemes this backend serves.
pub const SCHEMES: &[&str] = &["amqp", "amqps"];

/// This backend as one value: what the facade's registry, the conformance
/// suite and the test set-up need to know about it.
pub const DRIVER: Driver = Driver {
    name: BACKEND,
    feature: "rabbit",
    schemes: SCHEMES,
    connect: Connector::Parsed(|url| Box::pin(async move { connect_url(&url).await })),
    test_key: "RABBIT",
    test_broker: "rabbit",
    test_image: Some(TestImage {
        official: "rabbitmq",
        port: 5672,
        ready: "Server startup complete",
        restartable: true,
        advertise_env: None,
        url: |addr| format!("amqp://guest:guest@{addr}/%2f"),
    }),
};

/// Registers `amqp://` and `amqps://` in `registry`.
pub fn register(registry: &mut Registry) {
    registry.register_driver(&DRIVER);
}

/// Connects to the broker an `amqp://` or `amqps://` URL names.
pub async fn connect(url: &str) -> Result<Client> {
    connect_url(&RedactedUrl::parse(url)?).await
}

async fn connect_url(url: &RedactedUrl) -> Result<Client> {
    Ok(Client::new(RabbitBackend::connect_url(url).await?))
}
