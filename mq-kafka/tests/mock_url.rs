//! `kafka+mock://`: the in-process mock cluster behind a URL. Consumer
//! groups rebalance and commit on it (two consumers, one leaves midway,
//! nothing lost), and clients naming the same cluster share it.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::unique;
use mq_core::{Client, DynConsumer, Message, Producer};
use mq_kafka::MockCluster;
use parking_lot::Mutex;

const COUNT: usize = 2_000;

fn url(name: &str) -> String {
    format!(
        "kafka+mock://{name}?partitions=4&session_timeout=6s&heartbeat=300ms&commit_interval=100ms"
    )
}

/// Receives and acks until `stop` says so; records every payload in `seen`
/// and returns how many it acked.
async fn drain(
    mut consumer: DynConsumer,
    seen: Arc<Mutex<HashSet<String>>>,
    stop: impl Fn(usize, usize) -> bool,
    deadline: Instant,
    count: Arc<AtomicUsize>,
) -> (DynConsumer, usize) {
    let mut acked = 0usize;
    loop {
        let total = seen.lock().len();
        if stop(acked, total) {
            return (consumer, acked);
        }
        assert!(
            Instant::now() < deadline,
            "only {total} of {COUNT} arrived in time"
        );
        let batch = consumer
            .receive_batch(100, Duration::from_millis(100))
            .await
            .expect("receive");
        for d in batch {
            let body = String::from_utf8(d.payload().to_vec()).expect("utf-8");
            d.ack().await.expect("ack");
            count.fetch_add(1, Ordering::Relaxed);
            if body.starts_with("m-") {
                acked += 1;
                seen.lock().insert(body);
            }
        }
    }
}

