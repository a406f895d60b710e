#![doc = include_str!("../README.md")]
//!
//! # Source files
//!
//! Every backend crate of `mq` has the same files. Each uses only files
//! listed above it, so there is no import cycle:
//!
//! ```text
//! error      librdkafka errors -> mq_core::Error (the one place), BACKEND,
//!            which options are secret
//! config     kafka:// URL and options -> KafkaConfig -> librdkafka settings
//! metadata   KafkaMetadata: topic, partition and offset of a delivery
//! offsets    PartitionState: settled offsets of a partition, what to commit
//! acks       acks queued by settle, applied to the state together
//! codec      Message <-> Kafka record (headers, id, attempt, not-before)
//! health     health from librdkafka's error and statistics callbacks
//! mock       kafka+mock://: librdkafka's mock cluster on its own thread
//! topology   topic names (retry, dead letter, default group), topic creation
//! core       Sender: the connection's librdkafka producer, shared by all;
//!            Shared: one consumer's state (poll thread, handle, settler)
//! settle     the Settler: ack, nack (retry topic or rewind), dead letter
//! producer   KafkaProducer
//! consumer   KafkaConsumer: the poll thread, receive, close
//! stats      a group's lag, for Backend::stats
//! dlq        the dead-letter topic read as a log, removal markers
//! backend    KafkaBackend: capabilities, producers, consumers, replies,
//!            health, stats
//! lib        DRIVER, register, connect
//! ```
//!
//! `python3 scripts/module_cycles.py mq-kafka/src` checks it and prints the
//! layers: `{acks, error, metadata, offsets} < {codec, config, health} < mock <
//! topology < {core, stats} < {producer, settle} < consumer < backend`.
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]
#![forbid(unsafe_code)]

mod acks;
mod backend;
mod codec;
mod config;
mod consumer;
mod core;
mod dlq;
mod error;
mod health;
mod metadata;
mod mock;
mod offsets;
mod producer;
mod settle;
mod stats;
mod topology;

pub use backend::KafkaBackend;
pub use codec::NOT_BEFORE;
pub use config::{KafkaConfig, PassThrough, Security, DEFAULT_PORT, RECORD_OVERHEAD};
pub use consumer::KafkaConsumer;
pub use dlq::{removed_topic, REMOVES_HEADER};
pub use error::BACKEND;
pub use metadata::KafkaMetadata;
pub use mock::{is_mock_url, MockCluster, MOCK_PARTITION_BYTES, MOCK_SCHEME};
pub use producer::KafkaProducer;
pub use topology::{dead_letter_topic, default_group, retry_topic};

use mq_core::backend::{Connector, Driver, Registry, TestImage};
use mq_core::{Client, Result};

/// The URL schemes this backend serves.
pub const SCHEMES: &[&str] = &["kafka", MOCK_SCHEME];

/// This backend as one value: what the facade's registry, the conformance
/// suite and the test set-up need to know about it. Its connector gets the
/// URL as written ([`Connector::Raw`]): a Kafka URL naming several brokers
/// (`kafka://h1:9092,h2:9092`) is not a WHATWG URL, so [`KafkaConfig`]
/// parses and redacts it itself.
pub const DRIVER: Driver = Driver {
    name: BACKEND,
    feature: "kafka",
    schemes: SCHEMES,
    connect: Connector::Raw(|url| Box::pin(async move { connect(&url).await })),
    test_key: "KAFKA",
    test_broker: "kafka",
    // The options scripts/brokers.sh gives its in-memory tansu (topics made
    // on demand, short group timeouts, no persistence claimed); they suit
    // the official image too. tansu keeps topics in memory only, so a
    // restarted container has nothing to recover.
    test_image: Some(TestImage {
        official: "apache/kafka-native",
        port: 9092,
        ready: "ready in",
        restartable: false,
        advertise_env: Some("ADVERTISED_LISTENER_URL"),
        url: |addr| {
            format!(
                "kafka://{addr}?auto_create_topics=true&partitions=4&session_timeout=6s\
                 &heartbeat=500ms&send_timeout=30s&rdkafka.batch.num.messages=1&persistent=false"
            )
        },
    }),
};

/// Registers `kafka://` and `kafka+mock://` in `registry`.
pub fn register(registry: &mut Registry) {
    registry.register_driver(&DRIVER);
}

/// Connects to the brokers a `kafka://` URL names, or to the in-process
/// cluster a `kafka+mock://` URL names (started if no client has it open);
/// see the crate docs.
pub async fn connect(url: &str) -> Result<Client> {
    if is_mock_url(url) {
        let (cluster, config) = MockCluster::open(url).await?;
        return Ok(Client::new(KafkaBackend::with_mock(config, Some(cluster))?));
    }
    let config = KafkaConfig::from_url(url)?;
    Ok(Client::new(KafkaBackend::new(config)?))
}
