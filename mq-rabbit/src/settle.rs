//! Settling deliveries (DESIGN.md §4).
//!
//! | settlement | what happens |
//! |---|---|
//! | ack | `basic.ack`, queued and sent with the channel's other acks (`multiple` for a run settled in delivery order, alone otherwise; `acks.rs`) |
//! | nack | classic queues: republish to the same queue with `mq-attempt` + 1, confirmed, then `basic.ack` (the message goes to the back of the queue); quorum queues: `basic.nack` with requeue (the broker counts `x-delivery-count`) |
//! | nack after a delay | republish to `<queue>.retry.<ms>` with `mq-attempt` + 1, confirmed, then `basic.ack`; the retry queue's TTL dead-letters it back to `<queue>` only |
//! | dead-letter | publish to the consumer's dead-letter destination (`ConsumerOptions::dead_letter`, default `<source>-dlq`) with the reason headers, cut to fit `max_message_size`, confirmed, then `basic.ack` |
//! | dropped unsettled | `basic.nack` with requeue, from a spawned task (the broker redelivers it, `redelivered` set) |
//!
//! Retry and dead-letter copies are built by [`mq_core::backend::republish`]; a
//! retry keeps the AMQP properties and header table of the original and
//! takes `mq-attempt`/`mq-not-before` from the core's copy.
//!
//! Every republish is confirmed by the broker before the original is acked,
//! so a crash in between duplicates a message but never loses one. A
//! settle that cannot complete (the republish is refused, not confirmed in
//! `operation_timeout`, cannot be encoded or routed) gives the delivery
//! back with `basic.nack` requeue before returning the error: it never
//! stays unacked on the live channel, holding a prefetch slot. A
//! delivery whose channel is gone (reconnection, consumer closed) cannot be
//! settled: the broker has requeued it already. Settling it returns
//! `Closed` if its consumer was closed and a retryable `Connection` error
//! otherwise; it is not republished, so no copy is made.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Acker;
use mq_core::backend::{republish, SettleNow, Settlement, Settler};
use mq_core::{Delivery, Error, Result};

use crate::codec::{encode, for_retry, Wire};
use crate::config::QueueType;
use crate::core::Shared;
use crate::error::{channel_gone, from_lapin, within, BACKEND};
use crate::metadata::RabbitMetadata;
use crate::publish::publish;
use crate::topology::{dead_letter_route, retry_route};

/// Settles the deliveries of one consumer.
pub(crate) struct RabbitSettler {
    pub(crate) shared: Arc<Shared>,
    /// The destination consumed (what deliveries report as their source).
    pub(crate) source: String,
    /// The queue consumed.
    pub(crate) queue: String,
    /// Where dead letters go (the consumer's `ConsumerOptions::dead_letter`).
    pub(crate) dead_letter: String,
    /// Set when the consumer is closed or dropped.
    pub(crate) closed: Arc<AtomicBool>,
}

impl RabbitSettler {
    fn gone(&self, operation: &'static str, id: &str) -> Error {
        if self.closed.load(Ordering::Acquire) {
            Error::closed(format!(
                "the consumer was closed; message {id} went back to the queue"
            ))
            .with_backend(BACKEND)
            .with_operation(operation)
            .with_destination(self.source.clone())
        } else {
            channel_gone(operation).with_destination(self.source.clone())
        }
    }

    async fn ack(&self, acker: &Acker, id: &str) -> Result<()> {
        let limit = self.shared.config.operation_timeout;
        let acking = async {
            acker
                .ack(BasicAckOptions::default())
                .await
                .map_err(|e| from_lapin(e, "ack"))
        };
        match within(limit, "ack", acking).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.gone("ack", id)),
            Err(e) => Err(e.with_destination(self.source.clone())),
        }
    }

    /// `basic.nack` with requeue: the broker delivers the message again.
    async fn requeue(&self, acker: &Acker, id: &str) -> Result<()> {
        let limit = self.shared.config.operation_timeout;
        let requeue = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        let nacking = async { acker.nack(requeue).await.map_err(|e| from_lapin(e, "nack")) };
        match within(limit, "nack", nacking).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.gone("nack", id)),
            Err(e) => Err(e.with_destination(self.source.clone())),
        }
    }

    /// Republishes the delivery to its retry route as the next attempt.
    async fn republish(
        &self,
        delivery: &Delivery,
        info: &RabbitMetadata,
        delay: Option<std::time::Duration>,
    ) -> Result<()> {
        let route = retry_route(&self.queue, delay)?;
        let copy = republish::retry_copy(delivery, delay);
        let wire = Wire {
            payload: delivery.payload().clone(),
            properties: for_retry(info.properties(), &copy),
            reply_token: None,
        };
        publish(&self.shared, &route, wire, "nack")
            .await
            .map_err(|e| e.with_destination(self.source.clone()))
    }

    /// Publishes the dead-letter copy of the delivery, cut to fit
    /// `max_message_size`, to the consumer's dead-letter destination.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<()> {
        let dlq = &self.dead_letter;
        let route = dead_letter_route(&self.shared.config, dlq)?;
        let copy = republish::fit_to_size(
            republish::dead_letter_copy(delivery, reason),
            self.shared.config.max_message_size,
        )
        .map_err(|e| e.with_backend(BACKEND).with_operation("dead-letter"))?;
        let wire = encode(copy, self.shared.config.persistent)?;
        publish(&self.shared, &route, wire, "dead-letter")
            .await
            .map_err(|e| e.with_destination(dlq.clone()))
    }

    /// Acks the original once its copy is confirmed; if the copy could not
    /// be made, gives the original back to the broker and returns why.
    async fn finish(&self, acker: &Acker, id: &str, republished: Result<()>) -> Result<()> {
        match republished {
            Ok(()) => self.ack_after_republish(acker, id).await,
            Err(e) => Err(self.give_back(acker, id, e).await),
        }
    }

    /// A settle that cannot complete returns the delivery to the queue
    /// (`basic.nack` requeue), so it never sits unacked on a live channel
    /// holding a prefetch slot, and hands back `error` for the caller.
    async fn give_back(&self, acker: &Acker, id: &str, error: Error) -> Error {
        match self.requeue(acker, id).await {
            Ok(()) => {
                tracing::warn!(%id, source = %self.source, error = %error,
                    "settling failed; the message went back to the queue");
            }
            Err(e) => {
                // The channel is gone (the broker requeued it already) or
                // the broker does not answer (it requeues it when the
                // channel closes).
                tracing::warn!(%id, source = %self.source, error = %error, nack_error = %e,
                    "settling failed and returning the message failed too; the broker redelivers it when its channel closes");
            }
        }
        error
    }

    /// A settlement that sends its own frames: an ack that cannot be
    /// queued, a nack, a dead letter.
    async fn settle_alone(
        &self,
        delivery: &Delivery,
        info: &RabbitMetadata,
        acker: &Acker,
        settlement: Settlement,
    ) -> Result<()> {
        let id = delivery.id();
        match settlement {
            Settlement::Ack => self.ack(acker, id).await,
            Settlement::Nack { delay }
                if delay.is_none_or(|d| d.is_zero())
                    && self.shared.config.queue_type == QueueType::Quorum =>
            {
                self.requeue(acker, id).await
            }
            Settlement::Nack { delay } => {
                let republished = self.republish(delivery, info, delay).await;
                self.finish(acker, id, republished).await
            }
            Settlement::DeadLetter { reason } => {
                let republished = self.dead_letter(delivery, &reason).await;
                self.finish(acker, id, republished).await
            }
            other => {
                let e = Error::unsupported(format!("settlement {other:?}")).with_backend(BACKEND);
                Err(self.give_back(acker, id, e).await)
            }
        }
    }

    /// Acks the original of a message republished already: if its channel
    /// died in between, the broker redelivers it too (a duplicate, never a loss).
    async fn ack_after_republish(&self, acker: &Acker, id: &str) -> Result<()> {
        match self.ack(acker, id).await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::debug!(%id, error = %e,
                    "message republished but its original could not be acked; it will be delivered twice");
                Ok(())
            }
        }
    }
}