/// Two consumers of one group on two clients of one `kafka+mock://`
/// cluster; one closes after its first 300 messages while 2,000 flow.
/// Every message arrives and is acked, and the group's commits advanced:
/// a fresh member of the group gets nothing of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mock_url_group_rebalances_and_commits() {
    let url = url(&unique("cluster"));
    let topic = unique("topic");
    let group = unique("group");
    let a: Client = mq_kafka::connect(&url).await.expect("client a");
    let b: Client = mq_kafka::connect(&url).await.expect("client b");
    assert!(!a.capabilities().persistent);
    let first = a
        .consumer(&topic)
        .group(&group)
        .prefetch(200)
        .await
        .expect("first");
    let second = b
        .consumer(&topic)
        .group(&group)
        .prefetch(200)
        .await
        .expect("second");
    // Sent through client a, consumed through both: one cluster.
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let deadline = Instant::now() + Duration::from_secs(90);
    let (got_first, got_second) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // The first leaves once it acked 300 of the 2,000.
    let leaver = tokio::spawn(drain(
        first,
        seen.clone(),
        |acked, _| acked >= 300,
        deadline,
        got_first.clone(),
    ));
    let stayer = tokio::spawn(drain(
        second,
        seen.clone(),
        |_, total| total >= COUNT,
        deadline,
        got_second.clone(),
    ));
    let producer = a.producer().await.expect("producer");
    // Warm-up records on every key until both members got one: the group
    // has formed, with partitions on each, before the 2,000 start.
    let mut warm = 0;
    while got_first.load(Ordering::Relaxed) == 0 || got_second.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the group never formed");
        let batch = (0..8)
            .map(|k| Message::new(format!("warm-{warm}")).with_key(format!("k{k}")))
            .collect();
        warm += 1;
        assert!(producer.send_batch(&topic, batch).await.is_ok());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let to = topic.clone();
    let sending = tokio::spawn(async move {
        for wave in 0..COUNT / 50 {
            let batch = (wave * 50..(wave + 1) * 50)
                .map(|i| Message::new(format!("m-{i}")).with_key(format!("k{i}")))
                .collect();
            let report = producer.send_batch(&to, batch).await;
            assert!(report.is_ok(), "wave {wave}: {report:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let (mut first, left_after) = leaver.await.expect("leaver");
    let total_then = seen.lock().len();
    first.close().await.expect("close the leaving consumer");
    drop(first);
    eprintln!("first consumer left after {left_after} acks ({total_then} of {COUNT} in)");
    assert!(
        total_then < COUNT,
        "the first consumer left only after everything arrived ({total_then}); not midway"
    );
    sending.await.expect("sends");
    // The producer wrote each message once (idempotence on the mock).
    {
        use rdkafka::consumer::{BaseConsumer, Consumer as _};
        let (_c, config) = MockCluster::open(&url).await.expect("open");
        let raw: BaseConsumer = config.consumer_config("watermarks").create().expect("raw");
        let mut sum = 0;
        for p in 0..4 {
            let (lo, hi) = raw
                .fetch_watermarks(&topic, p, Duration::from_secs(5))
                .expect("wm");
            sum += hi - lo;
        }
        assert_eq!(
            sum,
            COUNT as i64 + 8 * warm,
            "records written (no duplicates)"
        );
    }
    let (mut second, stayed_for) = stayer.await.expect("stayer");
    second.close().await.expect("close");
    drop(second);
    let seen = seen.lock().clone();
    let missing: Vec<usize> = (0..COUNT)
        .filter(|i| !seen.contains(&format!("m-{i}")))
        .collect();
    assert!(
        missing.is_empty(),
        "lost {} messages: {missing:?}",
        missing.len()
    );
    eprintln!(
        "all {COUNT} arrived and were acked: {left_after} by the leaver, {stayed_for} by the \
         other ({} redelivered)",
        (left_after + stayed_for).saturating_sub(COUNT)
    );
    assert!(stayed_for > 0);

    // The group's commits advanced: a fresh member gets nothing of the
    // 2,000, but does get a message sent now (so it was really consuming).
    let mut fresh = b
        .consumer(&topic)
        .group(&group)
        .await
        .expect("fresh consumer");
    let quiet = Instant::now() + Duration::from_secs(8);
    while Instant::now() < quiet {
        let batch = fresh
            .receive_batch(100, Duration::from_millis(200))
            .await
            .expect("receive");
        let old: Vec<String> = batch
            .iter()
            .map(|d| String::from_utf8_lossy(d.payload()).into_owned())
            .collect();
        assert!(old.is_empty(), "committed messages came again: {old:?}");
    }
    let producer = b.producer().await.expect("producer");
    producer
        .send(&topic, Message::new("after"))
        .await
        .expect("send after");
    let d = common::receive_within(&mut fresh, Duration::from_secs(30), "the new message").await;
    assert_eq!(d.payload().as_ref(), b"after");
    d.ack().await.expect("ack");
    fresh.close().await.expect("close");
}

/// Clients naming the same cluster share it while one of them is alive;
/// different names are different clusters; the cluster stops with its last
/// client, and the name then starts a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_url_same_name_shares_one_cluster() {
    let name = unique("shared");
    let (one, _) = MockCluster::open(&url(&name)).await.expect("one");
    let (two, config) = MockCluster::open(&url(&name)).await.expect("two");
    assert_eq!(one.bootstrap_servers(), two.bootstrap_servers());
    assert_eq!(config.brokers, [one.bootstrap_servers()]);
    let (other, _) = MockCluster::open(&url(&unique("other")))
        .await
        .expect("other");
    assert_ne!(one.bootstrap_servers(), other.bootstrap_servers());
    let e = MockCluster::open(&format!("kafka+mock://{name}?brokers=3"))
        .await
        .expect_err("same name, other broker count");
    assert_eq!(e.kind(), mq_core::ErrorKind::Config, "{e}");

    // A message sent through one client arrives through another.
    let topic = unique("topic");
    let a = mq_kafka::connect(&url(&name)).await.expect("a");
    let b = mq_kafka::connect(&url(&name)).await.expect("b");
    let mut consumer = b.consumer(&topic).await.expect("consumer");
    a.producer()
        .await
        .expect("producer")
        .send(&topic, Message::new("hello"))
        .await
        .expect("send");
    let d = common::receive_within(&mut consumer, Duration::from_secs(30), "hello").await;
    assert_eq!(d.payload().as_ref(), b"hello");
    d.ack().await.expect("ack");
    consumer.close().await.expect("close");
    drop((consumer, a, b));

    // The last handle goes: the cluster's thread stops and the listener
    // closes; the name starts a fresh cluster.
    let address = one.bootstrap_servers().to_owned();
    drop((one, two));
    common::wait_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        async || match std::net::TcpStream::connect(&address) {
            Ok(_) => Err(format!("{address} still listens")),
            Err(_) => Ok(()),
        },
    )
    .await;
    let (again, _) = MockCluster::open(&url(&name)).await.expect("again");
    assert!(!again.bootstrap_servers().is_empty());
}
