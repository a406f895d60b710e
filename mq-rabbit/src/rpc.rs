//! Request/reply over RabbitMQ's direct reply-to.
//!
//! Direct reply-to needs no reply queue: a channel consumes the pseudo-queue
//! `amq.rabbitmq.reply-to` (no acks), requests published *on that same
//! channel* carry `reply-to: amq.rabbitmq.reply-to`, the broker rewrites it
//! to a per-channel address, and replies published to that address go
//! straight to the channel. Nothing is declared, so nothing is left behind.
//!
//! [`Requester`](mq_core::Requester) sends with an ordinary producer, so
//! [`reply_channel`](mq_core::backend::Backend::reply_channel) hands it a private
//! token (`amq.rabbitmq.reply-to#<uuid>`) as its reply address; when this
//! client's producer sees the token in `mq-reply-to` it publishes the request
//! on the reply channel with the real `amq.rabbitmq.reply-to`. The token never
//! reaches the broker. After a reconnection the reply consumer subscribes
//! again on a new channel; replies to requests sent before the outage are
//! lost (their requests time out), later requests work.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use mq_core::backend::{Settlement, Settler};
use mq_core::{Consumer, Delivery, ErrorKind, Received, Result};

use crate::codec::{decode, DIRECT_REPLY_TO};
use crate::connection::Conn;
use crate::core::{ReplyRoute, Shared};
use crate::error::{closed, from_lapin, within};
use crate::metadata::RabbitMetadata;

/// Consumes the replies of one [`Requester`](mq_core::Requester).
pub(crate) struct ReplyConsumer {
    shared: Arc<Shared>,
    token: String,
    route: Arc<ReplyRoute>,
    sub: Option<(Arc<Conn>, lapin::Consumer)>,
    closed: bool,
}

impl ReplyConsumer {
    /// A reply consumer, subscribed; returns it and its token.
    pub(crate) async fn start(shared: Arc<Shared>) -> Result<(String, Self)> {
        let (token, route) = shared.replies.register();
        let mut consumer = ReplyConsumer {
            shared,
            token: token.clone(),
            route,
            sub: None,
            closed: false,
        };
        consumer.subscribe(false).await?;
        Ok((token, consumer))
    }

    async fn subscribe(&mut self, patient: bool) -> Result<()> {
        self.route.channel.send_replace(None);
        let conn = if patient {
            self.shared.connector.wait_connected().await?
        } else {
            self.shared.connector.get().await?
        };
        let subscribing = async {
            let ch = conn.channel("receive").await?;
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| from_lapin(e, "receive"))?;
            let consumer = ch
                .basic_consume(
                    DIRECT_REPLY_TO.into(),
                    "".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| from_lapin(e, "receive"))?;
            Ok((ch, consumer))
        };
        let limit = self.shared.config.operation_timeout;
        let (ch, consumer) = within(limit, "receive", subscribing).await?;
        self.route.channel.send_replace(Some(Arc::new(ch)));
        self.sub = Some((conn, consumer));
        Ok(())
    }
}

#[async_trait]
impl Consumer for ReplyConsumer {
    async fn receive(&mut self) -> Result<Delivery> {
        loop {
            if self.closed {
                return Err(closed("the reply consumer"));
            }
            let Some((_, consumer)) = self.sub.as_mut() else {
                if let Err(e) = self.subscribe(true).await {
                    if e.kind() == ErrorKind::Closed || !e.is_retryable() {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, "reply consumer cannot subscribe; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                continue;
            };
            match consumer.next().await {
                Some(Ok(d)) => {
                    let decoded = decode(bytes::Bytes::from(d.data), &d.properties, d.redelivered);
                    let info = RabbitMetadata::without_ack(
                        d.delivery_tag,
                        d.redelivered,
                        d.exchange.to_string(),
                        d.routing_key.to_string(),
                        DIRECT_REPLY_TO.to_owned(),
                        d.properties,
                    );
                    let received = Received::new(DIRECT_REPLY_TO, decoded.message, 1)
                        .with_timestamp(decoded.timestamp)
                        .with_metadata(info);
                    return Ok(Delivery::new(received, Arc::new(NoAck)));
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "reply consumer lost its channel; subscribing again");
                    self.sub = None;
                }
                None => {
                    tracing::debug!("reply consumer cancelled; subscribing again");
                    self.sub = None;
                }
            }
        }
    }

    fn health(&self) -> mq_core::observe::Health {
        self.shared.connector.health()
    }

    async fn close(&mut self) -> Result<()> {
        self.closed = true;
        self.shared.replies.remove(&self.token);
        self.route.channel.send_replace(None);
        self.sub = None;
        Ok(())
    }
}

impl Drop for ReplyConsumer {
    fn drop(&mut self) {
        self.shared.replies.remove(&self.token);
    }
}

impl fmt::Debug for ReplyConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyConsumer")
            .field("token", &self.token)
            .field("subscribed", &self.sub.is_some())
            .field("closed", &self.closed)
            .finish()
    }
}

/// Replies are consumed without acks: settling them does nothing.
#[derive(Debug)]
struct NoAck;

#[async_trait]
impl Settler for NoAck {
    async fn settle(&self, _delivery: &Delivery, _settlement: Settlement) -> Result<()> {
        Ok(())
    }

    fn abandon(&self, _delivery: &Delivery) {}
}