/// Queues the ack of the delivery `info` describes to be sent with its
/// channel's other acks (`acks.rs`); `false` when it must be sent alone.
fn queue_ack(info: &RabbitMetadata, acker: &Acker) -> bool {
    info.acks()
        .is_some_and(|acks| acks.ack(info.delivery_tag(), acker))
}

#[async_trait]
impl Settler for RabbitSettler {
    async fn settle(&self, delivery: &Delivery, settlement: Settlement) -> Result<()> {
        let Some(info) = delivery.metadata::<RabbitMetadata>() else {
            return Err(
                Error::new(mq_core::ErrorKind::Broker, "not a RabbitMQ delivery")
                    .with_backend(BACKEND),
            );
        };
        let Some(acker) = info.acker() else {
            return Ok(());
        };
        if self.closed.load(Ordering::Acquire) || !acker.usable() {
            return Err(self.gone("settle", delivery.id()));
        }
        if matches!(settlement, Settlement::Ack) && queue_ack(info, acker) {
            return Ok(());
        }
        let settled = self.settle_alone(delivery, info, acker, settlement).await;
        // Sent with a frame of its own (or never): the batched acks may
        // pass its tag now.
        if let Some(acks) = info.acks() {
            acks.done(info.delivery_tag());
        }
        settled
    }

    /// An ack is queued with its channel's other acks (`acks.rs`): no
    /// frame and no boxed future per delivery.
    fn settle_now(&self, delivery: &Delivery, settlement: Settlement) -> SettleNow {
        if !matches!(settlement, Settlement::Ack) {
            return SettleNow::Later(settlement);
        }
        let Some(info) = delivery.metadata::<RabbitMetadata>() else {
            return SettleNow::Later(settlement);
        };
        let Some(acker) = info.acker() else {
            return SettleNow::Done(Ok(()));
        };
        if self.closed.load(Ordering::Acquire) || !acker.usable() {
            return SettleNow::Done(Err(self.gone("settle", delivery.id())));
        }
        if queue_ack(info, acker) {
            SettleNow::Done(Ok(()))
        } else {
            SettleNow::Later(settlement)
        }
    }

    fn abandon(&self, delivery: &Delivery) {
        if self.closed.load(Ordering::Acquire) {
            // The channel closed with the consumer: the broker requeued it.
            return;
        }
        let Some(acker) = delivery
            .metadata::<RabbitMetadata>()
            .and_then(|i| i.acker().cloned())
        else {
            return;
        };
        if !acker.usable() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // No runtime to nack from: the broker requeues it when the channel closes.
            return;
        };
        let id = delivery.id().to_owned();
        let limit = self.shared.config.operation_timeout;
        let done = delivery
            .metadata::<RabbitMetadata>()
            .and_then(|i| Some((i.acks()?.clone(), i.delivery_tag())));
        rt.spawn(async move {
            let requeue = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            let nacking = async { acker.nack(requeue).await.map_err(|e| from_lapin(e, "nack")) };
            if let Err(e) = within(limit, "nack", nacking).await {
                tracing::debug!(%id, error = %e, "returning a dropped delivery failed; the broker requeues it when the channel closes");
            }
            if let Some((acks, tag)) = done {
                acks.done(tag);
            }
        });
    }
}

impl fmt::Debug for RabbitSettler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitSettler")
            .field("source", &self.source)
            .field("queue", &self.queue)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}
