//! `client.stats(..)` and `client.health()` against the real brokers.
//!
//! memory:// always runs. A broker backend runs when its cargo feature is on
//! and `MQ_TEST_<BACKEND>_URL` names a running broker (`scripts/brokers.sh
//! env` prints them); otherwise the test says why it skipped and passes.
//! Every test uses fresh, uniquely named destinations.
//!
//! `rabbit_health_across_a_broker_restart` restarts RabbitMQ with
//! `MQ_TEST_RABBIT_RESTART`: it is `#[ignore]`d so that it never runs while
//! other suites use the broker; run it alone with
//! `cargo test --test stats --all-features -- --ignored`.

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use mq::{Client, Consumer, ErrorKind, Message, Producer, QueueStats};

fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

/// The broker URL in `var`, or `None` after saying why the test skips.
#[allow(dead_code)]
fn url(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            // Past the harness's output capture, so the skip shows in every run.
            let _ = writeln!(
                std::io::stderr(),
                "{test}: skipped ({var} is not set; `scripts/brokers.sh env` prints it)"
            );
            None
        }
    }
}

/// Polls `client.stats(source, group)` until `done` holds or `within`
/// passes; returns the last answer (the caller's assertions then say what
/// was wrong).
#[allow(dead_code)]
async fn stats_until(
    client: &Client,
    source: &str,
    group: Option<&str>,
    within: Duration,
    done: impl Fn(&QueueStats) -> bool,
) -> QueueStats {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let stats = client
            .stats(source, group)
            .await
            .unwrap_or_else(|e| panic!("stats of {source}: {e}"));
        if done(&stats) || tokio::time::Instant::now() >= deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Fails the test if `f` takes longer than `limit`.
#[allow(dead_code)]
async fn within<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {limit:?}"))
}

async fn send_n(producer: &mq::DynProducer, destination: &str, n: usize) {
    for i in 0..n {
        producer
            .send(destination, Message::new(format!("m{i}")))
            .await
            .unwrap_or_else(|e| panic!("send {i} to {destination}: {e}"));
    }
}

#[tokio::test]
async fn memory_stats_and_health() {
    let client = mq::connect(&format!("memory://{}", unique("stats")))
        .await
        .expect("connect");
    let queue = unique("stats");
    let producer = client.producer().await.expect("producer");
    let mut consumer = client.consumer(&queue).await.expect("consumer");
    send_n(&producer, &queue, 5).await;
    let stats = client.stats(&queue, None).await.expect("stats");
    assert_eq!((stats.depth, stats.in_flight), (Some(5), Some(0)));
    let held = consumer.receive().await.expect("receive");
    let stats = client.stats(&queue, None).await.expect("stats");
    assert_eq!((stats.depth, stats.in_flight), (Some(4), Some(1)));
    held.ack().await.expect("ack");
    let missing = client.stats(&unique("missing"), None).await;
    assert_eq!(
        missing.err().map(|e| e.kind()),
        Some(ErrorKind::NotFound),
        "a missing queue"
    );
    assert!(client.health().connected);
}

#[cfg(feature = "rabbit")]
mod rabbit {
    use super::*;

    const N: usize = 10;
    const HELD: usize = 3;

