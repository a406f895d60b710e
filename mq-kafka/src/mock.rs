//! `kafka+mock://`: librdkafka's mock cluster inside the process.
//!
//! `kafka+mock://[name]?brokers=3&partitions=4` starts
//! [`rdkafka::mocking::MockCluster`] and connects to its bootstrap address:
//! Kafka's real protocol, partitions, consumer groups and commits, with no
//! broker and no Docker. Clients that name the same cluster (the same
//! `name`; no name is the process-wide default cluster) share it while any
//! of them is alive, like `memory://name`.
//!
//! librdkafka's `MockCluster` holds a raw pointer and is neither `Send`
//! nor `Sync`, and this crate has no `unsafe`: one dedicated thread creates
//! the cluster, owns it, and answers requests over a channel (its bootstrap
//! address, topic creation). The thread ends, and the cluster with it, when
//! the last [`MockCluster`] handle is dropped: every clone of a `Client`
//! made from the URL, its producers and consumers each hold one.
//!
//! The mock broker has no Admin `CreateTopics`, so in mock mode the
//! topology creates topics through [`MockCluster::create_topic`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{mpsc, Arc, LazyLock, Weak};

use mq_core::{Error, ErrorKind, Result};
use rdkafka::error::RDKafkaErrorCode;
use tokio::sync::{oneshot, Mutex};
use url::Url;

use crate::config::KafkaConfig;
use crate::error::{convert, BACKEND};

/// The URL scheme of the in-process mock cluster.
pub const MOCK_SCHEME: &str = "kafka+mock";

/// Bytes of record batches each partition of a mock cluster keeps: beyond
/// them librdkafka deletes the oldest batches, read or not (its fixed
/// `max_size` per mock partition, in `rdkafka_mock.c`).
pub const MOCK_PARTITION_BYTES: u64 = 5 * 1024 * 1024;

/// Most brokers a mock cluster may have.
const MAX_BROKERS: i32 = 32;

/// Options of a `kafka+mock://` URL that make no sense without a real
/// broker (no TLS or SASL on the mock listener, never persistent).
const REFUSED: &[&str] = &[
    "security_protocol",
    "sasl_mechanism",
    "ssl_ca",
    "ssl_cert",
    "ssl_key",
    "ssl_key_password",
    "persistent",
];

/// A request to the thread that owns the cluster.
enum Request {
    CreateTopic {
        name: String,
        partitions: i32,
        replication: i32,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// The handle every client of one mock cluster shares; dropping the last
/// one ends the owning thread, which drops the cluster.
struct Handle {
    name: String,
    brokers: i32,
    bootstrap: String,
    requests: mpsc::Sender<Request>,
}

/// Open clusters by name; weak, so a cluster lives only while a client does.
static CLUSTERS: LazyLock<Mutex<HashMap<String, Weak<Handle>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// A running in-process mock cluster (librdkafka's `rdkafka::mocking`).
/// Clones share it; it stops when the last clone is dropped.
#[derive(Clone)]
pub struct MockCluster {
    inner: Arc<Handle>,
}

impl fmt::Debug for MockCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockCluster")
            .field("name", &self.inner.name)
            .field("brokers", &self.inner.brokers)
            .field("bootstrap", &self.inner.bootstrap)
            .finish()
    }
}

fn mock_err(what: impl fmt::Display) -> Error {
    Error::config(format!("invalid kafka+mock URL: {what}")).with_backend(BACKEND)
}

fn gone() -> Error {
    Error::new(ErrorKind::Broker, "the mock cluster's thread has stopped").with_backend(BACKEND)
}

/// What a `kafka+mock://` URL says: the cluster's name and broker count,
/// and the client settings (brokers still unset).
#[derive(Debug)]
struct MockUrl {
    name: String,
    brokers: i32,
    config: KafkaConfig,
}

