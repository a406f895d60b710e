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
    match stress_copies() {
        1 => run_suite(target).await,
        n => {
            eprintln!("stress mode: {n} suites at once against {}", target.backend);
            run_stress(target, n).await
        }
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
    backend: &str,
    env: &str,
    feature_on: bool,
) -> Result<(Target, Option<containers::Broker>), String> {
    if !feature_on {
        return Err(format!(
            "not built: cargo feature `{}` is off",
            backend_feature(backend)
        ));
    }
    if !mq::registry()
        .schemes()
        .any(|s| backend_schemes(backend).contains(&s))
    {
        return Err(format!(
            "not built: feature `{}` is on but this version has no {backend} backend yet",
            backend_feature(backend)
        ));
    }
    if let Ok(why) = std::env::var(format!("MQ_TEST_{env}_SKIP")) {
        return Err(format!("skipped on purpose (MQ_TEST_{env}_SKIP): {why}"));
    }
    let restart = std::env::var(format!("MQ_TEST_{env}_RESTART")).ok();
    let restart_url = std::env::var(format!("MQ_TEST_{env}_RESTART_URL")).ok();
    if let Ok(url) = std::env::var(format!("MQ_TEST_{env}_URL")) {
        let target = Target::new(backend, url, mq::registry())
            .with_restart_command(restart)
            .with_restart_url(restart_url);
        return Ok((target, None));
    }
    if !containers::docker_available() {
        return Err(format!(
            "MQ_TEST_{env}_URL is not set and no Docker engine answers; \
             start the broker with `scripts/brokers.sh start` and export what it prints"
        ));
    }
    // A container: its restart command restarts the container (same host
    // port); without one (see the `containers ...` line) the restart
    // scenario reports itself skipped.
    let broker = containers::start_broker(backend).await?;
    let target = Target::new(backend, broker.url.clone(), mq::registry())
        .with_restart_command(broker.restart.clone());
    Ok((target, Some(broker)))
}

fn backend_schemes(backend: &str) -> &'static [&'static str] {
    match backend {
        "rabbitmq" => &["amqp", "amqps"],
        "kafka" => &["kafka"],
        _ => &["sqs", "sqs+http"],
    }
}

fn backend_feature(backend: &str) -> &'static str {
    match backend {
        "rabbitmq" => "rabbit",
        "kafka" => "kafka",
        _ => "sqs",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_memory() {
    let url = format!("memory://conformance-{}", uuid::Uuid::new_v4().simple());
    finish(run(Target::new("memory", url, mq::registry())).await);
}

async fn broker_suite(backend: &str, env: &str, feature_on: bool) {
    match broker_target(backend, env, feature_on).await {
        Ok((target, _container)) => finish(run(target).await),
        Err(why) => skipped(backend, &why),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_rabbitmq() {
    broker_suite("rabbitmq", "RABBIT", cfg!(feature = "rabbit")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_kafka() {
    broker_suite("kafka", "KAFKA", cfg!(feature = "kafka")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_sqs() {
    broker_suite("sqs", "SQS", cfg!(feature = "sqs")).await;
}
