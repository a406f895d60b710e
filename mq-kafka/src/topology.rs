//! Topic names and topic creation.
//!
//! | topic | name | created |
//! |---|---|---|
//! | source | the destination name | on first send or consume (auto-creation on) |
//! | retry | [`retry_topic`]: `<topic>.<group>-retry`, or a hashed name when the group has other characters (one per consumer group, so groups never see each other's retries) | when a consumer of the group starts |
//! | dead letter | the consumer's dead-letter destination (`<topic>-dlq` by default) | on the first dead letter |
//! | reply | `mq-reply-<uuid>` | by the requester, always (1 partition) |
//!
//! With `auto_create_topics=false` nothing is created: a send to, or a
//! consumer of, a missing topic fails with `NotFound` naming it (the broker
//! may still create topics itself if it is configured to).
//!
//! On the in-process mock cluster (`kafka+mock://`), whose broker has no
//! Admin `CreateTopics`, topics are created through the cluster itself
//! ([`MockCluster::create_topic`]).

use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::time::Duration;

use mq_core::{Error, ErrorKind, Result};
use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;
use tokio::sync::OnceCell;

use crate::config::KafkaConfig;
use crate::error::{convert, convert_create, kind_of, BACKEND};
use crate::health::{HealthContext, KafkaHealth};
use crate::mock::MockCluster;

/// Longest topic name Kafka accepts.
const MAX_TOPIC_LEN: usize = 249;

