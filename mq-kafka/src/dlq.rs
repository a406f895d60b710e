//! Dead letters on Kafka, for `mq::dlq`: the dead-letter topic is a log.
//!
//! - **List** reads `<topic>-dlq` by offset, from each partition's low
//!   watermark to its high watermark as it was when the scan started, with
//!   a consumer that assigns partitions itself (no group join, no commit):
//!   the application's groups and their offsets are untouched. Each dead
//!   letter carries its [`LogPosition`] (partition, offset), so a filter can
//!   select an offset range.
//! - **Remove** (after a confirmed replay, or purge) appends a marker record
//!   to `<dead-letter topic>-removed` (created on first use): key and header
//!   `mq-dlq-removes` = `partition:offset`, payload the message id. A
//!   listing skips the records a marker names. The record itself stays in
//!   the dead-letter topic until retention deletes it (Kafka cannot delete
//!   one record), so a plain consumer of the dead-letter topic still sees
//!   it; the marker topic is the list of what `mq` removed.
//! - **Release** does nothing: reading a log takes nothing away.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mq_core::backend::{DeadLetterReader, LogPosition, Settlement, Settler};
use mq_core::{Delivery, Error, ErrorKind, Message, Result};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers as _, Message as _, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use crate::codec;
use crate::core::Sender;
use crate::error::{convert, convert_create, kind_of, BACKEND};
use crate::health::HealthContext;

/// Header (and key) of a removal marker: `partition:offset`.
pub const REMOVES_HEADER: &str = "mq-dlq-removes";

/// The topic of removal markers for `dead_letter_topic`.
pub fn removed_topic(dead_letter_topic: &str) -> String {
    format!("{dead_letter_topic}-removed")
}

/// The longest one read of the log may take.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads a dead-letter topic as a log (see the module docs).
pub(crate) struct LogReader {
    sender: Arc<Sender>,
    topic: String,
    hold: usize,
    pending: Option<VecDeque<Delivery>>,
}

impl std::fmt::Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader")
            .field("topic", &self.topic)
            .field("hold", &self.hold)
            .finish()
    }
}

impl LogReader {
    pub(crate) fn new(sender: Arc<Sender>, topic: &str, hold: usize) -> Self {
        LogReader {
            sender,
            topic: topic.to_owned(),
            hold,
            pending: None,
        }
    }

    async fn load(&self) -> Result<VecDeque<Delivery>> {
        let config = self.sender.config.clone();
        let settings = {
            let mut s = config.consumer_config(&format!("mq-dlq-reader-{}", self.topic));
            s.set("allow.auto.create.topics", "false");
            // The end of a partition is reported even when its last offsets
            // are not records (transaction markers, compaction gaps).
            s.set("enable.partition.eof", "true");
            s
        };
        let make = || -> Result<BaseConsumer<HealthContext>> {
            settings
                .create_with_context(HealthContext {
                    health: self.sender.health.clone(),
                })
                .map_err(|e| convert_create(e, &config.secrets(), Some(&self.topic)))
        };
        let (dlq_reader, ledger_reader) = (make()?, make()?);
        let topic = self.topic.clone();
        let ledger = removed_topic(&topic);
        let hold = self.hold;
        let records = tokio::task::spawn_blocking(move || {
            // The markers first (small), so the dead letters already
            // removed are skipped while reading and never held in memory.
            let removed: HashSet<LogPosition> =
                read_to_end(&ledger_reader, &ledger, usize::MAX, |_| true)?
                    .iter()
                    .filter_map(marker_position)
                    .collect();
            read_to_end(&dlq_reader, &topic, hold, |pos| !removed.contains(&pos))
        })
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Broker,
                format!("dead-letter read task failed: {e}"),
            )
            .with_backend(BACKEND)
        })??;
        let settler: Arc<dyn Settler> = Arc::new(MarkerSettler {
            sender: self.sender.clone(),
            ledger: removed_topic(&self.topic),
        });
        let topic: Arc<str> = Arc::from(self.topic.as_str());
        Ok(records
            .iter()
            .map(|r| {
                let received = codec::decode(r, topic.clone(), &topic, None, 0, false, 0)
                    .with_metadata(LogPosition {
                        partition: r.partition(),
                        offset: r.offset(),
                    });
                Delivery::new(received, settler.clone())
            })
            .collect())
    }
}

#[async_trait]
impl DeadLetterReader for LogReader {
    /// The first call reads the log to its end; later calls hand out the rest.
    async fn next_batch(&mut self, max: usize, _idle: Duration) -> Result<Vec<Delivery>> {
        if self.pending.is_none() {
            self.pending = Some(self.load().await?);
        }
        let pending = self.pending.get_or_insert_with(VecDeque::new);
        let n = max.min(pending.len());
        Ok(pending.drain(..n).collect())
    }

