//! Receiving: one channel per consumer, manual acks, `basic.qos` prefetch.
//!
//! The broker never has more than the prefetch of unacked deliveries out to
//! a consumer, so backpressure is the broker's: nothing is buffered beyond
//! it. When the channel or connection drops, `receive` waits for the
//! connection to come back, declares the topology again and subscribes
//! again; deliveries of the old channel are requeued by the broker.
//! `close` sends the acks queued so far (acks leave together, see
//! `acks.rs`), cancels the subscription and closes the channel, which
//! requeues every unsettled delivery; settling one of those afterwards
//! fails with `Closed`. Dropping the consumer closes the channel without
//! waiting for queued acks: their messages may be delivered again.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use mq_core::{Consumer, ConsumerOptions, Delivery, ErrorKind, Received, Result};
use tokio::task::JoinHandle;

use crate::acks::{finish, Acks};
use crate::codec::decode;
use crate::connection::Conn;
use crate::core::Shared;
use crate::error::{closed, from_lapin, within};
use crate::metadata::RabbitMetadata;
use crate::settle::RabbitSettler;
use crate::topology::{consumer_queue, ensure_consumer_queue, forget_consumer_queue, short};

/// A live subscription.
struct Subscription {
    conn: Arc<Conn>,
    channel: Channel,
    consumer: lapin::Consumer,
    /// Its channel's acks, and the task that sends them (`acks.rs`).
    acks: Arc<Acks>,
    ack_sender: Option<JoinHandle<()>>,
}

impl Subscription {
    /// Sends the acks queued so far (up to `limit`), then closes the channel.
    async fn close(mut self, limit: Duration) {
        if let Some(sender) = self.ack_sender.take() {
            finish(&self.acks, sender, limit).await;
        }
        let tag = self.consumer.tag();
        let closing = async {
            if let Err(e) = self
                .channel
                .basic_cancel(tag, BasicCancelOptions::default())
                .await
            {
                tracing::debug!(error = %e, "basic.cancel failed while closing a consumer");
            }
            self.channel
                .close(200, "consumer closed".into())
                .await
                .map_err(|e| from_lapin(e, "close"))
        };
        // A broker that does not answer requeues the deliveries when the
        // channel or connection goes; closing does not wait for it.
        if let Err(e) = within(limit, "close", closing).await {
            tracing::debug!(error = %e, "closing a consumer channel failed");
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Lost or dropped: the task sends what it can and ends.
        self.acks.close();
    }
}

/// Receives from one queue of a RabbitMQ destination.
pub struct RabbitConsumer {
    shared: Arc<Shared>,
    /// Shared by every delivery (no allocation per message).
    source: Arc<str>,
    group: Option<Arc<str>>,
    queue: String,
    prefetch: u16,
    settler: Arc<RabbitSettler>,
    closed: Arc<AtomicBool>,
    sub: Option<Subscription>,
    /// Subscriptions lost in a row, for the pause before the next one.
    failures: u32,
}

impl RabbitConsumer {
    /// A consumer as `options` say, subscribed (so a group's queue exists
    /// and is bound once this returns).
    pub(crate) async fn start(shared: Arc<Shared>, options: ConsumerOptions) -> Result<Self> {
        let queue = consumer_queue(&shared.config, &options.source, options.group.as_deref())?;
        short("queue", &queue)?;
        // The application's prefetch, else the URL's `prefetch` option.
        let prefetch = u16::try_from(options.prefetch_or(usize::from(shared.config.prefetch)))
            .unwrap_or(u16::MAX);
        let closed = Arc::new(AtomicBool::new(false));
        let settler = Arc::new(RabbitSettler {
            shared: shared.clone(),
            source: options.source.clone(),
            queue: queue.clone(),
            // `Client` fills it in; a backend used directly falls back to
            // the default, `<source>-dlq`.
            dead_letter: options.dead_letter_destination(),
            closed: closed.clone(),
        });
        let mut consumer = RabbitConsumer {
            shared,
            source: options.source.into(),
            group: options.group.map(Arc::from),
            queue,
            prefetch,
            settler,
            closed,
            sub: None,
            failures: 0,
        };
        consumer.subscribe(false).await?;
        Ok(consumer)
    }

    /// The queue this consumer reads.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    async fn subscribe(&mut self, patient: bool) -> Result<()> {
        let conn = if patient {
            self.shared.connector.wait_connected().await?
        } else {
            self.shared.connector.get().await?
        };
        let config = &self.shared.config;
        let subscribing = async {
            ensure_consumer_queue(
                &conn,
                config,
                &self.source,
                self.group.as_deref(),
                &self.queue,
            )
            .await?;
            let channel = conn.channel("receive").await?;
            channel
                .basic_qos(self.prefetch, BasicQosOptions { global: false })
                .await
                .map_err(|e| from_lapin(e, "receive"))?;
            let consumer = channel
                .basic_consume(
                    short("queue", &self.queue)?,
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| from_lapin(e, "receive").with_destination(self.source.to_string()))?;
            Ok((channel, consumer))
        };
        let (channel, consumer) = within(config.operation_timeout, "receive", subscribing).await?;
        let (acks, ack_sender) = Acks::start(config.operation_timeout, self.source.to_string());
        self.sub = Some(Subscription {
            conn,
            channel,
            consumer,
            acks,
            ack_sender: Some(ack_sender),
        });
        Ok(())
    }

