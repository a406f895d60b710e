//! The conformance suite against `MQ_TEST_KAFKA_URL`, from this crate alone
//! (the root `tests/conformance.rs` runs it through the `mq` facade).
//! The suite is ignored by default so `cargo test --workspace` runs it once:
//! `cargo test -p mq-kafka --test suite -- --ignored --nocapture`.

use mq_core::testkit::{run_suite, Target};
use mq_core::Registry;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a Kafka broker: MQ_TEST_KAFKA_URL"]
async fn conformance_kafka_direct() {
    let Ok(url) = std::env::var("MQ_TEST_KAFKA_URL") else {
        eprintln!("conformance kafka: skipped (MQ_TEST_KAFKA_URL is not set)");
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
    let Ok(url) = std::env::var("MQ_TEST_KAFKA_URL") else {
        eprintln!("missing topic: skipped (MQ_TEST_KAFKA_URL is not set)");
        return;
    };
    let mut config = mq_kafka::KafkaConfig::from_url(&url).expect("url");
    config.auto_create_topics = false;
    let backend = mq_kafka::KafkaBackend::new(config).expect("backend");
    let topic = format!("mqt-missing-{}", uuid::Uuid::now_v7().simple());
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
