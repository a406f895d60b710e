//! Receiving messages.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::delivery::Delivery;
use crate::error::Result;
use crate::producer::Forwarded;

/// Receives deliveries from one source (queue or topic) for one group.
///
/// At most the consumer's prefetch of deliveries are unsettled at once:
/// `receive` waits for a settlement instead of buffering without bound.
///
/// Cancel safety: the futures returned by `receive` and `receive_batch` may be
/// dropped (e.g. in `tokio::select!`) without losing a message.
#[async_trait]
pub trait Consumer: Send + fmt::Debug {
    /// Waits for the next delivery.
    async fn receive(&mut self) -> Result<Delivery>;

    /// Up to `max` deliveries: waits at most `wait` for the first one, then
    /// takes whatever else is ready. An empty vector means nothing arrived.
    ///
    /// The default calls `receive`; backends override it to fetch in bulk.
    async fn receive_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let mut batch = Vec::new();
        if max == 0 {
            return Ok(batch);
        }
        match tokio::time::timeout(wait, self.receive()).await {
            Ok(first) => batch.push(first?),
            Err(_) => return Ok(batch),
        }
        while batch.len() < max {
            match tokio::time::timeout(Duration::ZERO, self.receive()).await {
                Ok(Ok(d)) => batch.push(d),
                Ok(Err(e)) if batch.is_empty() => return Err(e),
                _ => break,
            }
        }
        Ok(batch)
    }

    /// Stops receiving. Deliveries not yet handed out go back to the broker;
    /// deliveries already handed out can still be settled where the backend
    /// allows it (see its docs), and are redelivered otherwise.
    async fn close(&mut self) -> Result<()> {
        Ok(())
    }

    /// The state of the consumer's connection (healthy unless the backend
    /// tracks its connection).
    fn health(&self) -> crate::health::Health {
        crate::health::Health::healthy()
    }
}

/// `Consumer` for a boxed consumer (`DynConsumer`): each method hands back
/// the pointee's future as it is, instead of boxing a second future around
/// it as `async_trait` would.
impl<C: Consumer + ?Sized> Consumer for Box<C> {
    fn receive<'s, 'async_trait>(&'s mut self) -> Forwarded<'async_trait, Result<Delivery>>
    where
        's: 'async_trait,
        Self: 'async_trait,
    {
        (**self).receive()
    }

    fn receive_batch<'s, 'async_trait>(
        &'s mut self,
        max: usize,
        wait: Duration,
    ) -> Forwarded<'async_trait, Result<Vec<Delivery>>>
    where
        's: 'async_trait,
        Self: 'async_trait,
    {
        (**self).receive_batch(max, wait)
    }

    fn close<'s, 'async_trait>(&'s mut self) -> Forwarded<'async_trait, Result<()>>
    where
        's: 'async_trait,
        Self: 'async_trait,
    {
        (**self).close()
    }

    fn health(&self) -> crate::health::Health {
        (**self).health()
    }
}

/// A consumer whose backend is chosen at run time (what [`Client::consumer`](crate::Client::consumer) returns).
pub type DynConsumer = Box<dyn Consumer>;

/// The default number of unsettled deliveries a consumer holds.
pub const DEFAULT_PREFETCH: usize = 100;

/// Where and how to consume.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerOptions {
    /// The queue or topic to receive from.
    pub source: String,
    /// The consumer group. Consumers of one group share the messages
    /// (competing consumers); each group gets its own copy. `None` is the
    /// source's default group, which exists from the first send on.
    pub group: Option<String>,
    /// The most deliveries held unsettled at once; `None` when the
    /// application did not say, so a backend can apply its own configured
    /// default (RabbitMQ's `prefetch` URL option) or [`DEFAULT_PREFETCH`]
    /// ([`ConsumerOptions::prefetch_or`]).
    pub prefetch: Option<usize>,
    /// Where dead letters go. `None` means the backend's default
    /// ([`Client::dead_letter_destination`](crate::Client::dead_letter_destination), `<source>-dlq`);
    /// [`Client`](crate::Client) fills it in before the backend sees the
    /// options, so backends read one name from one place.
    pub dead_letter: Option<String>,
}

impl ConsumerOptions {
    /// Options for `source` in the default group.
    pub fn new(source: impl Into<String>) -> Self {
        ConsumerOptions {
            source: source.into(),
            group: None,
            prefetch: None,
            dead_letter: None,
        }
    }

    /// Joins `group`.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Sends dead letters to `destination` instead of the backend's default.
    pub fn dead_letter(mut self, destination: impl Into<String>) -> Self {
        self.dead_letter = Some(destination.into());
        self
    }

    /// The dead-letter destination: the one set, else `<source>-dlq`.
    pub fn dead_letter_destination(&self) -> String {
        self.dead_letter
            .clone()
            .unwrap_or_else(|| format!("{}-dlq", self.source))
    }

    /// Holds at most `prefetch` (at least 1) unsettled deliveries.
    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = Some(prefetch.max(1));
        self
    }

    /// The prefetch the application set, else `default` (at least 1).
    pub fn prefetch_or(&self, default: usize) -> usize {
        self.prefetch.unwrap_or(default).max(1)
    }
}