    #[tokio::test]
    async fn rabbit_stats_and_health() {
        let Some(url) = url("MQ_TEST_RABBIT_URL", "rabbit_stats_and_health") else {
            return;
        };
        within(Duration::from_secs(30), "the RabbitMQ stats test", async {
            let client = mq::connect(&url).await.expect("connect");
            let dest = unique("stats");
            let producer = client.producer().await.expect("producer");
            send_n(&producer, &dest, N).await;

            let stats = stats_until(&client, &dest, None, Duration::from_secs(5), |s| {
                s.depth == Some(N as u64)
            })
            .await;
            eprintln!("rabbitmq {dest} after {N} sends: {stats:?}");
            assert_eq!(stats.depth, Some(N as u64), "{stats:?}");
            assert_eq!(stats.consumers, Some(0), "{stats:?}");
            assert_eq!(stats.in_flight, None, "AMQP does not report unacked");
            assert_eq!(stats.delayed, None, "no delay queue used yet");

            // The broker sends a consumer at most its prefetch: HELD
            // deliveries leave the ready count and stay unacked.
            let mut consumer = client
                .consumer(&dest)
                .prefetch(HELD)
                .await
                .expect("consumer");
            let mut held = Vec::new();
            for _ in 0..HELD {
                held.push(consumer.receive().await.expect("receive"));
            }
            let stats = stats_until(&client, &dest, None, Duration::from_secs(5), |s| {
                s.depth == Some((N - HELD) as u64)
            })
            .await;
            eprintln!("rabbitmq {dest} holding {HELD} unacked: {stats:?}");
            assert_eq!(stats.depth, Some((N - HELD) as u64), "{stats:?}");
            assert_eq!(stats.consumers, Some(1), "{stats:?}");

            // A delayed send waits in a delay queue this client declared.
            producer
                .send(
                    &dest,
                    Message::new("later").with_delay(Duration::from_secs(60)),
                )
                .await
                .expect("delayed send");
            let stats = stats_until(&client, &dest, None, Duration::from_secs(5), |s| {
                s.delayed == Some(1)
            })
            .await;
            eprintln!("rabbitmq {dest} with one delayed: {stats:?}");
            assert_eq!(stats.delayed, Some(1), "{stats:?}");
            assert_eq!(stats.depth, Some((N - HELD) as u64), "{stats:?}");

            // A group's queue is its own.
            let group_stats = client.stats(&dest, Some("nobody")).await;
            assert_eq!(
                group_stats.err().map(|e| e.kind()),
                Some(ErrorKind::NotFound),
                "a group never consumed has no queue"
            );
            let missing = client.stats(&unique("missing"), None).await;
            assert_eq!(
                missing.err().map(|e| e.kind()),
                Some(ErrorKind::NotFound),
                "a missing queue"
            );

            // A missing queue closes only the throwaway channel.
            let health = client.health();
            eprintln!("rabbitmq health: {health:?}");
            assert!(health.connected, "{health:?}");
            assert!(
                health.last_error.is_none() || health.reconnects > 0,
                "an error without an outage: {health:?}"
            );
            assert!(producer.health().connected);
            assert!(consumer.health().connected);
            send_n(&producer, &dest, 1).await;

            for d in held {
                d.ack().await.expect("ack");
            }
            consumer.close().await.expect("close");
            client.close().await.expect("close client");
            assert!(!client.health().connected, "closed");
        })
        .await;
    }

    /// Restarts the broker: run alone (`-- --ignored`), never while other
    /// suites use it.
    #[tokio::test]
    #[ignore = "restarts RabbitMQ (MQ_TEST_RABBIT_RESTART); run alone with --ignored"]
    async fn rabbit_health_across_a_broker_restart() {
        let test = "rabbit_health_across_a_broker_restart";
        let Some(url) = url("MQ_TEST_RABBIT_URL", test) else {
            return;
        };
        let Some(restart) = super::url("MQ_TEST_RABBIT_RESTART", test) else {
            return;
        };
        let client = mq::connect(&url).await.expect("connect");
        let dest = unique("restart-health");
        let producer = client.producer().await.expect("producer");
        send_n(&producer, &dest, 1).await;
        let before = client.health();
        assert!(before.connected, "{before:?}");
        assert_eq!(before.reconnects, 0, "{before:?}");

        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(&restart)
                .status()
        })
        .await
        .expect("join")
        .expect("run the restart command");
        assert!(status.success(), "restart command failed: {status}");

        // Nobody sends or receives: the client notices and reconnects alone.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut health = client.health();
        while !(health.connected && health.reconnects >= 1)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            health = client.health();
        }
        eprintln!("rabbitmq health after a restart: {health:?}");
        assert!(health.connected, "{health:?}");
        assert!(health.reconnects >= 1, "{health:?}");
        assert!(health.last_error.is_some(), "the outage is recorded");
        send_n(&producer, &dest, 1).await;
        let stats = client.stats(&dest, None).await.expect("stats");
        assert!(stats.depth.is_some(), "{stats:?}");
    }
}

#[cfg(feature = "sqs")]
mod sqs {
    use super::*;

