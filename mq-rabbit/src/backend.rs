//! The client: capabilities, health, stats, and the factory of producers
//! and consumers.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use mq_core::backend::{Backend, RedactedUrl};
use mq_core::observe::{Health, QueueStats};
use mq_core::rpc::ReplyChannel;
use mq_core::{Capabilities, ConsumerOptions, DynConsumer, DynProducer, Error, ErrorKind, Result};

use crate::config::{RabbitConfig, Topology};
use crate::connection::Connector;
use crate::consumer::RabbitConsumer;
use crate::core::Shared;
use crate::error::{within, BACKEND};
use crate::producer::RabbitProducer;
use crate::rpc::ReplyConsumer;
use crate::topology::{consumer_queue, inspect_queue, known_ttl_queues, DLQ_SUFFIX, MAX_DELAY};

/// A connected RabbitMQ client; wrap it in [`mq_core::Client`] (what
/// `mq::connect("amqp://...")` returns).
#[derive(Clone)]
pub struct RabbitBackend {
    shared: Arc<Shared>,
}

impl RabbitBackend {
    /// Connects with `config`. Fails if the broker cannot be reached or
    /// refuses the login; later outages are recovered from automatically.
    pub async fn connect(config: RabbitConfig) -> Result<Self> {
        Self::connect_inner(config, None).await
    }

    /// Connects to the broker `url` names (see the crate docs for the options).
    pub async fn connect_url(url: &RedactedUrl) -> Result<Self> {
        let config = RabbitConfig::from_url(url)?;
        Self::connect_inner(config, Some(url.clone())).await
    }

    async fn connect_inner(config: RabbitConfig, url: Option<RedactedUrl>) -> Result<Self> {
        config.validate()?;
        let config = Arc::new(config);
        let connector = Connector::connect(config.clone()).await?;
        Ok(RabbitBackend {
            shared: Arc::new(Shared::new(config, url, connector)),
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &RabbitConfig {
        &self.shared.config
    }

    /// A producer (also what [`Backend::producer`] returns, boxed).
    pub fn rabbit_producer(&self) -> RabbitProducer {
        RabbitProducer::new(self.shared.clone())
    }

    /// A consumer (also what [`Backend::consumer`] returns, boxed).
    pub async fn rabbit_consumer(&self, options: ConsumerOptions) -> Result<RabbitConsumer> {
        if options.source.is_empty() {
            return Err(Error::config("source name is empty").with_backend(BACKEND));
        }
        RabbitConsumer::start(self.shared.clone(), options).await
    }
}

#[async_trait]
impl Backend for RabbitBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        let config = &self.shared.config;
        let mut caps = Capabilities::default();
        caps.delayed_delivery = true;
        caps.max_delay = Some(MAX_DELAY);
        // A queue delivers in order to one consumer; several competing
        // consumers of one queue interleave (use single_active_consumer=true
        // to keep order with standbys). Nacks requeue at the back.
        caps.ordering_key = true;
        caps.native_dead_letter = false;
        caps.pub_sub = config.topology == Topology::Exchange;
        caps.late_group_receives_history = false;
        caps.durable_attempt_count = true;
        caps.persistent = config.durable && config.persistent;
        caps.max_message_size = Some(config.max_message_size);
        // Sends are pipelined on one channel: any number per batch.
        caps.max_batch = usize::MAX;
        caps
    }

    async fn producer(&self) -> Result<DynProducer> {
        Ok(Arc::new(self.rabbit_producer()))
    }

    async fn consumer(&self, options: ConsumerOptions) -> Result<DynConsumer> {
        Ok(Box::new(self.rabbit_consumer(options).await?))
    }

    fn dead_letter_destination(&self, source: &str) -> String {
        format!("{source}{DLQ_SUFFIX}")
    }

    async fn reply_channel(&self) -> Result<ReplyChannel> {
        let (reply_to, consumer) = ReplyConsumer::start(self.shared.clone()).await?;
        Ok(ReplyChannel {
            reply_to,
            consumer: Box::new(consumer),
        })
    }

    fn health(&self) -> Health {
        self.shared.connector.health()
    }

    /// A passive `queue.declare` of the queue a consumer of (`source`,
    /// `group`) reads: `depth` is its ready messages, `consumers` its
    /// consumers. `in_flight` (delivered, unacked) is not in the AMQP
    /// answer, so it is `None`. `delayed` sums the retry/delay queues this
    /// client declared for it on its current connection, `None` if none.
    async fn stats(&self, source: &str, group: Option<&str>) -> Result<QueueStats> {
        let queue = consumer_queue(&self.shared.config, source, group)
            .map_err(|e| e.with_operation("stats"))?;
        let conn = self.shared.connector.get().await?;
        let limit = self.shared.config.operation_timeout;
        let (depth, consumers) = within(limit, "stats", inspect_queue(&conn, &queue)).await?;
        let mut stats = QueueStats::default();
        stats.depth = Some(depth);
        stats.consumers = Some(consumers);
        let ttl_queues = known_ttl_queues(&conn, source, &queue);
        if !ttl_queues.is_empty() {
            let mut delayed = 0;
            for ttl_queue in ttl_queues {
                match within(limit, "stats", inspect_queue(&conn, &ttl_queue)).await {
                    Ok((ready, _)) => delayed += ready,
                    // Expired since (x-expires): nothing waits in it.
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            stats.delayed = Some(delayed);
        }
        Ok(stats)
    }

    async fn close(&self) -> Result<()> {
        self.shared.connector.close().await;
        Ok(())
    }
}

impl fmt::Debug for RabbitBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.shared, f)
    }
}
