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
//!
//! The one exception: a message the broker did *not* take because what its
//! route was declared with is gone (returned unroutable, or refused with
//! `404` because its exchange was deleted) is published once more after
//! declaring again; the broker stored nothing, so nothing is duplicated.
//! Every send waits at most `operation_timeout` for declarations and the
//! confirm, then fails with a retryable `Timeout` (the message may or may not
//! be stored, as with a dropped connection).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation};
use mq_core::{Error, ErrorKind, Message, Producer, Result};

use crate::backend::Shared;
use crate::error::{closed, from_lapin, missing_exchange, BACKEND};
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

/// Why a publish failed.
#[derive(Debug)]
pub(crate) enum PublishFailure {
    /// The broker did not take the message because what the route was
    /// declared with is gone: it returned it as unroutable (`mandatory`) or
    /// closed the channel with `404` because the exchange does not exist.
    /// Declaring again and publishing once more cannot duplicate it.
    Stale(Error),
    /// Anything else.
    Failed(Error),
}

impl PublishFailure {
    pub(crate) fn into_error(self) -> Error {
        match self {
            PublishFailure::Stale(e) | PublishFailure::Failed(e) => e,
        }
    }
}

/// A lapin error of a publish along `route`.
fn publish_error(e: lapin::Error, route: &Route, operation: &'static str) -> PublishFailure {
    match missing_exchange(&e) {
        // This publish named the missing exchange.
        Some(name) if name == route.exchange.as_str() => {
            PublishFailure::Stale(from_lapin(e, operation))
        }
        // Another send on the shared channel named a missing exchange and
        // the broker closed the channel: this message may or may not have
        // been stored before, like a send in flight when a connection drops.
        Some(_) => PublishFailure::Failed(
            Error::new(
                ErrorKind::Connection,
                "the publish channel was closed by the broker because of another send \
                 (to an exchange that does not exist); the message may or may not have been stored",
            )
            .with_retryable(true)
            .with_backend(BACKEND)
            .with_operation(operation)
            .with_source(e),
        ),
        None => PublishFailure::Failed(from_lapin(e, operation)),
    }
}

/// Publishes on `channel` along `route` and waits for the broker's confirm.
pub(crate) async fn publish_confirmed(
    channel: &Channel,
    route: &Route,
    payload: &[u8],
    properties: BasicProperties,
    operation: &'static str,
) -> std::result::Result<(), PublishFailure> {
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
        .map_err(|e| publish_error(e, route, operation))?;
    match confirm
        .await
        .map_err(|e| publish_error(e, route, operation))?
    {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
            Err(PublishFailure::Stale(
                Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "no queue took the message (exchange `{}`, routing key `{}`): {} {}",
                        route.exchange, route.routing_key, returned.reply_code, returned.reply_text
                    ),
                )
                .with_backend(BACKEND)
                .with_operation(operation),
            ))
        }
        Confirmation::Nack(None) => Err(PublishFailure::Failed(
            Error::new(
                ErrorKind::Broker,
                "the broker could not take the message (basic.nack)",
            )
            .with_retryable(true)
            .with_backend(BACKEND)
            .with_operation(operation),
        )),
    }
}
