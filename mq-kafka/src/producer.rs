//! Sending: one librdkafka producer per connection, shared by every
//! [`KafkaProducer`] handle and by the consumers' retry and dead-letter
//! publishing.
//!
//! `send` hands the record to librdkafka (which batches and pipelines: many
//! sends in flight cost no extra round trips) and resolves on its delivery
//! report, i.e. once the broker acknowledged it with the configured `acks`
//! (`all` by default) through the idempotent producer.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use mq_core::{Error, ErrorKind, Message, Producer, Result};
use parking_lot::RwLock;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;

use crate::codec::record_headers;
use crate::config::KafkaConfig;
use crate::error::{convert, convert_create};
use crate::health::{HealthContext, KafkaHealth};
use crate::topology::Topology;
use crate::BACKEND;

/// The connection's librdkafka producer and what it needs to send.
pub(crate) struct Sender {
    /// Replaced when librdkafka reports a fatal error (an idempotent
    /// producer fenced after the broker lost its producer state): such a
    /// producer never sends again.
    producer: RwLock<FutureProducer<HealthContext>>,
    pub(crate) topology: Arc<Topology>,
    /// What this backend's librdkafka clients reported lately.
    pub(crate) health: Arc<KafkaHealth>,
    pub(crate) config: Arc<KafkaConfig>,
    pub(crate) max_message_size: usize,
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("brokers", &self.config.brokers)
            .field("max_message_size", &self.max_message_size)
            .finish()
    }
}

impl Sender {
    pub(crate) fn new(
        config: Arc<KafkaConfig>,
        topology: Arc<Topology>,
        health: Arc<KafkaHealth>,
    ) -> Result<Self> {
        let producer = Self::create(&config, &health)?;
        Ok(Sender {
            producer: RwLock::new(producer),
            topology,
            health,
            max_message_size: config.max_message_size(),
            config,
        })
    }

    fn create(
        config: &KafkaConfig,
        health: &Arc<KafkaHealth>,
    ) -> Result<FutureProducer<HealthContext>> {
        config
            .producer_config()
            .create_with_context(HealthContext::new(health.clone()))
            .map_err(|e| convert_create(e, config, None))
    }

    /// After a failed send: a producer in a fatal state, or one that could
    /// not deliver within `send_timeout`, is replaced, so the next send
    /// works again (the failed one is reported, and retryable). A broker
    /// that lost its state in a restart fences the idempotent producer or
    /// answers `UnknownProducerId` for good; a fresh producer gets a new id.
    fn recover(&self, failed: &FutureProducer<HealthContext>, error: &Error) {
        let reason = match failed.client().fatal_error() {
            Some((code, reason)) => format!("fatal error {code}: {reason}"),
            None if error.kind() == ErrorKind::Timeout => "a send timed out".to_owned(),
            None => return,
        };
        let mut current = self.producer.write();
        if !std::ptr::eq(current.client().native_ptr(), failed.client().native_ptr()) {
            return; // Already replaced by another send.
        }
        match Self::create(&self.config, &self.health) {
            Ok(fresh) => {
                tracing::warn!(reason, "replaced the Kafka producer");
                *current = fresh;
            }
            Err(e) => tracing::warn!(error = %e, "replacing the failed Kafka producer failed"),
        }
    }

    fn check(&self, destination: &str, message: &Message) -> Result<()> {
        if destination.is_empty() {
            return Err(Error::config("destination name is empty")
                .with_backend(BACKEND)
                .with_operation("send"));
        }
        if message.delay().is_some() {
            return Err(Error::unsupported(
                "Kafka has no delayed delivery: send without a delay (nack_after works, through the retry topic)",
            )
            .with_backend(BACKEND)
            .with_operation("send")
            .with_destination(destination));
        }
        let size = message.encoded_len();
        if size > self.max_message_size {
            return Err(Error::too_large(
                size,
                self.max_message_size,
                "kafka message_max_bytes minus record overhead",
            )
            .with_backend(BACKEND)
            .with_operation("send")
            .with_destination(destination));
        }
        Ok(())
    }

    /// Sends `message` to `topic`, after the checks.
    pub(crate) async fn send(&self, topic: &str, message: &Message) -> Result<()> {
        self.check(topic, message)?;
        self.send_unchecked(topic, message, false).await
    }

    /// Sends without the user-facing checks (republishing a received message,
    /// which was accepted once already); `create` makes the topic even with
    /// auto-creation off (mq's own retry and dead-letter topics).
    pub(crate) async fn send_unchecked(
        &self,
        topic: &str,
        message: &Message,
        create: bool,
    ) -> Result<()> {
        self.topology.ensure(topic, create).await?;
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic)
            .payload(message.payload().as_ref())
            .headers(record_headers(message));
        if let Some(k) = message.key() {
            record = record.key(k);
        }
        let producer = self.producer.read().clone();
        let sent = producer
            .send(record, Timeout::After(self.config.send_timeout))
            .await
            .map(|_| ())
            .map_err(|(e, _)| convert(e, "send", Some(topic)));
        if sent.is_ok() {
            self.health.up();
        }
        if let Err(e) = &sent {
            self.recover(&producer, e);
            if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Timeout) {
                self.topology.forget(topic);
            }
        }
        sent
    }

    pub(crate) async fn flush(&self) -> Result<()> {
        let producer = self.producer.read().clone();
        let timeout = self.config.send_timeout;
        tokio::task::spawn_blocking(move || producer.flush(Timeout::After(timeout)))
            .await
            .map_err(|e| {
                Error::new(
                    mq_core::ErrorKind::Broker,
                    format!("flush task failed: {e}"),
                )
            })?
            .map_err(|e| convert(e, "flush", None))
    }
}

/// Sends to Kafka. Cheap to clone; every clone (and every producer of one
/// connection) shares the connection's librdkafka producer.
#[derive(Clone)]
pub struct KafkaProducer {
    sender: Arc<Sender>,
    closed: Arc<AtomicBool>,
}

impl KafkaProducer {
    pub(crate) fn new(sender: Arc<Sender>) -> Self {
        KafkaProducer {
            sender,
            closed: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl fmt::Debug for KafkaProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaProducer")
            .field("sender", &self.sender)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

#[async_trait]
impl Producer for KafkaProducer {
    async fn send(&self, destination: &str, message: Message) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed("producer is closed")
                .with_backend(BACKEND)
                .with_operation("send")
                .with_destination(destination));
        }
        self.sender.send(destination, &message).await
    }

    fn health(&self) -> mq_core::observe::Health {
        self.sender.health.health()
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        self.sender.flush().await
    }
}
