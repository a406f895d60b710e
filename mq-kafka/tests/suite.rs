//! The conformance suite against `MQ_TEST_KAFKA_URL`, from this crate alone
//! (the root `tests/conformance.rs` runs it through the `mq` facade).
//! Ignored by default so `cargo test --workspace` runs the suite once:
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
        .with_restart_command(std::env::var("MQ_TEST_KAFKA_RESTART").ok());
    let report = run_suite(target).await;
    eprintln!("{}", report.summary());
    assert_eq!(
        report.failed(),
        0,
        "failed scenarios:\n{}",
        report.failures()
    );
}
