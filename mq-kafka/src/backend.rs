//! [`KafkaBackend`]: the [`Backend`] that makes producers, consumers,
//! reply channels, health and stats from one connection (top of the
//! crate's files: it uses all the others).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use mq_core::backend::{Backend, DeadLetterListing, DeadLetterReader};
use mq_core::observe::{Health, QueueStats};
use mq_core::rpc::ReplyChannel;
use mq_core::{Capabilities, ConsumerOptions, DynConsumer, DynProducer, Error, Result};

use crate::config::KafkaConfig;
use crate::consumer::KafkaConsumer;
use crate::core::Sender;
use crate::error::BACKEND;
use crate::health::KafkaHealth;
use crate::mock::MockCluster;
use crate::producer::KafkaProducer;
use crate::stats;
use crate::topology::{default_group, retry_topic, Topology};

/// A connection to a Kafka cluster: one librdkafka producer and admin
/// client, shared by every producer and consumer made from it. Clones share it.
#[derive(Clone)]
pub struct KafkaBackend {
    config: Arc<KafkaConfig>,
    pub(crate) sender: Arc<Sender>,
}

impl fmt::Debug for KafkaBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaBackend")
            .field("config", &self.config)
            .finish()
    }
}

impl KafkaBackend {
    /// A backend for `config`. librdkafka connects lazily: an unreachable
    /// broker shows as a connection or timeout error on the first operation.
    pub fn new(config: KafkaConfig) -> Result<Self> {
        Self::with_mock(config, None)
    }

    /// A backend on the in-process cluster `mock` (`kafka+mock://`), whose
    /// address `config` names; the backend keeps the cluster running.
    pub(crate) fn with_mock(config: KafkaConfig, mock: Option<MockCluster>) -> Result<Self> {
        let config = Arc::new(config);
        let health = Arc::new(KafkaHealth::default());
        let topology = Arc::new(Topology::new(config.clone(), health.clone(), mock)?);
        let sender = Arc::new(Sender::new(config.clone(), topology, health)?);
        Ok(KafkaBackend { config, sender })
    }

    /// The group a consumer of `source` joins when it names `group` (or
    /// none): the URL's `group`, else [`default_group`].
    pub fn group_for(&self, source: &str, group: Option<&str>) -> String {
        group
            .map(str::to_owned)
            .or_else(|| self.config.group.clone())
            .unwrap_or_else(|| default_group(source))
    }

    /// The settings.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// A producer.
    pub fn kafka_producer(&self) -> KafkaProducer {
        KafkaProducer::new(self.sender.clone())
    }

    /// A consumer as `options` say.
    pub async fn kafka_consumer(&self, options: ConsumerOptions) -> Result<KafkaConsumer> {
        if options.source.is_empty() {
            return Err(Error::config("source name is empty").with_backend(BACKEND));
        }
        let group = self.group_for(&options.source, options.group.as_deref());
        let retry = retry_topic(&options.source, &group);
        let dead_letter = options.dead_letter_destination();
        let prefetch = options.prefetch_or(mq_core::consumer::DEFAULT_PREFETCH);
        let topology = &self.sender.topology;
        topology.ensure(&options.source, false).await?;
        topology.ensure(&retry, true).await?;
        KafkaConsumer::start(
            &self.config,
            self.sender.clone(),
            options.source,
            group,
            retry,
            dead_letter,
            prefetch,
        )
    }
}

#[async_trait]
impl Backend for KafkaBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::default();
        c.delayed_delivery = false;
        c.ordering_key = true;
        c.native_dead_letter = false;
        c.pub_sub = true;
        c.late_group_receives_history = true;
        c.durable_attempt_count = true;
        c.persistent = self.config.persistent;
        c.max_message_size = Some(self.config.max_message_size());
        c.max_batch = 10_000;
        c.dead_letter_listing = DeadLetterListing::Log;
        c
    }

    async fn producer(&self) -> Result<DynProducer> {
        Ok(Arc::new(self.kafka_producer()))
    }

    async fn consumer(&self, options: ConsumerOptions) -> Result<DynConsumer> {
        Ok(Box::new(self.kafka_consumer(options).await?))
    }

    /// A reply topic `mq-reply-<uuid>` with one partition, always created
    /// (whatever `auto_create_topics` says), and a consumer on it that reads
    /// it from the start.
    async fn reply_channel(&self) -> Result<ReplyChannel> {
        let reply_to = format!("mq-reply-{}", mq_core::message::new_message_id());
        self.sender.topology.ensure(&reply_to, true).await?;
        let consumer = self
            .consumer(ConsumerOptions::new(reply_to.clone()))
            .await?;
        Ok(ReplyChannel { reply_to, consumer })
    }

    /// The dead-letter topic read as a log; removal is a marker record
    /// (see the crate docs, "Dead letters").
    async fn dead_letter_reader(
        &self,
        destination: &str,
        hold: usize,
    ) -> Result<Box<dyn DeadLetterReader>> {
        Ok(Box::new(crate::dlq::LogReader::new(
            self.sender.clone(),
            destination,
            hold,
        )))
    }

    /// From librdkafka's error and statistics callbacks of every client of
    /// this backend (see the crate docs, "Health and statistics").
    fn health(&self) -> Health {
        self.sender.health.health()
    }

    /// The lag of `group` (default: the group a consumer of `source` would
    /// join) on `source`: `depth` is its sum, `lag` per partition,
    /// `delayed` what waits in the group's retry topic.
    async fn stats(&self, source: &str, group: Option<&str>) -> Result<QueueStats> {
        if source.is_empty() {
            return Err(Error::config("source name is empty").with_backend(BACKEND));
        }
        let group = self.group_for(source, group);
        stats::group_stats(&self.config, &self.sender.health, source, &group).await
    }

    async fn close(&self) -> Result<()> {
        self.sender.flush().await
    }
}
