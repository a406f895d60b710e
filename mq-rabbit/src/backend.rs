//! The client: capabilities, and the factory of producers and consumers.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use mq_core::observe::{Health, QueueStats};
use mq_core::rpc::ReplyChannel;
use mq_core::url::RedactedUrl;
use mq_core::{
    Backend, Capabilities, ConsumerOptions, DynConsumer, DynProducer, Error, ErrorKind, Message,
    Result,
};

use crate::config::{RabbitConfig, Topology};
use crate::connection::{Conn, Connector};
use crate::consumer::RabbitConsumer;
use crate::error::{within, BACKEND};
use crate::headers::{encode, Wire};
use crate::producer::{publish_confirmed, PublishFailure, RabbitProducer};
use crate::rpc::{ReplyConsumer, ReplyRoutes};
use crate::topology::{
    consumer_queue, ensure, forget, inspect_queue, known_ttl_queues, send_route, Route, DLQ_SUFFIX,
    MAX_DELAY,
};

/// What producers, consumers and settlers of one client share.
pub(crate) struct Shared {
    pub(crate) config: Arc<RabbitConfig>,
    /// The URL the client was made from, for `Debug` (always redacted).
    url: Option<RedactedUrl>,
    pub(crate) connector: Connector,
    pub(crate) replies: ReplyRoutes,
}

impl Shared {
    /// Where dead letters of `source` go.
    pub(crate) fn dead_letter_destination(&self, source: &str) -> String {
        format!("{source}{DLQ_SUFFIX}")
    }

    /// Sends `message` to `destination` (checks, routes, declares, publishes).
    pub(crate) async fn send(&self, destination: &str, message: Message) -> Result<()> {
        if destination.is_empty() {
            return Err(Error::config("destination name is empty")
                .with_backend(BACKEND)
                .with_operation("send"));
        }
        let size = message.encoded_len();
        if size > self.config.max_message_size {
            return Err(Error::too_large(
                size,
                self.config.max_message_size,
                "RabbitMQ max_message_size",
            )
            .with_backend(BACKEND)
            .with_operation("send"));
        }
        let route = send_route(&self.config, destination, message.delay())?;
        let wire = encode(message, self.config.persistent)?;
        self.publish(&route, wire, "send").await
    }

    /// Publishes `wire` along `route` with a confirm, declaring what the
    /// route needs first; declarations and confirm together take at most
    /// `operation_timeout`. When the broker did not take the message because
    /// a declaration of this client is gone (a queue or exchange deleted
    /// behind its back), the declarations are forgotten, made again, and the
    /// message is published once more.
    pub(crate) async fn publish(
        &self,
        route: &Route,
        wire: Wire,
        operation: &'static str,
    ) -> Result<()> {
        let conn = self.connector.get().await?;
        // Requests of a requester go on its reply channel (direct reply-to);
        // waiting for it to resubscribe is not a wait on the broker.
        let reply_channel = match &wire.reply_token {
            Some(token) => Some(
                self.replies
                    .channel(token, self.config.reconnect_wait)
                    .await?,
            ),
            None => None,
        };
        let publishing = async {
            let first = self
                .publish_on(&conn, route, &wire, reply_channel.as_deref(), operation)
                .await;
            match first {
                Ok(()) => Ok(()),
                Err(PublishFailure::Stale(e)) if route.needs.declares_something() => {
                    tracing::info!(exchange = %route.exchange, routing_key = %route.routing_key,
                        error = %e, "the broker lost what this client declared; declaring again and publishing once more");
                    forget(&conn, &route.needs);
                    self.publish_on(&conn, route, &wire, reply_channel.as_deref(), operation)
                        .await
                        .map_err(PublishFailure::into_error)
                }
                Err(failure) => Err(failure.into_error()),
            }
        };
        within(self.config.operation_timeout, operation, publishing).await
    }

    async fn publish_on(
        &self,
        conn: &Conn,
        route: &Route,
        wire: &Wire,
        reply_channel: Option<&lapin::Channel>,
        operation: &'static str,
    ) -> std::result::Result<(), PublishFailure> {
        ensure(conn, &self.config, &route.needs)
            .await
            .map_err(PublishFailure::Failed)?;
        let properties = wire.properties.clone();
        match reply_channel {
            Some(channel) => {
                let properties = properties.with_reply_to(crate::rpc::DIRECT_REPLY_TO.into());
                publish_confirmed(channel, route, &wire.payload, properties, operation).await
            }
            None => {
                let channel = conn
                    .publish_channel()
                    .await
                    .map_err(PublishFailure::Failed)?;
                publish_confirmed(&channel, route, &wire.payload, properties, operation).await
            }
        }
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitClient")
            .field("url", &self.url)
            .field("config", &self.config)
            .field("connection", &self.connector)
            .finish()
    }
}

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
            shared: Arc::new(Shared {
                config,
                url,
                connector,
                replies: ReplyRoutes::default(),
            }),
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
        self.shared.dead_letter_destination(source)
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