fn parse(url: &str) -> Result<MockUrl> {
    if !url.starts_with("kafka+mock://") {
        return Err(mock_err("the scheme must be kafka+mock://"));
    }
    let parsed = Url::parse(url).map_err(mock_err)?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(mock_err("a mock cluster takes no user name or password"));
    }
    if parsed.port().is_some() {
        return Err(mock_err("a mock cluster takes no port (it picks its own)"));
    }
    if !matches!(parsed.path(), "" | "/") {
        return Err(mock_err("kafka+mock URLs take no path"));
    }
    if parsed.fragment().is_some() {
        return Err(mock_err("kafka+mock URLs take no fragment"));
    }
    let name = parsed.host_str().unwrap_or("").to_owned();
    let mut brokers = None;
    let mut auto_create = false;
    let mut rest = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in parsed.query_pairs() {
        match k.as_ref() {
            "brokers" => {
                if brokers.is_some() {
                    return Err(mock_err("option `brokers` is given twice"));
                }
                let n = v
                    .parse::<i32>()
                    .ok()
                    .filter(|n| (1..=MAX_BROKERS).contains(n))
                    .ok_or_else(|| {
                        mock_err(format_args!(
                            "option `brokers` must be a number from 1 to {MAX_BROKERS}"
                        ))
                    })?;
                brokers = Some(n);
            }
            k if REFUSED.contains(&k) => {
                return Err(mock_err(format_args!(
                    "option `{k}` does not apply to the in-process mock cluster \
                     (plain text only, nothing persists)"
                )))
            }
            k => {
                auto_create |= k == "auto_create_topics";
                rest.append_pair(k, &v);
            }
        }
    }
    let brokers = brokers.unwrap_or(1);
    let query = rest.finish();
    // Every other option means what it means on kafka:// (strictly parsed
    // there); the placeholder broker is replaced by the cluster's address.
    let mut config =
        KafkaConfig::from_url(&format!("kafka://127.0.0.1:1?{query}")).map_err(|e| {
            mock_err(
                e.message()
                    .strip_prefix("invalid kafka URL: ")
                    .unwrap_or(e.message()),
            )
        })?;
    if i32::from(config.replication) > brokers {
        return Err(mock_err(format_args!(
            "replication {} needs at least as many brokers (brokers={brokers})",
            config.replication
        )));
    }
    config.persistent = false;
    if !auto_create {
        // Like memory://: a fresh cluster is empty, topics appear on use.
        config.auto_create_topics = true;
    }
    Ok(MockUrl {
        name,
        brokers,
        config,
    })
}

/// Whether `url` names the in-process mock cluster.
pub fn is_mock_url(url: &str) -> bool {
    url.starts_with("kafka+mock://")
}

impl MockCluster {
    /// Opens the cluster a `kafka+mock://` URL names (starting it if no
    /// client has it open) and returns it with the client settings the URL
    /// gives, connected to it. Keep the handle while using the settings.
    pub async fn open(url: &str) -> Result<(MockCluster, KafkaConfig)> {
        let MockUrl {
            name,
            brokers,
            mut config,
        } = parse(url)?;
        let cluster = Self::named(&name, brokers).await?;
        config.brokers = vec![cluster.inner.bootstrap.clone()];
        Ok((cluster, config))
    }

    /// The running cluster called `name`, or a new one of `brokers` brokers.
    async fn named(name: &str, brokers: i32) -> Result<MockCluster> {
        let mut clusters = CLUSTERS.lock().await;
        clusters.retain(|_, h| h.strong_count() > 0);
        if let Some(inner) = clusters.get(name).and_then(Weak::upgrade) {
            if inner.brokers != brokers {
                return Err(mock_err(format_args!(
                    "mock cluster `{name}` is running with {} broker(s); cannot reopen it with {brokers}",
                    inner.brokers
                )));
            }
            return Ok(MockCluster { inner });
        }
        let inner = Arc::new(start(name, brokers).await?);
        clusters.insert(name.to_owned(), Arc::downgrade(&inner));
        Ok(MockCluster { inner })
    }

