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
use mq_core::{Message, Producer, Result};

use crate::codec::encode;
use crate::core::Shared;
use crate::error::closed;
use crate::publish::publish;
use crate::topology::send_route;

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
        send(&self.shared, destination, message)
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

/// Sends `message` to `destination` (routes, declares, publishes). The
/// destination, size and delay checks ran before, once, in core
/// (`mq_core::checks`, from `capabilities()`); settlement copies are cut to
/// fit by `republish::fit_to_size`.
async fn send(shared: &Shared, destination: &str, message: Message) -> Result<()> {
    let route = send_route(&shared.config, destination, message.delay())?;
    let wire = encode(message, shared.config.persistent)?;
    publish(shared, &route, wire, "send").await
}