    const N: usize = 10;
    const HELD: usize = 3;

    #[tokio::test]
    async fn sqs_stats_and_health() {
        let Some(url) = url("MQ_TEST_SQS_URL", "sqs_stats_and_health") else {
            return;
        };
        within(Duration::from_secs(30), "the SQS stats test", async {
            let client = mq::connect(&url).await.expect("connect");
            let queue = unique("stats");
            let producer = client.producer().await.expect("producer");
            send_n(&producer, &queue, N).await;

            let stats = stats_until(&client, &queue, None, Duration::from_secs(5), |s| {
                s.depth == Some(N as u64)
            })
            .await;
            eprintln!("sqs {queue} after {N} sends: {stats:?}");
            assert_eq!(stats.depth, Some(N as u64), "{stats:?}");
            assert_eq!(stats.in_flight, Some(0), "{stats:?}");
            assert_eq!(stats.delayed, Some(0), "{stats:?}");

            // Received and not deleted: not visible, i.e. in flight. The
            // consumer holds at most its prefetch, so exactly HELD.
            let mut consumer = client
                .consumer(&queue)
                .prefetch(HELD)
                .await
                .expect("consumer");
            let mut held = Vec::new();
            for _ in 0..HELD {
                held.push(consumer.receive().await.expect("receive"));
            }
            let stats = stats_until(&client, &queue, None, Duration::from_secs(5), |s| {
                s.in_flight == Some(HELD as u64)
            })
            .await;
            eprintln!("sqs {queue} holding {HELD}: {stats:?}");
            assert_eq!(stats.in_flight, Some(HELD as u64), "{stats:?}");
            assert_eq!(stats.depth, Some((N - HELD) as u64), "{stats:?}");

            // A delayed send is counted apart until it is due.
            producer
                .send(
                    &queue,
                    Message::new("later").with_delay(Duration::from_secs(60)),
                )
                .await
                .expect("delayed send");
            let stats = stats_until(&client, &queue, None, Duration::from_secs(5), |s| {
                s.delayed == Some(1)
            })
            .await;
            eprintln!("sqs {queue} with one delayed: {stats:?}");
            assert_eq!(stats.delayed, Some(1), "{stats:?}");

            let missing = unique("missing");
            for _ in 0..2 {
                // Twice: stats must not create the queue it looks at.
                let err = client.stats(&missing, None).await.err();
                assert_eq!(
                    err.map(|e| e.kind()),
                    Some(ErrorKind::NotFound),
                    "a missing queue"
                );
            }
            let grouped = client.stats(&queue, Some("g")).await.err();
            assert_eq!(grouped.map(|e| e.kind()), Some(ErrorKind::Unsupported));

            let health = client.health();
            eprintln!("sqs health: {health:?}");
            assert!(health.connected, "{health:?}");
            assert!(health.last_error.is_none(), "{health:?}");
            assert!(producer.health().connected);
            assert!(consumer.health().connected);

            for d in held {
                d.ack().await.expect("ack");
            }
            consumer.close().await.expect("close");
        })
        .await;
    }

    /// Nothing listens on the endpoint: requests fail to connect, health
    /// says so. Needs no broker, but runs with the others.
    #[tokio::test]
    async fn sqs_health_reports_an_unreachable_endpoint() {
        let Some(_) = url(
            "MQ_TEST_SQS_URL",
            "sqs_health_reports_an_unreachable_endpoint",
        ) else {
            return;
        };
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let url = format!(
            "sqs+http://test:test@127.0.0.1:{port}?region=us-east-1&max_attempts=1&connect_timeout=1s&timeout=2s"
        );
        let client = mq::connect(&url).await.expect("connect makes no request");
        assert!(client.health().connected, "no request failed yet");
        let err = within(
            Duration::from_secs(20),
            "stats on a dead endpoint",
            client.stats("anything", None),
        )
        .await
        .err();
        let kind = err.as_ref().map(|e| e.kind());
        assert!(
            matches!(kind, Some(ErrorKind::Connection | ErrorKind::Timeout)),
            "{err:?}"
        );
        let health = client.health();
        eprintln!("sqs health, endpoint down: {health:?}");
        assert!(!health.connected, "{health:?}");
        assert!(health.last_error.is_some(), "{health:?}");
        assert_eq!(health.reconnects, 0);
    }
}

