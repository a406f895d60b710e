//! The connection: SDK clients built from [`SqsConfig`], and the
//! [`Backend`] that makes producers and consumers.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use mq_core::backend::{
    Backend, DeadLetterListing, DeadLetterReader, HoldingReader, RotatingReader,
};
use mq_core::observe::{Health, QueueStats};
use mq_core::rpc::ReplyChannel;
use mq_core::{Capabilities, ConsumerOptions, DynConsumer, DynProducer, Error, Result};

use crate::batch::MAX_ENTRIES;
use crate::config::{SqsConfig, MAX_DELAY};
use crate::consumer::SqsConsumer;
use crate::core::{Core, RESERVED_FOR_ATTRIBUTES};
use crate::error::BACKEND;
use crate::fanout;
use crate::producer::SqsProducer;
use crate::topology;

/// A connection to SQS: what `mq::connect("sqs://…")` wraps in a `Client`.
/// Cheap to clone; clones share the queue cache and HTTP connections.
#[derive(Clone)]
pub struct SqsBackend {
    core: Arc<Core>,
}

impl fmt::Debug for SqsBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SqsConfig's Debug hides the secret key and session token.
        f.debug_struct("SqsBackend")
            .field("config", &self.core.config)
            .field("core", &self.core)
            .finish()
    }
}

impl SqsBackend {
    /// Connects as `config` says. No request is made yet: a wrong endpoint
    /// or credentials show on first use.
    pub async fn connect(config: SqsConfig) -> Result<Self> {
        let core = Core::connect(Arc::new(config)).await?;
        Ok(SqsBackend {
            core: Arc::new(core),
        })
    }

    /// The settings of this connection.
    pub fn config(&self) -> &SqsConfig {
        &self.core.config
    }

    /// A producer (what [`Backend::producer`] returns, without the `Arc`).
    pub fn sqs_producer(&self) -> SqsProducer {
        SqsProducer::new(self.core.clone())
    }

    /// A consumer (what [`Backend::consumer`] returns, unboxed).
    pub async fn sqs_consumer(&self, options: ConsumerOptions) -> Result<SqsConsumer> {
        self.open_consumer(options, false).await
    }

    async fn open_consumer(
        &self,
        options: ConsumerOptions,
        temporary: bool,
    ) -> Result<SqsConsumer> {
        let core = &self.core;
        // Resolve (or create) the queue now, so a bad name or a missing
        // queue is an error here rather than on the first receive.
        let (info, dead_letter) = match (&options.group, fanout::enabled(core)) {
            (Some(group), false) => {
                return Err(Error::unsupported(format!(
                    "SQS has no consumer groups or fan-out (group `{group}` asked for): consumers of a \
                     queue compete for its messages; add fanout=sns to the URL for publish/subscribe \
                     (an SNS topic per destination, a queue per group)"
                ))
                .with_backend(BACKEND)
                .with_operation("consume")
                .with_destination(options.source.clone()))
            }
            (Some(group), true) => {
                let info = fanout::subscribe(core, &options.source, Some(group)).await?;
                // Dead letters of every group of a destination go to the
                // destination's dead-letter queue (`mq-original-group` says whose).
                let option = options
                    .dead_letter
                    .clone()
                    .unwrap_or_else(|| topology::dead_letter_destination(core, &options.source));
                let dead_letter = topology::consumer_dead_letter(&info, Some(&option));
                (info, dead_letter)
            }
            (None, _) => {
                let info = topology::resolve(core, &options.source).await?;
                let dead_letter =
                    topology::consumer_dead_letter(&info, options.dead_letter.as_deref());
                (info, dead_letter)
            }
        };
        Ok(SqsConsumer::start(
            self.core.clone(),
            &info.logical,
            (&options.source, options.group.as_deref()),
            options.prefetch_or(mq_core::consumer::DEFAULT_PREFETCH),
            &dead_letter,
            temporary,
        ))
    }
}

