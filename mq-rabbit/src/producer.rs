//! Sending with publisher confirms.
//!
//! Every send is a `basic.publish` with `mandatory` on the client's shared
//! confirm-mode channel; `send` returns when the broker confirms it. Many
//! sends may be in flight at once (from many tasks, a
//! [`Pipeline`](mq_core::Pipeline) or `send_batch`): they are pipelined on
//! the channel, with no round trip per message beyond the confirm itself.
//! A message no queue takes (mandatory return) fails with `NotFound`; a
//! `basic.nack` from the broker fails with a retryable `Broker` error. A
//! send in flight when the connection drops fails with a retryable
//! `Connection` error (the message may or may not have been stored); it is
//! not resent automatically, because that could duplicate it.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation};
use mq_core::{Error, ErrorKind, Message, Producer, Result};

use crate::backend::Shared;
use crate::error::{closed, from_lapin, BACKEND};
use crate::topology::Route;

/// Sends to RabbitMQ. Cheap to clone; clones share the connection and channel.
#[derive(Clone)]
pub struct RabbitProducer {
    shared: Arc<Shared>,
    closed: Arc<AtomicBool>,
}

impl RabbitProducer {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        RabbitProducer {
            shared,
            closed: Arc::new(AtomicBool::new(false)),
        }
    }
}

#[async_trait]
impl Producer for RabbitProducer {
    async fn send(&self, destination: &str, message: Message) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(closed("the producer").with_destination(destination.to_owned()));
        }
        self.shared
            .send(destination, message)
            .await
            .map_err(|e| e.with_destination(destination.to_owned()))
    }

    fn health(&self) -> mq_core::observe::Health {
        self.shared.connector.health()
    }

    async fn close(&self) -> Result<()> {
        // Every send waits for its confirm, so nothing is left to flush.
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}

impl fmt::Debug for RabbitProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitProducer")
            .field("connection", &self.shared.connector)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

/// Publishes on `channel` along `route` and waits for the broker's confirm.
pub(crate) async fn publish_confirmed(
    channel: &Channel,
    route: &Route,
    payload: &[u8],
    properties: BasicProperties,
    operation: &'static str,
) -> Result<()> {
    let confirm = channel
        .basic_publish(
            route.exchange.clone(),
            route.routing_key.clone(),
            BasicPublishOptions {
                mandatory: route.mandatory,
                immediate: false,
            },
            payload,
            properties,
        )
        .await
        .map_err(|e| from_lapin(e, operation))?;
    match confirm.await.map_err(|e| from_lapin(e, operation))? {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "no queue took the message (exchange `{}`, routing key `{}`): {} {}",
                route.exchange, route.routing_key, returned.reply_code, returned.reply_text
            ),
        )
        .with_backend(BACKEND)
        .with_operation(operation)),
        Confirmation::Nack(None) => Err(Error::new(
            ErrorKind::Broker,
            "the broker could not take the message (basic.nack)",
        )
        .with_retryable(true)
        .with_backend(BACKEND)
        .with_operation(operation)),
    }
}
