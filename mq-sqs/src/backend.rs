//! The connection: SDK clients built from [`SqsConfig`], and the
//! [`Backend`] that makes producers and consumers.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_sqs::config::Credentials;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use mq_core::observe::{Health, QueueStats};
use mq_core::rpc::ReplyChannel;
use mq_core::{Backend, Capabilities, ConsumerOptions, DynConsumer, DynProducer, Error, Result};

use crate::batch::MAX_ENTRIES;
use crate::config::{Endpoint, SqsConfig, MAX_DELAY};
use crate::consumer::SqsConsumer;
use crate::health::{HealthInterceptor, HealthState};
use crate::producer::SqsProducer;
use crate::topology::{Clients, Queues, RESERVED_FOR_ATTRIBUTES};
use crate::BACKEND;

/// The region an explicit endpoint uses when neither the URL nor the
/// environment names one (emulators accept any).
const EMULATOR_REGION: &str = "us-east-1";

/// A connection to SQS: what `mq::connect("sqs://…")` wraps in a `Client`.
/// Cheap to clone; clones share the queue cache and HTTP connections.
#[derive(Clone)]
pub struct SqsBackend {
    config: Arc<SqsConfig>,
    queues: Arc<Queues>,
}

impl fmt::Debug for SqsBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SqsConfig's Debug hides the secret key and session token.
        f.debug_struct("SqsBackend")
            .field("config", &self.config)
            .field("queues", &self.queues)
            .finish()
    }
}

impl SqsBackend {
    /// Connects as `config` says. No request is made yet: a wrong endpoint
    /// or credentials show on first use.
    pub async fn connect(config: SqsConfig) -> Result<Self> {
        let config = Arc::new(config);
        let clients = clients(&config).await?;
        Ok(SqsBackend {
            queues: Arc::new(Queues::new(clients, config.clone())),
            config,
        })
    }

    /// The settings of this connection.
    pub fn config(&self) -> &SqsConfig {
        &self.config
    }

    /// A producer (what [`Backend::producer`] returns, without the `Arc`).
    pub fn sqs_producer(&self) -> SqsProducer {
        SqsProducer::new(self.queues.clone())
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
        if let Some(group) = &options.group {
            return Err(Error::unsupported(format!(
                "SQS has no consumer groups or fan-out (group `{group}` asked for): consumers of a queue \
                 compete for its messages; for publish/subscribe put SNS in front of one queue per group"
            ))
            .with_backend(BACKEND)
            .with_operation("consume")
            .with_destination(options.source.clone()));
        }
        // Resolve (or create) the queue now, so a bad name or a missing
        // queue is an error here rather than on the first receive.
        let info = self.queues.resolve(&options.source).await?;
        let dead_letter = Queues::consumer_dead_letter(&info, options.dead_letter.as_deref());
        Ok(SqsConsumer::start(
            self.queues.clone(),
            &options.source,
            options.prefetch,
            &dead_letter,
            temporary,
        ))
    }
}

/// The SDK clients for `config`: static or chained credentials, region,
/// endpoint, timeouts and retries, over hyper + rustls (ring).
pub(crate) async fn clients(config: &SqsConfig) -> Result<Clients> {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let attempts = config.max_attempts.max(1);
    // Saturating: a config built by hand may hold any duration.
    let timeouts = |attempt: Duration| {
        TimeoutConfig::builder()
            .connect_timeout(mq_core::time::clamp(config.connect_timeout))
            .operation_attempt_timeout(attempt)
            // Every attempt plus the SDK's backoff between them (at most 20 s each).
            .operation_timeout(mq_core::time::clamp(
                attempt
                    .saturating_mul(attempts)
                    .saturating_add(Duration::from_secs(2).saturating_mul(attempts)),
            ))
            .build()
    };
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(RetryConfig::standard().with_max_attempts(attempts))
        .timeout_config(timeouts(config.request_timeout()));
    if let Some(region) = &config.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(c) = &config.credentials {
        loader = loader.credentials_provider(Credentials::new(
            c.access_key_id.clone(),
            c.secret_access_key.expose().to_owned(),
            c.session_token.as_ref().map(|t| t.expose().to_owned()),
            None,
            "mq-sqs-url",
        ));
    }
    if let Endpoint::Url(url) = &config.endpoint {
        loader = loader.endpoint_url(url.clone());
    }
    let shared = loader.load().await;
    let health = Arc::new(HealthState::default());
    let mut builder =
        aws_sdk_sqs::config::Builder::from(&shared).interceptor(HealthInterceptor(health.clone()));
    if shared.region().is_none() {
        match config.endpoint {
            Endpoint::Url(_) => builder = builder.region(Region::new(EMULATOR_REGION)),
            Endpoint::Aws => {
                return Err(Error::config(
                    "no AWS region: add ?region=eu-west-1 to the sqs:// URL or set AWS_REGION \
                     (or a region in the AWS profile)",
                )
                .with_backend(BACKEND))
            }
        }
    }
    let ops = builder.clone().build();
    // A receive waits up to `wait` before SQS answers: its attempts get that on top.
    let receive = builder
        .timeout_config(timeouts(
            config
                .wait
                .min(crate::config::MAX_WAIT)
                .saturating_add(config.request_timeout()),
        ))
        .build();
    Ok(Clients {
        ops: aws_sdk_sqs::Client::from_conf(ops),
        receive: aws_sdk_sqs::Client::from_conf(receive),
        health,
    })
}

#[async_trait]
impl Backend for SqsBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        // FIFO queues take no per-message delay.
        caps.delayed_delivery = !self.config.fifo;
        caps.max_delay = Some(MAX_DELAY);
        caps.ordering_key = self.config.fifo;
        caps.native_dead_letter = false;
        caps.pub_sub = false;
        caps.late_group_receives_history = false;
        caps.durable_attempt_count = true;
        caps.persistent = self.config.persistent;
        caps.max_message_size = Some(
            self.config
                .max_message_size
                .saturating_sub(RESERVED_FOR_ATTRIBUTES),
        );
        caps.max_batch = MAX_ENTRIES;
        caps
    }

    async fn producer(&self) -> Result<DynProducer> {
        Ok(Arc::new(self.sqs_producer()))
    }

    async fn consumer(&self, options: ConsumerOptions) -> Result<DynConsumer> {
        Ok(Box::new(self.open_consumer(options, false).await?))
    }

    fn dead_letter_destination(&self, source: &str) -> String {
        self.queues.dead_letter_destination(source)
    }

    /// From the outcome of the latest requests (SQS is HTTP: see the crate
    /// docs, "Health and statistics").
    fn health(&self) -> Health {
        self.queues.clients.health.health()
    }

    /// `GetQueueAttributes`: ApproximateNumberOfMessages (`depth`),
    /// ...NotVisible (`in_flight`), ...Delayed (`delayed`). Never creates
    /// the queue: a missing one is `NotFound`.
    async fn stats(&self, source: &str, group: Option<&str>) -> Result<QueueStats> {
        if let Some(group) = group {
            return Err(Error::unsupported(format!(
                "SQS has no consumer groups (group `{group}` asked for): stats are per queue"
            ))
            .with_backend(BACKEND)
            .with_operation("stats")
            .with_destination(source));
        }
        self.queues.stats(source).await
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