    /// The cluster's name in the URL (empty for the default cluster).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Its bootstrap servers (`127.0.0.1:port,...`).
    pub fn bootstrap_servers(&self) -> &str {
        &self.inner.bootstrap
    }

    /// Creates `topic` with `partitions` partitions and `replication`
    /// replicas (at most the cluster's brokers); an existing topic is fine.
    pub async fn create_topic(&self, topic: &str, partitions: i32, replication: i32) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .requests
            .send(Request::CreateTopic {
                name: topic.to_owned(),
                partitions,
                replication,
                reply,
            })
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// Starts the thread owning a new cluster of `brokers` brokers; returns
/// once the cluster listens.
async fn start(name: &str, brokers: i32) -> Result<Handle> {
    let (requests, inbox) = mpsc::channel::<Request>();
    let (ready, address) = oneshot::channel::<Result<String>>();
    std::thread::Builder::new()
        .name(format!("mq-kafka-mock-{name}"))
        .spawn(move || own(brokers, inbox, ready))
        .map_err(|e| {
            Error::new(
                ErrorKind::Broker,
                format!("cannot start the mock cluster's thread: {e}"),
            )
            .with_backend(BACKEND)
        })?;
    let bootstrap = address.await.map_err(|_| gone())??;
    Ok(Handle {
        name: name.to_owned(),
        brokers,
        bootstrap,
        requests,
    })
}

/// The owning thread: creates the cluster, reports its address, serves
/// requests until every handle is dropped, then drops the cluster.
fn own(brokers: i32, inbox: mpsc::Receiver<Request>, ready: oneshot::Sender<Result<String>>) {
    let cluster = match rdkafka::mocking::MockCluster::new(brokers) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(convert(e, "start mock cluster", None)));
            return;
        }
    };
    if ready.send(Ok(cluster.bootstrap_servers())).is_err() {
        return;
    }
    while let Ok(request) = inbox.recv() {
        match request {
            Request::CreateTopic {
                name,
                partitions,
                replication,
                reply,
            } => {
                let result = match cluster.create_topic(&name, partitions, replication) {
                    Ok(())
                    | Err(rdkafka::error::KafkaError::MockCluster(
                        RDKafkaErrorCode::TopicAlreadyExists,
                    )) => Ok(()),
                    Err(e) => Err(convert(e, "create topic", Some(&name))),
                };
                let _ = reply.send(result);
            }
        }
    }
    tracing::debug!(bootstrap = %cluster.bootstrap_servers(), "mock cluster stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let m = parse("kafka+mock://").expect("bare");
        assert_eq!((m.name.as_str(), m.brokers), ("", 1));
        assert!(m.config.auto_create_topics && !m.config.persistent);
        let m =
            parse("kafka+mock://c1?brokers=3&partitions=4&replication=3&group=g").expect("options");
        assert_eq!((m.name.as_str(), m.brokers), ("c1", 3));
        assert_eq!((m.config.partitions, m.config.replication), (4, 3));
        assert_eq!(m.config.group.as_deref(), Some("g"));
        let m = parse("kafka+mock://?auto_create_topics=false").expect("no auto");
        assert!(!m.config.auto_create_topics);
        for bad in [
            "kafka://h",
            "kafka+mock://u:p@c",
            "kafka+mock://c:9092",
            "kafka+mock://c/path",
            "kafka+mock://c#f",
            "kafka+mock://?brokers=0",
            "kafka+mock://?brokers=x",
            "kafka+mock://?brokers=1&brokers=2",
            "kafka+mock://?replication=2",
            "kafka+mock://?persistent=true",
            "kafka+mock://?security_protocol=ssl",
            "kafka+mock://?bogus=1",
            "kafka+mock://?partitions=0",
        ] {
            let e = parse(bad).expect_err(bad);
            assert_eq!(e.kind(), ErrorKind::Config, "{bad}: {e}");
        }
    }
}
