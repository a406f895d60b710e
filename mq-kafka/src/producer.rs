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
use mq_core::{Error, Message, Producer, Result, SendNow};

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

fn closed_error(destination: &str) -> Error {
    Error::closed("producer is closed")
        .with_backend(BACKEND)
        .with_operation("send")
        .with_destination(destination)
}

#[async_trait]
impl Producer for KafkaProducer {
    async fn send(&self, destination: &str, message: Message) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(closed_error(destination));
        }
        self.sender.send(destination, &message, false).await
    }

    /// Hands the record to librdkafka at once when its topic is known and
    /// librdkafka's queue has room; the returned future waits for the
    /// delivery report only. Otherwise (the first send to a topic, a full
    /// queue) the message comes back for [`send`](Producer::send).
    fn send_now(&self, destination: &str, message: Message) -> SendNow {
        if self.closed.load(Ordering::Acquire) {
            return SendNow::Done(Err(closed_error(destination)));
        }
        match self.sender.try_send(destination, &message) {
            Some(sending) => SendNow::Started(sending),
            None => SendNow::Later(message),
        }
    }

    fn can_send_now(&self) -> bool {
        true
    }

    fn health(&self) -> mq_core::observe::Health {
        self.sender.health.health()
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        self.sender.flush().await
    }
}
