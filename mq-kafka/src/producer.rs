//! Sending: [`KafkaProducer`], a handle on the connection's one librdkafka
//! producer (`Sender` in `core.rs`), which the consumers' retry and
//! dead-letter publishing share.
//!
//! `send` hands the record to librdkafka (which batches and pipelines: many
//! sends in flight cost no extra round trips) and resolves on its delivery
//! report, i.e. once the broker acknowledged it with the configured `acks`
//! (`all` by default) through the idempotent producer.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use mq_core::{Error, Message, Producer, Result};

use crate::core::Sender;
use crate::error::BACKEND;

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
        self.sender.send(destination, &message, false).await
    }

    fn health(&self) -> mq_core::observe::Health {
        self.sender.health.health()
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        self.sender.flush().await
    }
}
