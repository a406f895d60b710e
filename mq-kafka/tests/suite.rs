//! The conformance suite against `MQ_TEST_KAFKA_URL`, from this crate alone
//! (the root `tests/conformance.rs` runs it through the `mq` facade).
//! The suite is ignored by default so `cargo test --workspace` runs it once:
//! `cargo test -p mq-kafka --test suite -- --ignored --nocapture`.

mod common;

use common::{broker_url, unique, wait_until};
use mq_core::testkit::{run_suite, Target};
use mq_core::Registry;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a Kafka broker: MQ_TEST_KAFKA_URL"]
async fn conformance_kafka_direct() {
    let Some(url) = broker_url("conformance kafka") else {
        return;
    };
    let mut registry = Registry::with_memory();
    mq_kafka::register(&mut registry);
    let target = Target::new("kafka", url, registry)
        .with_restart_command(std::env::var("MQ_TEST_KAFKA_RESTART").ok())
        .with_restart_url(std::env::var("MQ_TEST_KAFKA_RESTART_URL").ok());
    let report = run_suite(target).await;
    eprintln!("{}", report.summary());
    assert_eq!(
        report.failed(),
        0,
        "failed scenarios:\n{}",
        report.failures()
    );
}

/// With `auto_create_topics=false`, a send to or a consumer of a missing
/// topic is a `NotFound` error naming it (on a broker that does not create
/// topics itself, such as tansu). Runs whenever `MQ_TEST_KAFKA_URL` is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_topic_is_not_found_without_auto_creation() {
    let Some(url) = broker_url("missing topic") else {
        return;
    };
    let mut config = mq_kafka::KafkaConfig::from_url(&url).expect("url");
    config.auto_create_topics = false;
    let backend = mq_kafka::KafkaBackend::new(config).expect("backend");
    let topic = unique("missing");
    let err = mq_core::Producer::send(
        &backend.kafka_producer(),
        &topic,
        mq_core::Message::new("x"),
    )
    .await
    .expect_err("missing topic");
    assert_eq!(err.kind(), mq_core::ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains(&topic), "{err}");
    let err = backend
        .kafka_consumer(mq_core::ConsumerOptions::new(topic.clone()))
        .await
        .expect_err("missing topic");
    assert_eq!(err.kind(), mq_core::ErrorKind::NotFound, "{err}");
}

/// A consumer whose application falls behind for longer than the pause
/// threshold (its read-ahead full, the partitions paused) and then catches
/// up gets every record exactly as sent: nothing is skipped across the
/// pause and resume. Runs whenever `MQ_TEST_KAFKA_URL` is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_full_read_ahead_pauses_and_loses_nothing() {
    use mq_core::{Consumer, Producer};
    use std::collections::HashSet;
    use std::time::Duration;

    let Some(url) = broker_url("read-ahead pause") else {
        return;
    };
    const TOTAL: usize = 3_000;
    let config = mq_kafka::KafkaConfig::from_url(&url).expect("url");
    let backend = mq_kafka::KafkaBackend::new(config).expect("backend");
    let topic = unique("readahead");
    let producer = backend.kafka_producer();
    let report = producer
        .send_batch(
            &topic,
            (0..TOTAL)
                .map(|i| mq_core::Message::new(format!("r{i}")))
                .collect(),
        )
        .await;
    assert_eq!(report.sent(), TOTAL, "every record confirmed");
    // Prefetch 10: the read-ahead (500 records) fills at once.
    let mut consumer = backend
        .kafka_consumer(mq_core::ConsumerOptions::new(topic.clone()).prefetch(10))
        .await
        .expect("consumer");
    let held = consumer
        .receive_batch(10, Duration::from_secs(30))
        .await
        .expect("first deliveries");
    assert!(!held.is_empty(), "nothing arrived");
    // Fall behind for longer than the pause threshold (1 s).
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let mut seen = HashSet::new();
    for d in held {
        seen.insert(d.text().expect("text").to_owned());
        d.ack().await.expect("ack");
    }
    wait_until(Duration::from_secs(60), Duration::ZERO, async || {
        let missing: Vec<usize> = (0..TOTAL)
            .filter(|i| !seen.contains(&format!("r{i}")))
            .take(5)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        for d in consumer
            .receive_batch(10, Duration::from_secs(1))
            .await
            .expect("receive")
        {
            seen.insert(d.text().expect("text").to_owned());
            d.ack().await.expect("ack");
        }
        Err(format!(
            "{} of {TOTAL} arrived; missing e.g. {missing:?}",
            seen.len()
        ))
    })
    .await;
    consumer.close().await.expect("close");
}