    /// Nothing to give back: reading a log takes nothing away.
    async fn release(&mut self, letters: Vec<Delivery>) -> Result<()> {
        drop(letters);
        Ok(())
    }
}

/// The position a marker record names (`partition:offset`), if well formed.
fn marker_position(record: &OwnedMessage) -> Option<LogPosition> {
    let from_header = record.headers().and_then(|hs| {
        hs.iter()
            .find(|h| h.key == REMOVES_HEADER)
            .and_then(|h| h.value)
            .map(<[u8]>::to_vec)
    });
    let raw = from_header.or_else(|| record.key().map(<[u8]>::to_vec))?;
    parse_position(std::str::from_utf8(&raw).ok()?)
}

/// `partition:offset`, strictly (no panics on any input).
fn parse_position(raw: &str) -> Option<LogPosition> {
    let (p, o) = raw.trim().split_once(':')?;
    Some(LogPosition {
        partition: p.parse().ok()?,
        offset: o.parse().ok()?,
    })
}

/// The records of `topic` that `keep` accepts, from the low to the high
/// watermark of each partition as they are now, at most `max` of them; an
/// absent topic is empty.
fn read_to_end(
    consumer: &BaseConsumer<HealthContext>,
    topic: &str,
    max: usize,
    keep: impl Fn(LogPosition) -> bool,
) -> Result<Vec<OwnedMessage>> {
    let fail = |e| convert(e, "dead-letter read", Some(topic));
    let metadata = consumer
        .fetch_metadata(Some(topic), READ_TIMEOUT)
        .map_err(fail)?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(Vec::new());
    };
    if let Some(err) = t.error() {
        let code = RDKafkaErrorCode::from(err);
        return match kind_of(code) {
            ErrorKind::NotFound => Ok(Vec::new()),
            kind => Err(
                Error::new(kind, format!("metadata of topic {topic}: {code}"))
                    .with_backend(BACKEND)
                    .with_destination(topic),
            ),
        };
    }
    let mut tpl = TopicPartitionList::new();
    let mut remaining = std::collections::HashMap::new();
    for p in t.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), READ_TIMEOUT)
            .map_err(fail)?;
        if high > low {
            tpl.add_partition_offset(topic, p.id(), Offset::Offset(low))
                .map_err(fail)?;
            remaining.insert(p.id(), high);
        }
    }
    let mut records = Vec::new();
    if remaining.is_empty() {
        return Ok(records);
    }
    consumer.assign(&tpl).map_err(fail)?;
    let deadline = Instant::now() + READ_TIMEOUT;
    while !remaining.is_empty() && records.len() < max {
        if Instant::now() >= deadline {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!("reading {topic} to its end took longer than {READ_TIMEOUT:?}"),
            )
            .with_backend(BACKEND)
            .with_destination(topic));
        }
        let Some(polled) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = match polled {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(p)) => {
                remaining.remove(&p);
                continue;
            }
            Err(e) => return Err(fail(e)),
        };
        let Some(&high) = remaining.get(&m.partition()) else {
            continue;
        };
        if m.offset() >= high {
            remaining.remove(&m.partition());
            continue;
        }
        if m.offset().saturating_add(1) >= high {
            remaining.remove(&m.partition());
        }
        let pos = LogPosition {
            partition: m.partition(),
            offset: m.offset(),
        };
        if keep(pos) {
            records.push(m.detach());
        }
    }
    Ok(records)
}

/// Removes a dead letter by appending its marker (see the module docs).
struct MarkerSettler {
    sender: Arc<Sender>,
    ledger: String,
}

#[async_trait]
impl Settler for MarkerSettler {
    async fn settle(&self, delivery: &Delivery, settlement: Settlement) -> Result<()> {
        if settlement != Settlement::Ack {
            return Err(Error::unsupported(
                "a dead letter read from a Kafka log is removed (ack) or left (drop), nothing else",
            )
            .with_backend(BACKEND));
        }
        let Some(pos) = delivery.metadata::<LogPosition>() else {
            return Err(Error::new(
                ErrorKind::Broker,
                format!("dead letter {} has no log position", delivery.id()),
            )
            .with_backend(BACKEND));
        };
        let marker = Message::new(delivery.id().to_owned())
            .with_key(pos.to_string())
            .with_header(REMOVES_HEADER, pos.to_string());
        self.sender.send(&self.ledger, &marker, true).await
    }

    /// Nothing to release: reading a log takes nothing away.
    fn abandon(&self, _delivery: &Delivery) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn positions_parse_strictly() {
        assert_eq!(
            parse_position("3:17"),
            Some(LogPosition {
                partition: 3,
                offset: 17
            })
        );
        for bad in [
            "",
            "3",
            ":1",
            "3:",
            "x:1",
            "1:99999999999999999999",
            "1:2:3",
        ] {
            assert_eq!(parse_position(bad), None, "{bad}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn position_parser_never_panics(s in ".{0,40}") {
            let _ = parse_position(&s);
        }
    }
}
