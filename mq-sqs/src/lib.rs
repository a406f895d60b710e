#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]
#![forbid(unsafe_code)]

mod backend;
mod batch;
pub mod codec;
pub mod config;
mod consumer;
mod error;
mod health;
mod producer;
mod settle;
pub mod topology;

pub use backend::SqsBackend;
pub use config::{Endpoint, SqsConfig, StaticCredentials};
pub use consumer::{SqsConsumer, SqsMetadata};
pub use producer::SqsProducer;

use mq_core::registry::Registry;
use mq_core::url::RedactedUrl;
use mq_core::{Client, Result};

/// The backend's name in errors, logs and metrics.
pub const BACKEND: &str = "sqs";

/// The URL schemes this crate serves.
pub const SCHEMES: [&str; 3] = ["sqs", "sqs+http", "sqs+https"];

/// Registers `sqs://`, `sqs+http://` and `sqs+https://` in `registry`.
pub fn register(registry: &mut Registry) {
    for scheme in SCHEMES {
        registry.register(scheme, |url| Box::pin(connect(url)));
    }
}

/// Connects to the SQS endpoint `url` names (see the crate docs for the forms).
pub async fn connect(url: RedactedUrl) -> Result<Client> {
    let config = SqsConfig::from_url(&url)?;
    Ok(Client::new(SqsBackend::connect(config).await?))
}
