//! Helpers the test files of this crate share (`mod common;` in each):
//! unique names, the test broker's URL, librdkafka's mock cluster, waiting
//! until a condition holds, receiving with a time limit.
// Each test binary uses only some of them.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use mq_core::{Consumer, Delivery};
use mq_kafka::KafkaConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// librdkafka's in-process mock cluster (127.0.0.1 only).
pub type Cluster = MockCluster<'static, DefaultProducerContext>;

/// A name no other test (or earlier run) uses: `mqt-<prefix>-<uuid>`.
pub fn unique(prefix: &str) -> String {
    format!("mqt-{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// `MQ_TEST_KAFKA_URL`, or `None` after saying that `test` is skipped.
pub fn broker_url(test: &str) -> Option<String> {
    match std::env::var("MQ_TEST_KAFKA_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            eprintln!("{test}: skipped (MQ_TEST_KAFKA_URL is not set; start brokers with scripts/brokers.sh)");
            None
        }
    }
}

/// The settings of a client of `cluster`: a 6 s session with 300 ms
/// heartbeats, commits every 100 ms, topics created on use, sends given up
/// after `send_timeout` (`"20s"`); `extra` is appended to the URL
/// (`"&ordered=true"`).
pub fn mock_config(cluster: &Cluster, send_timeout: &str, extra: &str) -> KafkaConfig {
    let url = format!(
        "kafka://{}?send_timeout={send_timeout}&session_timeout=6s&heartbeat=300ms&commit_interval=100ms&auto_create_topics=true{extra}",
        cluster.bootstrap_servers()
    );
    KafkaConfig::from_url(&url).expect("url")
}

/// Calls `check` every `every` until it says done (`Ok`), for at most
/// `within`; then fails the test with the last reason it gave (`Err`).
pub async fn wait_until<T>(
    within: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let why = match check().await {
            Ok(done) => return done,
            Err(why) => why,
        };
        assert!(Instant::now() < deadline, "not within {within:?}: {why}");
        tokio::time::sleep(every).await;
    }
}

/// The next delivery of `consumer`, which must come within `within`
/// (`what` says which, for the failure message).
pub async fn receive_within(
    consumer: &mut impl Consumer,
    within: Duration,
    what: &str,
) -> Delivery {
    tokio::time::timeout(within, consumer.receive())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {within:?}"))
        .expect("receive")
}
