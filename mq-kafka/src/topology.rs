//! Topic names and topic creation.
//!
//! | topic | name | created |
//! |---|---|---|
//! | source | the destination name | on first send or consume (auto-creation on) |
//! | retry | `<topic>.<group>-retry` (one per consumer group, so groups never see each other's retries) | when a consumer of the group starts |
//! | dead letter | `<topic>-dlq` | on the first dead letter |
//! | reply | `mq-reply-<uuid>` | by the requester, always (1 partition) |
//!
//! With `auto_create_topics=false` nothing is created: a send to, or a
//! consumer of, a missing topic fails with `NotFound` naming it (the broker
//! may still create topics itself if it is configured to).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mq_core::{Error, ErrorKind, Result};
use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;
use tokio::sync::OnceCell;

use crate::config::KafkaConfig;
use crate::error::convert;
use crate::health::{HealthContext, KafkaHealth};
use crate::BACKEND;

/// Longest topic name Kafka accepts.
const MAX_TOPIC_LEN: usize = 249;

/// The retry topic of `group` on `topic`.
pub fn retry_topic(topic: &str, group: &str) -> String {
    let clean: String = group
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let name = format!("{topic}.{clean}-retry");
    if name.len() <= MAX_TOPIC_LEN {
        return name;
    }
    // Too long: keep it unique with a hash of the group.
    let hash = group.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let keep = MAX_TOPIC_LEN.saturating_sub(24).min(topic.len());
    let mut cut = keep;
    while !topic.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}.{hash:016x}-retry", &topic[..cut])
}

/// The dead-letter topic of `topic`.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}-dlq")
}

/// The default consumer group of `topic`.
pub fn default_group(topic: &str) -> String {
    format!("mq-{topic}")
}

/// Makes sure topics exist, once per topic per connection.
pub(crate) struct Topology {
    admin: Arc<AdminClient<HealthContext>>,
    config: Arc<KafkaConfig>,
    known: Mutex<HashMap<String, Arc<OnceCell<()>>>>,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology")
            .field("known_topics", &self.known.lock().len())
            .finish()
    }
}

impl Topology {
    pub(crate) fn new(config: Arc<KafkaConfig>, health: Arc<KafkaHealth>) -> Result<Self> {
        let admin = config
            .admin_config()
            .create_with_context(HealthContext::new(health))
            .map_err(|e| convert(e, "connect", None))?;
        Ok(Topology {
            admin: Arc::new(admin),
            config,
            known: Mutex::new(HashMap::new()),
        })
    }

    /// Ensures `topic` exists: created if auto-creation is on (or `force`),
    /// otherwise checked, with `NotFound` if it is missing.
    pub(crate) async fn ensure(&self, topic: &str, force: bool) -> Result<()> {
        // The hot path (every send): one lookup, no allocation.
        let cell = {
            let mut known = self.known.lock();
            match known.get(topic) {
                Some(c) if c.initialized() => return Ok(()),
                Some(c) => c.clone(),
                None => known.entry(topic.to_owned()).or_default().clone(),
            }
        };
        cell.get_or_try_init(|| async {
            // Look first: creating needs more rights than reading metadata,
            // and some brokers (librdkafka's mock cluster) cannot create.
            match self.check(topic).await {
                Err(e)
                    if e.kind() == ErrorKind::NotFound
                        && (self.config.auto_create_topics || force) =>
                {
                    self.create(topic).await
                }
                other => other,
            }
        })
        .await
        .map(|_| ())
    }

    /// Forgets that `topic` exists (a send to it failed as if it were gone:
    /// a broker without persistence lost it in a restart), so the next use
    /// looks it up, and creates it, again.
    pub(crate) fn forget(&self, topic: &str) {
        self.known.lock().remove(topic);
    }

    async fn create(&self, topic: &str) -> Result<()> {
        let new = NewTopic::new(
            topic,
            self.config.partitions,
            TopicReplication::Fixed(i32::from(self.config.replication)),
        );
        let timeout = self.config.send_timeout;
        let opts = AdminOptions::new()
            .operation_timeout(Some(timeout))
            .request_timeout(Some(timeout));
        let results = tokio::time::timeout(
            timeout + Duration::from_secs(1),
            self.admin.create_topics([&new], &opts),
        )
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::Timeout,
                format!("creating topic {topic} took over {timeout:?}"),
            )
            .with_backend(BACKEND)
            .with_operation("create topic")
            .with_destination(topic)
        })?
        .map_err(|e| convert(e, "create topic", Some(topic)))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(Error::new(
                        crate::error::kind_of(code),
                        format!("cannot create topic {topic}: {code}"),
                    )
                    .with_backend(BACKEND)
                    .with_operation("create topic")
                    .with_destination(topic))
                }
            }
        }
        tracing::debug!(topic, partitions = self.config.partitions, "topic ready");
        Ok(())
    }

    async fn check(&self, topic: &str) -> Result<()> {
        let timeout = self.config.send_timeout;
        let admin = self.admin.clone();
        let name = topic.to_owned();
        let metadata =
            tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(Some(&name), timeout))
                .await
                .map_err(|e| {
                    Error::new(ErrorKind::Broker, format!("metadata task failed: {e}"))
                        .with_backend(BACKEND)
                })?
                .map_err(|e| convert(e, "fetch metadata", Some(topic)))?;
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .is_some_and(|t| t.error().is_none() && !t.partitions().is_empty());
        if found {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::NotFound,
                format!("topic {topic} does not exist and auto_create_topics is off"),
            )
            .with_backend(BACKEND)
            .with_destination(topic))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(retry_topic("jobs", "billing"), "jobs.billing-retry");
        assert_eq!(retry_topic("jobs", "a b/c"), "jobs.a_b_c-retry");
        assert_eq!(dead_letter_topic("jobs"), "jobs-dlq");
        assert_eq!(default_group("jobs"), "mq-jobs");
        let long = "t".repeat(240);
        let r = retry_topic(&long, "group");
        assert!(r.len() <= MAX_TOPIC_LEN, "{}", r.len());
        assert_ne!(r, retry_topic(&long, "other"));
    }
}
