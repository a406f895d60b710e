#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]
#![forbid(unsafe_code)]

mod backend;
mod config;
mod connection;
mod consumer;
mod error;
mod headers;
mod producer;
mod rpc;
mod settle;
mod topology;

pub use backend::RabbitBackend;
pub use config::{
    AuthMechanism, QueueType, RabbitConfig, Topology, DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_OPERATION_TIMEOUT,
};
pub use consumer::RabbitConsumer;
pub use producer::RabbitProducer;
pub use settle::RabbitDelivery;

/// The AMQP client this backend is built on, for what `mq` does not cover
/// (e.g. reading [`RabbitDelivery::properties`]).
pub use lapin;

use mq_core::url::RedactedUrl;
use mq_core::{Client, Registry, Result};

/// The URL schemes this backend serves.
pub const SCHEMES: [&str; 2] = ["amqp", "amqps"];

/// Registers `amqp://` and `amqps://` in `registry`.
pub fn register(registry: &mut Registry) {
    for scheme in SCHEMES {
        registry.register(scheme, |url| {
            Box::pin(async move { connect_url(&url).await })
        });
    }
}

/// Connects to the broker an `amqp://` or `amqps://` URL names.
pub async fn connect(url: &str) -> Result<Client> {
    connect_url(&RedactedUrl::parse(url)?).await
}

async fn connect_url(url: &RedactedUrl) -> Result<Client> {
    Ok(Client::new(RabbitBackend::connect_url(url).await?))
}