/// Whether `c` may appear in a Kafka topic name.
fn legal(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// A Kafka topic name must be 1 to 249 characters of `[a-zA-Z0-9._-]`,
/// and not `.` or `..`. Checked before any broker is asked, so every
/// broker (some accept anything) gives the same `Config` error.
pub(crate) fn check_topic_name(topic: &str) -> Result<()> {
    let problem = if topic.is_empty() {
        "is empty"
    } else if topic.len() > MAX_TOPIC_LEN {
        "is longer than 249 characters"
    } else if !topic.chars().all(legal) {
        "has characters other than a-z, A-Z, 0-9, '.', '_' and '-'"
    } else if matches!(topic, "." | "..") {
        "is `.` or `..`"
    } else {
        return Ok(());
    };
    let shown: String = topic.chars().take(80).collect();
    Err(
        Error::config(format!("topic name `{}` {problem}", shown.escape_default()))
            .with_backend(BACKEND),
    )
}

/// The retry topic of `group` on `topic`.
///
/// `<topic>.<group>-retry` when the group is made of `[a-zA-Z0-9_-]` only
/// (no dot: the last dot of the name separates topic and group, so no two
/// (topic, group) pairs share a name) and the name fits in 249 characters.
/// Otherwise (a dot or another character in the group, or too long), a hash
/// of the exact pair keeps names apart: `<topic>.<group, cleaned>.<16 hex
/// digits>-retry`, shortened to fit. A group that is itself 16 lowercase
/// hex digits takes the hashed form too, so a plain name never looks like a
/// hashed one.
pub fn retry_topic(topic: &str, group: &str) -> String {
    let plain_group = !group.is_empty()
        && group
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
        && !(group.len() == 16
            && group
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    let name = format!("{topic}.{group}-retry");
    if plain_group && name.len() <= MAX_TOPIC_LEN {
        return name;
    }
    // FNV-1a over topic, a byte that never occurs in UTF-8, group: the
    // exact pair, not its cleaned spelling.
    let hash = topic
        .bytes()
        .chain([0xff])
        .chain(group.bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let clean: String = group
        .chars()
        .map(|c| if legal(c) { c } else { '_' })
        .collect();
    let readable = format!("{topic}.{clean}");
    let suffix = format!(".{hash:016x}-retry");
    let mut keep = MAX_TOPIC_LEN
        .saturating_sub(suffix.len())
        .min(readable.len());
    while !readable.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{suffix}", &readable[..keep])
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
    known: Mutex<FxHashMap<String, Arc<OnceCell<()>>>>,
    /// The in-process cluster this connection uses (`kafka+mock://`): it
    /// creates the topics, and lives as long as this connection.
    mock: Option<MockCluster>,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology")
            .field("known_topics", &self.known.lock().len())
            .finish()
    }
}

impl Topology {
    pub(crate) fn new(
        config: Arc<KafkaConfig>,
        health: Arc<KafkaHealth>,
        mock: Option<MockCluster>,
    ) -> Result<Self> {
        let admin = config
            .admin_config()
            .create_with_context(HealthContext::new(health))
            .map_err(|e| convert_create(e, &config.secrets(), None))?;
        Ok(Topology {
            admin: Arc::new(admin),
            config,
            known: Mutex::new(FxHashMap::default()),
            mock,
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
                None => {
                    check_topic_name(topic).map_err(|e| {
                        e.with_destination(topic.chars().take(80).collect::<String>())
                    })?;
                    known.entry(topic.to_owned()).or_default().clone()
                }
            }
        };
        cell.get_or_try_init(|| async {
            let create = self.config.auto_create_topics || force;
            if let (Some(mock), true) = (&self.mock, create) {
                // Creating an existing topic is fine there, and cheap.
                let replication = i32::from(self.config.replication);
                return mock
                    .create_topic(topic, self.config.partitions, replication)
                    .await
                    .map_err(|e| e.with_destination(topic));
            }
            // Look first: creating needs more rights than reading metadata,
            // and some brokers (librdkafka's mock cluster) cannot create.
            match self.check(topic).await {
                Err(e) if e.kind() == ErrorKind::NotFound && create => self.create(topic).await,
                other => other,
            }
        })
        .await
        .map(|_| ())
    }

    /// Whether `topic` was looked up (or created) already: a send to it
    /// needs no wait (the hot path of every send, one lookup).
    pub(crate) fn is_known(&self, topic: &str) -> bool {
        self.known
            .lock()
            .get(topic)
            .is_some_and(|cell| cell.initialized())
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
            timeout.saturating_add(Duration::from_secs(1)),
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
                        kind_of(code),
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
        assert_eq!(
            retry_topic("orders.eu", "billing"),
            "orders.eu.billing-retry"
        );
        assert_eq!(retry_topic("jobs", "a_b-c"), "jobs.a_b-c-retry");
        assert_eq!(dead_letter_topic("jobs"), "jobs-dlq");
        assert_eq!(default_group("jobs"), "mq-jobs");
        let long = "t".repeat(240);
        let r = retry_topic(&long, "group");
        assert!(r.len() <= MAX_TOPIC_LEN, "{}", r.len());
        assert_ne!(r, retry_topic(&long, "other"));
        let hashed = retry_topic("jobs", "a b/c");
        assert!(hashed.starts_with("jobs.a_b_c."), "{hashed}");
        assert!(check_topic_name(&hashed).is_ok(), "{hashed}");
    }

    /// Defect 10 of issue 14: retry topic names of different (topic, group)
    /// pairs collided.
    #[test]
    fn retry_topic_names_never_collide() {
        let pairs = [
            ("orders.eu", "billing"),
            ("orders", "eu.billing"),
            ("a", "a b"),
            ("a", "a_b"),
            ("a", "a.b"),
            ("a.a", "b"),
            ("a", "a/b"),
            ("a", "a\u{e9}b"),
            ("a", "a\u{e8}b"),
            ("t", "0123456789abcdef"),
            ("t", ""),
            ("t", "_"),
            ("t.", "x"),
            ("t", ".x"),
        ];
        let mut seen = std::collections::HashMap::new();
        for (topic, group) in pairs {
            let name = retry_topic(topic, group);
            check_topic_name(&name).expect("legal");
            if let Some(other) = seen.insert(name.clone(), (topic, group)) {
                panic!("{other:?} and {:?} share {name}", (topic, group));
            }
        }
        // Long names: the hash covers the whole pair.
        let a = "x".repeat(300);
        let b = format!("{}y", "x".repeat(299));
        assert_ne!(retry_topic(&a, "g"), retry_topic(&b, "g"));
        assert_ne!(retry_topic("t", &a), retry_topic("t", &b));
        assert!(retry_topic(&a, &b).len() <= MAX_TOPIC_LEN);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]
        /// Legal and distinct for any two different pairs.
        #[test]
        fn retry_topic_names_are_legal_and_distinct(
            t1 in "[a-z.]{1,6}", g1 in "[a-z._ ]{0,6}",
            t2 in "[a-z.]{1,6}", g2 in "[a-z._ ]{0,6}",
            long in proptest::prelude::any::<bool>(),
        ) {
            let pad = |s: &str| if long { format!("{s}{}", "p".repeat(250)) } else { s.to_owned() };
            let (t1, t2) = (pad(&t1), pad(&t2));
            let (n1, n2) = (retry_topic(&t1, &g1), retry_topic(&t2, &g2));
            proptest::prop_assert!(check_topic_name(&n1).is_ok(), "{}", n1);
            if (t1.as_str(), g1.as_str()) != (t2.as_str(), g2.as_str()) {
                proptest::prop_assert_ne!(n1, n2);
            }
        }
    }

    #[test]
    fn illegal_topic_names_are_config_errors() {
        for bad in ["", ".", "..", "a b", "bad!name", "é"] {
            let e = check_topic_name(bad).expect_err(bad);
            assert_eq!(e.kind(), ErrorKind::Config, "{bad}: {e}");
        }
        let e = check_topic_name(&"x".repeat(300)).expect_err("long");
        assert!(e.to_string().contains("249"), "{e}");
        for good in ["a", "orders.eu", "a_b-c.D9", &"x".repeat(249)] {
            check_topic_name(good).expect(good);
        }
    }
}
