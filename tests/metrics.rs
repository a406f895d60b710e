//! Metrics after a run with one retry and one dead letter, on `memory://`.
//!
//! Its own test binary: tracing's callsite cache is process-wide, so this
//! test's spans (recorded with no subscriber) must not share a process with
//! the trace-propagation test in `observability.rs`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::MetricKind;
use mq::middleware::{RetryLayer, RetryPolicy};
use mq::observe::names;
use mq::{CancellationToken, Consumer, HandlerError, Message, Producer, Received, Worker};

fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

/// Runs `f` on a single-threaded runtime, so thread-local subscribers and
/// recorders see every task.
fn on_one_thread<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

#[test]
fn metrics_count_sends_settlements_retries_and_dead_letters() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let queue = unique("metered");
    metrics::with_local_recorder(&recorder, || {
        on_one_thread(async {
            let client = mq::connect(&format!("memory://{}", unique("metrics")))
                .await
                .expect("connect");
            let producer = client.producer().await.expect("producer");
            for payload in ["ok", "flaky", "poison"] {
                producer
                    .send(&queue, Message::new(payload))
                    .await
                    .expect("send");
            }
            let done = Arc::new(AtomicU32::new(0));
            let d = done.clone();
            let handler = move |m: Received| {
                let done = d.clone();
                async move {
                    let outcome = match (m.text()?, m.attempt()) {
                        ("flaky", 1) => Err(HandlerError::transient("flaky once")),
                        ("poison", _) => Err(HandlerError::transient("always down")),
                        _ => Ok(()),
                    };
                    done.fetch_add(1, Ordering::SeqCst);
                    outcome
                }
            };
            let consumer = client.consumer(&queue).await.expect("consumer");
            let token = CancellationToken::new();
            let policy = RetryPolicy::immediate().max_attempts(2);
            let worker = tokio::spawn(
                Worker::new(consumer, handler)
                    .layer(RetryLayer::new(policy))
                    .run(token.clone()),
            );
            let mut dlq = client
                .consumer(client.dead_letter_destination(&queue))
                .await
                .expect("dlq");
            let dead = tokio::time::timeout(Duration::from_secs(10), dlq.receive())
                .await
                .expect("dead letter within 10s")
                .expect("receive");
            while done.load(Ordering::SeqCst) < 5 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            token.cancel();
            worker.await.expect("join").expect("worker");
            dead.ack().await.expect("ack dead letter");
            // A delivery dropped unsettled goes back and is counted abandoned.
            producer
                .send(&queue, Message::new("dropped"))
                .await
                .expect("send");
            let mut consumer = client.consumer(&queue).await.expect("consumer");
            drop(consumer.receive().await.expect("receive"));
            let again = consumer.receive().await.expect("redelivered");
            assert_eq!(again.text().expect("text"), "dropped");
            again.ack().await.expect("ack");
        })
    });

    let snapshot = snapshotter.snapshot().into_vec();
    let value = |name: &str, source: &str| -> u64 {
        snapshot
            .iter()
            .filter(|(key, _, _, _)| {
                key.key().name() == name
                    && key.key().labels().any(|l| {
                        (l.key() == "source" || l.key() == "destination") && l.value() == source
                    })
            })
            .map(|(key, _, _, v)| match v {
                DebugValue::Counter(c) => *c,
                DebugValue::Histogram(h) if key.kind() == MetricKind::Histogram => h.len() as u64,
                _ => 0,
            })
            .sum()
    };
    assert_eq!(value(names::SENT, &queue), 4, "sent");
    assert_eq!(
        value(names::RECEIVED, &queue),
        7,
        "received: ok once, flaky twice, poison twice, dropped twice"
    );
    assert_eq!(
        value(names::ACKED, &queue),
        3,
        "acked: ok, flaky, dropped the second time"
    );
    assert_eq!(
        value(names::ABANDONED, &queue),
        1,
        "abandoned: dropped once"
    );
    assert_eq!(
        value(names::NACKED, &queue),
        2,
        "nacked: first attempts of flaky and poison"
    );
    assert_eq!(
        value(names::DEAD_LETTERED, &queue),
        1,
        "dead-lettered: poison"
    );
    assert_eq!(value(names::RETRIES, &queue), 2, "retries scheduled");
    assert_eq!(
        value(names::HANDLER_DURATION, &queue),
        5,
        "one duration per handler run"
    );
    let dlq = format!("{queue}-dlq");
    assert_eq!(
        value(names::ACKED, &dlq),
        1,
        "the dead letter was read and acked"
    );
    assert!(
        snapshot
            .iter()
            .all(|(k, _, _, _)| k.key().labels().all(|l| l.key() != "url")),
        "no URL in labels"
    );
}

/// A send that must wait (a full memory:// queue: `SendNow::Started`) is
/// counted when it ends, with its wait in the duration histogram; the count
/// rides on the backend's future (`mq::Sending`), with no subscriber
/// recording spans.
#[test]
fn a_send_that_waits_is_counted_when_it_ends() {
    use mq::ProducerExt;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let queue = unique("waits");
    metrics::with_local_recorder(&recorder, || {
        on_one_thread(async {
            let client = mq::connect(&format!("memory://{}?capacity=1", unique("metrics")))
                .await
                .expect("connect");
            let producer = client.producer().await.expect("producer");
            let mut consumer = client.consumer(&queue).await.expect("consumer");
            let mut pipeline = producer.pipeline(4);
            pipeline.send(&queue, Message::new("first")).await;
            pipeline.send(&queue, Message::new("second")).await;
            assert_eq!(pipeline.in_flight(), 1, "the second send waits for room");
            tokio::time::sleep(Duration::from_millis(20)).await;
            let first = consumer.receive().await.expect("receive");
            first.ack().await.expect("ack");
            let report = pipeline.finish().await;
            assert!(report.failures.is_empty(), "{report:?}");
            assert_eq!(report.sent, 2);
            let second = consumer.receive().await.expect("receive");
            assert_eq!(second.text().expect("text"), "second");
            second.ack().await.expect("ack");
        })
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let of = |name: &str| {
        snapshot
            .iter()
            .filter(|(key, _, _, _)| {
                key.key().name() == name
                    && key
                        .key()
                        .labels()
                        .any(|l| l.key() == "destination" && l.value() == queue)
            })
            .map(|(_, _, _, v)| v)
            .collect::<Vec<_>>()
    };
    assert!(
        matches!(of(names::SENT).as_slice(), [DebugValue::Counter(2)]),
        "both sends counted: {:?}",
        of(names::SENT)
    );
    let durations = of(names::SEND_DURATION);
    let [DebugValue::Histogram(d)] = durations.as_slice() else {
        panic!("one histogram: {durations:?}");
    };
    assert_eq!(d.len(), 2, "two durations: {d:?}");
    assert!(
        d.iter().any(|s| s.into_inner() >= 0.015),
        "the waiting send's duration shows its wait: {d:?}"
    );
}
