//! The RabbitMQ metadata of a delivery: plain data read from the AMQP
//! delivery, plus the acker settling needs.

use std::fmt;
use std::sync::Arc;

use lapin::{Acker, BasicProperties};

use crate::acks::Acks;

/// RabbitMQ details of a delivery, from
/// [`Received::metadata`](mq_core::Received::metadata):
///
/// ```no_run
/// # fn f(delivery: &mq_core::Delivery) {
/// if let Some(rabbit) = delivery.metadata::<mq_rabbit::RabbitMetadata>() {
///     println!("tag {} redelivered {}", rabbit.delivery_tag(), rabbit.redelivered());
/// }
/// # }
/// ```
pub struct RabbitMetadata {
    delivery_tag: u64,
    redelivered: bool,
    exchange: String,
    routing_key: String,
    queue: String,
    properties: BasicProperties,
    acker: Option<Acker>,
    /// Where its channel's acks are sent together (none without acks).
    acks: Option<Arc<Acks>>,
}

impl RabbitMetadata {
    pub(crate) fn new(
        delivery: &lapin::message::Delivery,
        queue: String,
        properties: BasicProperties,
        acks: Arc<Acks>,
    ) -> Self {
        RabbitMetadata {
            delivery_tag: delivery.delivery_tag,
            redelivered: delivery.redelivered,
            exchange: delivery.exchange.to_string(),
            routing_key: delivery.routing_key.to_string(),
            queue,
            properties,
            acker: Some(delivery.acker.clone()),
            acks: Some(acks),
        }
    }

    /// A delivery consumed without acknowledgements (direct reply-to).
    pub(crate) fn without_ack(
        delivery_tag: u64,
        redelivered: bool,
        exchange: String,
        routing_key: String,
        queue: String,
        properties: BasicProperties,
    ) -> Self {
        RabbitMetadata {
            delivery_tag,
            redelivered,
            exchange,
            routing_key,
            queue,
            properties,
            acker: None,
            acks: None,
        }
    }

    /// The delivery tag on its channel.
    pub fn delivery_tag(&self) -> u64 {
        self.delivery_tag
    }

    /// Whether the broker delivered this message before (to any consumer).
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// The exchange the message was published to (`""`: the default exchange).
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    /// The queue it was consumed from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The AMQP properties exactly as received, headers of every type included.
    pub fn properties(&self) -> &BasicProperties {
        &self.properties
    }

    /// What acks and nacks the delivery on its channel; `None` when it was
    /// consumed without acknowledgements.
    pub(crate) fn acker(&self) -> Option<&Acker> {
        self.acker.as_ref()
    }

    /// Where the acks of its channel are sent together.
    pub(crate) fn acks(&self) -> Option<&Arc<Acks>> {
        self.acks.as_ref()
    }
}

impl fmt::Debug for RabbitMetadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMetadata")
            .field("delivery_tag", &self.delivery_tag)
            .field("redelivered", &self.redelivered)
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .field("queue", &self.queue)
            .finish()
    }
}