#[async_trait]
impl Backend for SqsBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    /// With `fanout=sns`: groups (`pub_sub`), no delay on send (SNS has
    /// none), SNS's 256 KiB message limit.
    fn capabilities(&self) -> Capabilities {
        let config = &self.core.config;
        let fanout = fanout::enabled(&self.core);
        let mut caps = Capabilities::default();
        // FIFO queues take no per-message delay, SNS topics none at all.
        caps.delayed_delivery = !config.fifo && !fanout;
        caps.max_delay = Some(MAX_DELAY);
        caps.ordering_key = config.fifo;
        caps.native_dead_letter = false;
        caps.pub_sub = fanout;
        // A group's queue gets what is published after it subscribed.
        caps.late_group_receives_history = false;
        caps.durable_attempt_count = true;
        caps.persistent = config.persistent;
        let max = if fanout {
            fanout::max_size(&self.core)
        } else {
            config.max_message_size
        };
        caps.max_message_size = Some(max.saturating_sub(RESERVED_FOR_ATTRIBUTES));
        caps.max_batch = MAX_ENTRIES;
        // A FIFO queue delivers nothing more of a message group while one
        // of its messages is held: listing moves messages to the back.
        caps.dead_letter_listing = if self.core.config.fifo {
            DeadLetterListing::Rotate
        } else {
            DeadLetterListing::Hold
        };
        caps
    }

    async fn producer(&self) -> Result<DynProducer> {
        Ok(Arc::new(self.sqs_producer()))
    }

    async fn consumer(&self, options: ConsumerOptions) -> Result<DynConsumer> {
        Ok(Box::new(self.open_consumer(options, false).await?))
    }

    fn dead_letter_destination(&self, source: &str) -> String {
        topology::dead_letter_destination(&self.core, source)
    }

    /// Standard queues hold and release (visibility back to 0); FIFO
    /// queues move what a listing leaves to the back (see the crate docs,
    /// "Dead letters").
    async fn dead_letter_reader(
        &self,
        destination: &str,
        hold: usize,
    ) -> Result<Box<dyn DeadLetterReader>> {
        let consumer = self
            .consumer(ConsumerOptions::new(destination).prefetch(hold))
            .await?;
        if self.core.config.fifo {
            let producer = self.producer().await?;
            return Ok(Box::new(RotatingReader::new(
                consumer,
                producer,
                destination,
            )));
        }
        Ok(Box::new(HoldingReader::new(consumer)))
    }

    /// From the outcome of the latest requests (SQS is HTTP: see the crate
    /// docs, "Health and statistics").
    fn health(&self) -> Health {
        self.core.clients.health.health()
    }

    /// `GetQueueAttributes`: ApproximateNumberOfMessages (`depth`),
    /// ...NotVisible (`in_flight`), ...Delayed (`delayed`). Never creates
    /// the queue: a missing one is `NotFound`.
    async fn stats(&self, source: &str, group: Option<&str>) -> Result<QueueStats> {
        if let Some(group) = group {
            if !fanout::enabled(&self.core) {
                return Err(Error::unsupported(format!(
                    "SQS has no consumer groups without fanout=sns (group `{group}` asked for): \
                     stats are per queue"
                ))
                .with_backend(BACKEND)
                .with_operation("stats")
                .with_destination(source));
            }
            let queue = fanout::group_queue(source, Some(group), self.core.config.fifo)?;
            return topology::stats(&self.core, &queue).await;
        }
        topology::stats(&self.core, source).await
    }

    /// A private queue `mq-reply-<uuid>` (with `.fifo` under `fifo=true`),
    /// deleted when the requester's consumer goes away.
    async fn reply_channel(&self) -> Result<ReplyChannel> {
        let reply_to = format!("mq-reply-{}", mq_core::message::new_message_id());
        let consumer = self
            .open_consumer(ConsumerOptions::new(reply_to.clone()), true)
            .await?;
        Ok(ReplyChannel {
            reply_to,
            consumer: Box::new(consumer),
        })
    }
}
