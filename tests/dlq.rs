//! Dead-letter operations (issue 19) on every backend: the same steps
//! (`mq_core::testkit::dlq::dead_letter_operations`) on memory:// always,
//! and on each broker of `mq::BACKENDS` whose `MQ_TEST_<KEY>_URL` is set
//! (SQS also with `fifo=true`), plus Kafka's mock cluster. A backend that
//! cannot run prints why. Each prints one line of numbers:
//! `dlq <backend>: dead-lettered 50 ..., replayed 20 at 10/s in 1.9 s, ...`.

use std::io::Write;

use mq_core::testkit::dlq::dead_letter_operations;
use mq_core::testkit::Target;

fn announce(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

async fn run(target: Target) -> Result<(), String> {
    match dead_letter_operations(&target).await {
        Ok(numbers) => {
            announce(&numbers.to_string());
            Ok(())
        }
        Err(why) => {
            let msg = format!("dlq {}: FAILED: {why}", target.backend);
            announce(&msg);
            Err(msg)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dlq_memory() {
    let url = format!("memory://dlq-{}", uuid::Uuid::new_v4().simple());
    if let Err(e) = run(Target::new("memory", url, mq::registry())).await {
        panic!("{e}");
    }
}

/// Adds `option` to `url`'s query.
fn with_option(url: &str, option: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{option}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dlq_brokers() {
    let mut failures = Vec::new();
    for known in mq::BACKENDS {
        let Some(driver) = known.driver else {
            announce(&format!(
                "dlq {}: skipped (cargo feature `{}` is off)",
                known.feature, known.feature
            ));
            continue;
        };
        if let Ok(filter) = std::env::var("MQ_TEST_DLQ_ONLY") {
            if !driver.name.contains(&filter) {
                continue;
            }
        }
        let Ok(url) = std::env::var(driver.test_url_var()) else {
            announce(&format!(
                "dlq {}: skipped ({} is not set; `scripts/brokers.sh start {}` prints it)",
                driver.name,
                driver.test_url_var(),
                driver.test_broker
            ));
            continue;
        };
        let mut targets = vec![Target::new(driver.name, url.clone(), mq::registry())];
        if driver.name == "sqs" {
            targets.push(Target::new(
                "sqs fifo",
                with_option(&url, "fifo=true"),
                mq::registry(),
            ));
        }
        for target in targets {
            if let Err(e) = run(target).await {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dlq_kafka_mock() {
    if !cfg!(feature = "kafka") {
        announce("dlq kafka+mock: skipped (cargo feature `kafka` is off)");
        return;
    }
    let url = format!(
        "kafka+mock://dlq-{}?partitions=4&session_timeout=6s&heartbeat=500ms",
        uuid::Uuid::new_v4().simple()
    );
    if let Err(e) = run(Target::new("kafka+mock", url, mq::registry())).await {
        panic!("{e}");
    }
}
