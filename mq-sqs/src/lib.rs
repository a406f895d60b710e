#![doc = include_str!("../README.md")]
//! ## Source files
//!
//! Each file uses only the ones before it (`scripts/module_cycles.py`
//! checks there is no cycle); the layers, lowest first:
//!
//! ```text
//! {batch, error, metadata} < {config, health} < {codec, core} < topology
//!     < fanout < producer < settle < consumer < backend
//! ```
//!
//! `error` (SDK errors to `mq` errors, the only place), `config` (the URL),
//! `metadata` ([`SqsMetadata`]), `codec` (`mq` message to SQS message and
//! back), `health` (health from every request's outcome), `batch`
//! (coalescing calls into batches of 10), `core` (the connection's SDK
//! clients, request budgets and queue cache), `topology` (queue names,
//! resolution, creation, statistics), `fanout` (SNS topics and the
//! subscribed queues of `fanout=sns`, publishing to them), `producer`, `settle` (after the
//! producer: a dead letter is a send), `consumer`, `backend`
//! ([`SqsBackend`]), and here: [`DRIVER`], [`register`], [`connect`].
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]
#![forbid(unsafe_code)]

mod backend;
mod batch;
mod codec;
mod config;
mod consumer;
mod core;
mod error;
mod fanout;
mod health;
mod metadata;
mod producer;
mod settle;
mod topology;

pub use crate::backend::SqsBackend;
pub use crate::codec::{
    ATTR_BODY_ENCODING, ATTR_CONTENT_TYPE, ATTR_HEADERS, ATTR_KEY, ATTR_MESSAGE_ID,
    DEFAULT_GROUP_ID, MAX_ATTRIBUTES,
};
pub use crate::config::{
    Endpoint, Fanout, SqsConfig, StaticCredentials, DEFAULT_MAX_MESSAGE_SIZE, MAX_DELAY,
    MAX_VISIBILITY, MAX_WAIT, MIN_MAX_MESSAGE_SIZE,
};
pub use crate::consumer::SqsConsumer;
pub use crate::core::{SdkClients, RESERVED_FOR_ATTRIBUTES};
pub use crate::error::BACKEND;
pub use crate::fanout::{GROUP_SEPARATOR, SNS_MAX_MESSAGE_SIZE};
pub use crate::metadata::SqsMetadata;
pub use crate::producer::SqsProducer;
pub use crate::topology::MAX_QUEUE_NAME;

use mq_core::backend::{Connector, Driver, RedactedUrl, Registry, TestImage};
use mq_core::{Client, Result};

/// The URL schemes this crate serves.
pub const SCHEMES: &[&str] = &["sqs", "sqs+http", "sqs+https"];

/// This backend for the facade's list of backends (`mq::BACKENDS`).
pub const DRIVER: Driver = Driver {
    name: BACKEND,
    feature: "sqs",
    schemes: SCHEMES,
    connect: Connector::Parsed(|url| Box::pin(async move { connect_url(&url).await })),
    test_key: "SQS",
    test_broker: "sqs",
    test_image: Some(TestImage {
        official: "softwaremill/elasticmq",
        port: 4566,
        ready: "Running on",
        restartable: true,
        advertise_env: None,
        url: |addr| format!("sqs+http://test:test@{addr}?region=us-east-1"),
    }),
};

/// Registers `sqs://`, `sqs+http://` and `sqs+https://` in `registry`.
pub fn register(registry: &mut Registry) {
    registry.register_driver(&DRIVER);
}

/// Connects to the SQS endpoint `url` names (see the crate docs for the forms).
pub async fn connect(url: &str) -> Result<Client> {
    connect_url(&RedactedUrl::parse(url)?).await
}

async fn connect_url(url: &RedactedUrl) -> Result<Client> {
    let config = SqsConfig::from_url(url)?;
    Ok(Client::new(SqsBackend::connect(config).await?))
}