    fn wrap(&self, d: lapin::message::Delivery, acks: &Arc<Acks>) -> Delivery {
        let mut d = d;
        acks.opened(d.delivery_tag);
        let data = std::mem::take(&mut d.data);
        let properties = std::mem::take(&mut d.properties);
        let decoded = decode(bytes::Bytes::from(data), &properties, d.redelivered);
        let info = RabbitMetadata::new(&d, self.queue.clone(), properties, acks.clone());
        let received = Received::new(self.source.clone(), decoded.message, decoded.attempt)
            .with_group(self.group.clone())
            .with_timestamp(decoded.timestamp)
            .with_metadata(info);
        Delivery::new(received, self.settler.clone())
    }

    fn pause(&self) -> Duration {
        let ms = 100u64.saturating_mul(1 << self.failures.min(6));
        Duration::from_millis(ms.min(5_000))
    }

    /// The subscription failed (`error`) or ended (the broker cancelled it
    /// because the queue was deleted, or the channel closed): the next
    /// `receive` declares again and subscribes again.
    fn lost(&mut self, error: Option<lapin::Error>) {
        match error {
            Some(e) => tracing::warn!(source = %self.source, error = %e,
                "consumer channel failed; subscribing again"),
            None => {
                tracing::warn!(source = %self.source, queue = %self.queue,
                    "subscription cancelled; subscribing again");
                if let Some(sub) = &self.sub {
                    forget_consumer_queue(&sub.conn, &self.source, &self.queue);
                }
            }
        }
        self.sub = None;
        self.failures = self.failures.saturating_add(1);
    }

    fn shut(&mut self) -> Option<Subscription> {
        self.closed.store(true, Ordering::Release);
        self.sub.take()
    }
}

#[async_trait]
impl Consumer for RabbitConsumer {
    async fn receive(&mut self) -> Result<Delivery> {
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(closed("the consumer").with_destination(self.source.to_string()));
            }
            let Some(sub) = self.sub.as_mut() else {
                if self.failures > 0 {
                    tokio::time::sleep(self.pause()).await;
                }
                match self.subscribe(true).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::Closed || !e.is_retryable() => return Err(e),
                    Err(e) => {
                        self.failures = self.failures.saturating_add(1);
                        tracing::warn!(source = %self.source, error = %e,
                            "cannot subscribe again; retrying");
                    }
                }
                continue;
            };
            match sub.consumer.next().await {
                Some(Ok(d)) => {
                    self.failures = 0;
                    let acks = sub.acks.clone();
                    return Ok(self.wrap(d, &acks));
                }
                lost => self.lost(lost.and_then(|r| r.err())),
            }
        }
    }

    /// Waits for the first delivery through `receive` (which subscribes
    /// again where needed), then takes what the subscription has ready
    /// without waiting: no timer and no boxed future per delivery.
    async fn receive_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let mut batch = Vec::new();
        if max == 0 {
            return Ok(batch);
        }
        match tokio::time::timeout(wait, self.receive()).await {
            Ok(first) => batch.push(first?),
            Err(_) => return Ok(batch),
        }
        let Some(acks) = self.sub.as_ref().map(|s| s.acks.clone()) else {
            return Ok(batch);
        };
        while batch.len() < max {
            let Some(sub) = self.sub.as_mut() else { break };
            // `next` is cancel-safe: a pending poll loses nothing.
            match sub.consumer.next().now_or_never() {
                None => break,
                Some(Some(Ok(d))) => batch.push(self.wrap(d, &acks)),
                Some(lost) => {
                    // Handled as `receive` does; the next call subscribes again.
                    self.lost(lost.and_then(|r| r.err()));
                    break;
                }
            }
        }
        Ok(batch)
    }

    fn health(&self) -> mq_core::observe::Health {
        self.shared.connector.health()
    }

    /// Sends the acks queued so far, cancels the subscription and closes
    /// its channel: the broker requeues every delivery not acked.
    async fn close(&mut self) -> Result<()> {
        if let Some(sub) = self.shut() {
            sub.close(self.shared.config.operation_timeout).await;
        }
        Ok(())
    }
}

impl Drop for RabbitConsumer {
    fn drop(&mut self) {
        // Dropping the channel closes it; the broker requeues what is unacked.
        self.shut();
    }
}

impl fmt::Debug for RabbitConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitConsumer")
            .field("source", &self.source)
            .field("group", &self.group)
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch)
            .field("subscribed", &self.sub.is_some())
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}