#[cfg(feature = "kafka")]
mod kafka {
    use super::*;

    const N: usize = 12;
    const ACKED: usize = 5;

    fn lag_sum(stats: &QueueStats) -> Option<i64> {
        stats
            .lag
            .as_ref()
            .map(|l| l.iter().map(|(_, lag)| lag).sum())
    }

    #[tokio::test]
    async fn kafka_stats_and_health() {
        let Some(url) = url("MQ_TEST_KAFKA_URL", "kafka_stats_and_health") else {
            return;
        };
        within(Duration::from_secs(30), "the Kafka stats test", async {
            let client = mq::connect(&url).await.expect("connect");
            let topic = unique("stats");
            let group = unique("g");
            let producer = client.producer().await.expect("producer");
            send_n(&producer, &topic, N).await;

            // A group that never consumed lags by everything sent.
            let stats = stats_until(
                &client,
                &topic,
                Some(&group),
                Duration::from_secs(10),
                |s| s.depth == Some(N as u64),
            )
            .await;
            eprintln!("kafka {topic} group {group} after {N} sends: {stats:?}");
            assert_eq!(stats.depth, Some(N as u64), "{stats:?}");
            assert_eq!(lag_sum(&stats), Some(N as i64), "{stats:?}");
            // The default group (`mq-<topic>`) has not consumed either.
            let default = client.stats(&topic, None).await.expect("default group");
            assert_eq!(default.depth, Some(N as u64), "{default:?}");

            // Acked deliveries are committed (every commit_interval); the
            // rest, fetched or not, stay behind the committed offsets.
            let mut consumer = client
                .consumer(&topic)
                .group(&group)
                .await
                .expect("consumer");
            for _ in 0..ACKED {
                let d = consumer.receive().await.expect("receive");
                d.ack().await.expect("ack");
            }
            let remaining = (N - ACKED) as u64;
            let stats = stats_until(
                &client,
                &topic,
                Some(&group),
                Duration::from_secs(15),
                |s| s.depth == Some(remaining),
            )
            .await;
            eprintln!("kafka {topic} group {group} after {ACKED} acks: {stats:?}");
            assert_eq!(stats.depth, Some(remaining), "{stats:?}");
            assert_eq!(lag_sum(&stats), Some(remaining as i64), "{stats:?}");
            assert_eq!(stats.in_flight, None, "{stats:?}");

            let missing = client.stats(&unique("missing"), Some(&group)).await;
            assert_eq!(
                missing.err().map(|e| e.kind()),
                Some(ErrorKind::NotFound),
                "a missing topic"
            );

            let health = client.health();
            eprintln!("kafka health: {health:?}");
            assert!(health.connected, "{health:?}");
            assert!(producer.health().connected);
            assert!(consumer.health().connected);
            consumer.close().await.expect("close");
            assert!(client.health().connected, "closing is not an outage");
        })
        .await;
    }
}

#[cfg(feature = "kafka")]
mod kafka_down {
    use super::*;

    /// Nothing listens on the bootstrap address: librdkafka reports all
    /// brokers down, health says so.
    #[tokio::test]
    async fn kafka_health_reports_unreachable_brokers() {
        let test = "kafka_health_reports_unreachable_brokers";
        let Some(_) = url("MQ_TEST_KAFKA_URL", test) else {
            return;
        };
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let client = mq::connect(&format!("kafka://127.0.0.1:{port}?send_timeout=2s"))
            .await
            .expect("librdkafka connects lazily");
        let producer = client.producer().await.expect("producer");
        let sent = within(
            Duration::from_secs(20),
            "a send to a dead cluster",
            producer.send("anything", Message::new("x")),
        )
        .await;
        assert!(sent.is_err(), "nothing can take the message");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut health = client.health();
        while health.connected && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            health = client.health();
        }
        eprintln!("kafka health, brokers down: {health:?}");
        assert!(!health.connected, "{health:?}");
        assert!(health.last_error.is_some(), "{health:?}");
        assert!(!producer.health().connected);
    }
}
