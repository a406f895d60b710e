//! Reading a dead-letter destination without removing what is read: the
//! backend primitive under [`dlq`](crate::dlq) (tier 2, re-exported from
//! [`backend`](crate::backend)).
//!
//! A reader hands out dead letters as [`Delivery`] values with one meaning
//! per settlement:
//! - **ack** removes the dead letter (after its replay was confirmed, or to
//!   purge it);
//! - **drop** releases it: it stays a dead letter.
//!
//! Other settlements are not used by the dead-letter API.
//!
//! Two ways to read, chosen by
//! [`Capabilities::dead_letter_listing`](crate::Capabilities::dead_letter_listing):
//! - [`DeadLetterListing::Hold`]: queues (memory, RabbitMQ, SQS) can only
//!   *receive*. [`HoldingReader`], the default of
//!   [`Backend::dead_letter_reader`](crate::backend::Backend::dead_letter_reader),
//!   receives and holds (unsettled) what it lists, so nothing is delivered
//!   twice within one scan; dropping the held deliveries releases them
//!   (RabbitMQ nack with requeue, SQS visibility 0, memory requeue). A scan
//!   ends when nothing arrives for the idle time.
//! - [`DeadLetterListing::Rotate`]: a queue that blocks a message group
//!   while one of its messages is held (SQS FIFO) uses [`RotatingReader`],
//!   which moves what it leaves in place to the back of the queue.
//! - [`DeadLetterListing::Log`]: a log (Kafka) is read by position without
//!   consuming; the backend implements its own reader and defines removal
//!   (see the backend's docs). A scan ends at the end of the log as it was
//!   when the scan started.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

pub use crate::capabilities::DeadLetterListing;
use crate::consumer::DynConsumer;
use crate::delivery::Delivery;
use crate::error::Result;

/// Where a dead letter sits in a log (Kafka partition and offset), attached
/// as [`Received::metadata`](crate::Received::metadata) by log readers so
/// filters can select by offset range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogPosition {
    /// The partition.
    pub partition: i32,
    /// The offset within the partition.
    pub offset: i64,
}

impl fmt::Display for LogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.partition, self.offset)
    }
}

/// Reads the dead letters of one destination; see the module docs for what
/// ack and drop mean on what it returns.
#[async_trait]
pub trait DeadLetterReader: Send + fmt::Debug {
    /// Up to `max` more dead letters. An empty vector is the end of the
    /// scan: nothing arrived within `idle` ([`DeadLetterListing::Hold`]) or
    /// the end of the log was reached ([`DeadLetterListing::Log`]).
    async fn next_batch(&mut self, max: usize, idle: Duration) -> Result<Vec<Delivery>>;

    /// Dead letters the caller read and leaves in place: they must not be
    /// read again in this scan. [`HoldingReader`] holds them until
    /// [`close`](DeadLetterReader::close); a log drops them (nothing to give
    /// back); [`RotatingReader`] moves them to the back of the queue.
    async fn release(&mut self, letters: Vec<Delivery>) -> Result<()>;

    /// Stops reading. Deliveries still held are released when dropped;
    /// callers drop them before closing.
    async fn close(&mut self) -> Result<()> {
        Ok(())
    }
}

/// The default reader: a consumer of the dead-letter destination whose
/// prefetch is the most dead letters one scan holds. The caller keeps every
/// delivery it does not remove until the scan ends, then drops them (each
/// goes back to the broker), then closes the reader.
#[derive(Debug)]
pub struct HoldingReader {
    consumer: DynConsumer,
    held: Vec<Delivery>,
}

impl HoldingReader {
    /// Reads through `consumer` (made with the prefetch the scan may hold).
    pub fn new(consumer: DynConsumer) -> Self {
        HoldingReader {
            consumer,
            held: Vec::new(),
        }
    }
}

#[async_trait]
impl DeadLetterReader for HoldingReader {
    async fn next_batch(&mut self, max: usize, idle: Duration) -> Result<Vec<Delivery>> {
        self.consumer.receive_batch(max, idle).await
    }

    async fn release(&mut self, letters: Vec<Delivery>) -> Result<()> {
        self.held.extend(letters);
        Ok(())
    }

    /// Drops what it holds (each goes back to the broker), then closes.
    async fn close(&mut self) -> Result<()> {
        self.held.clear();
        self.consumer.close().await
    }
}

/// A reader for queues that deliver nothing more of a message group while
/// one of its messages is held (SQS FIFO): instead of holding what it
/// leaves in place, it moves it to the back of the queue: it sends a copy
/// ([`republish::relist_copy`](crate::republish::relist_copy): same id,
/// payload and headers, fresh broker deduplication id, the scan's mark
/// `mq-dlq-scan`), waits for the confirmation, then removes the original.
/// A crash in between leaves a duplicate, never a loss. When a copy marked
/// by this scan comes back, its group was read through: the copy is held
/// (so the group stays blocked) and released at the end of the scan. Every
/// listing therefore rewrites every message it reads (two requests per
/// message), and a group's order is unchanged once the scan is through.
#[derive(Debug)]
pub struct RotatingReader {
    consumer: DynConsumer,
    producer: crate::producer::DynProducer,
    destination: String,
    scan: String,
    wrapped: Vec<Delivery>,
}

impl RotatingReader {
    /// Reads `destination` through `consumer`, moving what is left in place
    /// to the back with `producer`.
    pub fn new(
        consumer: DynConsumer,
        producer: crate::producer::DynProducer,
        destination: impl Into<String>,
    ) -> Self {
        RotatingReader {
            consumer,
            producer,
            destination: destination.into(),
            scan: crate::message::new_message_id(),
            wrapped: Vec::new(),
        }
    }
}

#[async_trait]
impl DeadLetterReader for RotatingReader {
    async fn next_batch(&mut self, max: usize, idle: Duration) -> Result<Vec<Delivery>> {
        loop {
            let batch = self.consumer.receive_batch(max, idle).await?;
            if batch.is_empty() {
                return Ok(batch);
            }
            let (mine, fresh): (Vec<_>, Vec<_>) = batch.into_iter().partition(|d| {
                d.headers().get(crate::message::headers::DLQ_SCAN) == Some(self.scan.as_str())
            });
            self.wrapped.extend(mine);
            if !fresh.is_empty() {
                return Ok(fresh);
            }
        }
    }

    async fn release(&mut self, letters: Vec<Delivery>) -> Result<()> {
        use crate::producer::Producer as _;
        for d in letters {
            let copy = crate::republish::relist_copy(&d, &self.scan);
            self.producer.send(&self.destination, copy).await?;
            d.ack().await?;
        }
        Ok(())
    }

    /// Releases the held copies (visible again at once), then closes.
    async fn close(&mut self) -> Result<()> {
        self.wrapped.clear();
        self.consumer.close().await
    }
}
