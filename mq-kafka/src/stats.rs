//! Consumer-group lag, for [`Backend::stats`](mq_core::backend::Backend::stats).
//!
//! Kafka keeps records whether or not they were consumed, so "depth" is a
//! group's lag: per partition, the high watermark minus the group's
//! committed offset (a partition without a committed offset counts from
//! the low watermark, where a new group starts). librdkafka answers these
//! questions only through a client of the group, with blocking calls: each
//! `stats` makes a short-lived consumer with the group's `group.id` that
//! never subscribes (so it does not join the group or disturb its members)
//! and asks on a blocking thread, every call bounded by [`STATS_TIMEOUT`].

use std::sync::Arc;
use std::time::Duration;

use mq_core::observe::QueueStats;
use mq_core::{Error, ErrorKind, Result};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::error::{convert, convert_create, kind_of, BACKEND};
use crate::health::{HealthContext, KafkaHealth};
use crate::topology::retry_topic;

/// The longest each broker request of `stats` may take (less if
/// `send_timeout` is shorter).
const STATS_TIMEOUT: Duration = Duration::from_secs(10);

/// Lag of `group` on `source` (`depth` = its sum, `lag` per partition),
/// records waiting in the group's retry topic (`delayed`), and the group's
/// members (`consumers`) where the broker describes groups.
pub(crate) async fn group_stats(
    config: &KafkaConfig,
    health: &Arc<KafkaHealth>,
    source: &str,
    group: &str,
) -> Result<QueueStats> {
    let timeout = config.send_timeout.min(STATS_TIMEOUT);
    let mut settings = config.consumer_config(group);
    // Looking must not create the topic it looks at.
    settings.set("allow.auto.create.topics", "false");
    let consumer: BaseConsumer<HealthContext> = settings
        .create_with_context(HealthContext::new(health.clone()))
        .map_err(|e| convert_create(e, &config.secrets(), Some(source)))?;
    let source = source.to_owned();
    let group = group.to_owned();
    tokio::task::spawn_blocking(move || {
        let result = blocking_stats(&consumer, &source, &group, timeout);
        drop(consumer);
        result
    })
    .await
    .map_err(|e| {
        Error::new(ErrorKind::Broker, format!("stats task failed: {e}")).with_backend(BACKEND)
    })?
}

fn blocking_stats(
    consumer: &BaseConsumer<HealthContext>,
    source: &str,
    group: &str,
    timeout: Duration,
) -> Result<QueueStats> {
    let lag = topic_lag(consumer, source, timeout)?.ok_or_else(|| {
        Error::new(
            ErrorKind::NotFound,
            format!("topic {source} does not exist"),
        )
        .with_backend(BACKEND)
        .with_operation("stats")
        .with_destination(source)
    })?;
    let retry = retry_topic(source, group);
    let delayed = topic_lag(consumer, &retry, timeout)?;
    // Optional: not every broker (or ACL) lets us describe groups.
    let consumers = match consumer.fetch_group_list(Some(group), timeout) {
        Ok(list) => list
            .groups()
            .iter()
            .find(|g| g.name() == group)
            .map(|g| g.members().len() as u64),
        Err(e) => {
            tracing::debug!(error = %e, group, "describing the group failed; consumers unknown");
            None
        }
    };
    let mut stats = QueueStats::default();
    stats.depth = Some(lag.iter().map(|(_, l)| *l as u64).sum());
    stats.delayed = delayed.map(|l| l.iter().map(|(_, l)| *l as u64).sum());
    stats.consumers = consumers;
    stats.lag = Some(lag);
    Ok(stats)
}

/// Per-partition lag of the consumer's group on `topic`; `None` if the
/// topic does not exist.
fn topic_lag(
    consumer: &BaseConsumer<HealthContext>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<Vec<(i32, i64)>>> {
    let fail = |e| convert(e, "stats", Some(topic));
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(fail)?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    if let Some(err) = t.error() {
        let code = RDKafkaErrorCode::from(err);
        return match kind_of(code) {
            ErrorKind::NotFound => Ok(None),
            kind => Err(
                Error::new(kind, format!("metadata of topic {topic}: {code}"))
                    .with_backend(BACKEND)
                    .with_operation("stats")
                    .with_destination(topic),
            ),
        };
    }
    let mut partitions: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    if partitions.is_empty() {
        return Ok(None);
    }
    partitions.sort_unstable();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer.committed_offsets(tpl, timeout).map_err(fail)?;
    let mut lag = Vec::with_capacity(partitions.len());
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout).map_err(fail)?;
        let from = match committed.find_partition(topic, p).map(|e| e.offset()) {
            // Below the low watermark (records deleted by retention) the
            // group resumes at the earliest record left.
            Some(Offset::Offset(o)) => o.max(low),
            // No commit yet: a new group starts at the earliest record.
            _ => low,
        };
        lag.push((p, (high - from).max(0)));
    }
    Ok(Some(lag))
}
