//! A connection to one broker, whatever its kind.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;

use crate::capabilities::Capabilities;
use crate::consumer::{ConsumerOptions, DynConsumer};
use crate::error::Result;
use crate::health::Health;
use crate::observe::{InstrumentedConsumer, InstrumentedProducer};
use crate::producer::DynProducer;
use crate::queue_stats::QueueStats;

/// A consumer of replies and the name requests give as `mq-reply-to`.
#[derive(Debug)]
pub struct ReplyChannel {
    /// Where responders send replies.
    pub reply_to: String,
    /// Receives the replies.
    pub consumer: DynConsumer,
}

/// What a backend implements: a connected broker that makes producers and
/// consumers. Applications use it through [`Client`].
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// Short name used in errors, logs and metrics (`"memory"`, `"rabbitmq"`, ...).
    fn name(&self) -> &'static str;

    /// What this backend supports.
    fn capabilities(&self) -> Capabilities;

    /// A producer; cheap to clone and share.
    async fn producer(&self) -> Result<DynProducer>;

    /// A consumer as `options` say.
    async fn consumer(&self, options: ConsumerOptions) -> Result<DynConsumer>;

    /// Where dead-lettered messages of `source` go (`<source>-dlq` unless the
    /// broker has its own convention).
    fn dead_letter_destination(&self, source: &str) -> String {
        format!("{source}-dlq")
    }

    /// A reader of the dead letters in `destination` that holds at most
    /// `hold` of them at once (see [`dead_letter_reader`](crate::dead_letter_reader)).
    /// The default receives and holds through [`consumer`](Backend::consumer)
    /// ([`HoldingReader`](crate::dead_letter_reader::HoldingReader)); a log
    /// backend overrides it and reports
    /// [`DeadLetterListing::Log`](crate::capabilities::DeadLetterListing::Log).
    async fn dead_letter_reader(
        &self,
        destination: &str,
        hold: usize,
    ) -> Result<Box<dyn crate::dead_letter_reader::DeadLetterReader>> {
        let consumer = self
            .consumer(ConsumerOptions::new(destination).prefetch(hold))
            .await?;
        Ok(Box::new(crate::dead_letter_reader::HoldingReader::new(
            consumer,
        )))
    }

    /// A private destination for replies and a consumer on it, for
    /// [`Requester`](crate::rpc::Requester). The default makes an ordinary
    /// destination `mq-reply-<uuid>`; backends with a native mechanism
    /// (RabbitMQ direct reply-to) override it.
    async fn reply_channel(&self) -> Result<ReplyChannel> {
        let reply_to = format!("mq-reply-{}", crate::message::new_message_id());
        let consumer = self
            .consumer(ConsumerOptions::new(reply_to.clone()))
            .await?;
        Ok(ReplyChannel { reply_to, consumer })
    }

    /// The state of the connection: connected, last error, reconnects.
    fn health(&self) -> Health {
        Health::healthy()
    }

    /// What the broker reports about `source` (and `group`): depth,
    /// in-flight, lag. [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported)
    /// where the broker reports nothing.
    async fn stats(&self, source: &str, group: Option<&str>) -> Result<QueueStats> {
        let _ = group;
        Err(crate::Error::unsupported(format!(
            "{} reports no statistics for {source}",
            self.name()
        )))
    }

    /// Closes the connection; producers and consumers made from it stop working.
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// A handle to a connected broker: what [`connect`](crate::Registry::connect)
/// returns. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    backend: Arc<dyn Backend>,
}

impl Client {
    /// Wraps a connected backend.
    pub fn new(backend: impl Backend) -> Self {
        Client {
            backend: Arc::new(backend),
        }
    }

    /// Wraps a shared backend.
    pub fn from_arc(backend: Arc<dyn Backend>) -> Self {
        Client { backend }
    }

    /// The backend's short name (`"memory"`, `"rabbitmq"`, ...).
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// The backend itself.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// What the backend supports.
    pub fn capabilities(&self) -> Capabilities {
        self.backend.capabilities()
    }

    /// A producer; clone it freely. Every send is traced and counted (see
    /// [`observe`](crate::observe)).
    pub async fn producer(&self) -> Result<DynProducer> {
        let inner = self.backend.producer().await?;
        let name = self.backend.name();
        Ok(InstrumentedProducer::wrap(
            inner,
            name,
            self.backend.capabilities(),
        ))
    }

    /// A consumer of `source` in its default group; chain `.group(..)` or
    /// `.prefetch(..)` before awaiting:
    ///
    /// ```no_run
    /// # async fn f(client: mq_core::Client) -> mq_core::Result<()> {
    /// let mut consumer = client.consumer("emails").group("senders").prefetch(32).await?;
    /// # Ok(()) }
    /// ```
    pub fn consumer(&self, source: impl Into<String>) -> ConsumerBuilder {
        ConsumerBuilder {
            backend: self.backend.clone(),
            options: ConsumerOptions::new(source),
        }
    }

    /// A consumer as `options` say. Every delivery is traced and counted
    /// (see [`observe`](crate::observe)).
    pub async fn consumer_with(&self, options: ConsumerOptions) -> Result<DynConsumer> {
        instrumented_consumer(&self.backend, options).await
    }

    /// The state of the connection to the broker.
    pub fn health(&self) -> Health {
        self.backend.health()
    }

    /// What the broker reports about `source` in `group` (`None`: default group).
    pub async fn stats(&self, source: &str, group: Option<&str>) -> Result<QueueStats> {
        self.backend.stats(source, group).await
    }

    /// Where dead-lettered messages of `source` go.
    pub fn dead_letter_destination(&self, source: &str) -> String {
        self.backend.dead_letter_destination(source)
    }

    /// Closes the connection.
    pub async fn close(&self) -> Result<()> {
        self.backend.close().await
    }
}

async fn instrumented_consumer(
    backend: &Arc<dyn Backend>,
    options: ConsumerOptions,
) -> Result<DynConsumer> {
    let mut options = options;
    if options.dead_letter.is_none() {
        options.dead_letter = Some(backend.dead_letter_destination(&options.source));
    }
    let (source, group) = (options.source.clone(), options.group.clone());
    let inner = backend.consumer(options).await?;
    Ok(InstrumentedConsumer::wrap(
        inner,
        backend.name(),
        &source,
        group.as_deref(),
    ))
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("backend", &self.backend)
            .finish()
    }
}

/// Builds a consumer; await it to connect. Made by [`Client::consumer`].
#[must_use = "a ConsumerBuilder does nothing until awaited"]
#[derive(Debug)]
pub struct ConsumerBuilder {
    backend: Arc<dyn Backend>,
    options: ConsumerOptions,
}

impl ConsumerBuilder {
    /// Joins `group` (competing consumers within it; each group gets a copy).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.options = self.options.group(group);
        self
    }

    /// Holds at most `prefetch` unsettled deliveries.
    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.options = self.options.prefetch(prefetch);
        self
    }

    /// Sends dead letters to `destination` instead of the backend's default.
    pub fn dead_letter(mut self, destination: impl Into<String>) -> Self {
        self.options = self.options.dead_letter(destination);
        self
    }
}

impl IntoFuture for ConsumerBuilder {
    type Output = Result<DynConsumer>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { instrumented_consumer(&self.backend, self.options).await })
    }
}
