//! The worker runtime and its layers end to end on `memory://`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mq::middleware::{DedupLayer, MemoryDedupStore, RetryLayer, RetryPolicy, TimeoutLayer};
use mq::{
    headers, BoxHandler, CancellationToken, Client, Consumer, Handler, HandlerError, Layer,
    Message, Producer, Received, Worker,
};
use parking_lot::Mutex;

fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

async fn client() -> Client {
    mq::connect(&format!("memory://{}", unique("worker-test")))
        .await
        .expect("connect")
}

async fn send_n(client: &Client, dest: &str, n: usize) -> Vec<String> {
    let producer = client.producer().await.expect("producer");
    let msgs: Vec<Message> = (0..n).map(|i| Message::new(format!("job {i}"))).collect();
    let ids = msgs.iter().map(|m| m.id().to_owned()).collect();
    producer
        .send_batch(dest, msgs)
        .await
        .into_result()
        .expect("send");
    ids
}

/// Waits until `cond` holds, polling; fails the test after 10 s.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Drains `source` with a plain consumer, acking; returns the ids seen.
async fn drain(client: &Client, source: &str) -> Vec<Received> {
    let mut consumer = client.consumer(source).await.expect("consumer");
    let mut out = Vec::new();
    loop {
        let batch = consumer
            .receive_batch(100, Duration::from_millis(200))
            .await
            .expect("receive");
        if batch.is_empty() {
            return out;
        }
        for d in batch {
            out.push(d.received().clone());
            d.ack().await.expect("ack");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_and_loses_nothing() {
    let client = client().await;
    let dest = unique("jobs");
    let ids = send_n(&client, &dest, 40).await;
    let done = Arc::new(Mutex::new(Vec::new()));
    let started = Arc::new(AtomicU32::new(0));
    let (d, s) = (done.clone(), started.clone());
    let handler = move |m: Received| {
        let (done, started) = (d.clone(), s.clone());
        async move {
            started.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(200)).await;
            done.lock().push(m.id().to_owned());
            Ok(())
        }
    };
    let consumer = client.consumer(&dest).prefetch(8).await.expect("consumer");
    let token = CancellationToken::new();
    let worker = tokio::spawn(
        Worker::new(consumer, handler)
            .concurrency(8)
            .shutdown_grace(Duration::from_secs(5))
            .run(token.clone()),
    );
    eventually("handlers to start", || started.load(Ordering::SeqCst) >= 8).await;
    token.cancel();
    let report = worker.await.expect("join").expect("worker");
    let finished = done.lock().clone();
    assert_eq!(
        report.received as usize,
        finished.len(),
        "every received message finished"
    );
    assert_eq!(report.acked, report.received);
    assert_eq!(report.abandoned, 0);
    assert!(
        finished.len() >= 8 && finished.len() < 40,
        "stopped early: {}",
        finished.len()
    );

    let rest = drain(&client, &dest).await;
    let mut all: Vec<String> = finished;
    all.extend(rest.iter().map(|r| r.id().to_owned()));
    all.sort();
    let mut expected = ids;
    expected.sort();
    assert_eq!(
        all, expected,
        "every message handled exactly once across the two runs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_past_the_grace_period_are_redelivered() {
    let client = client().await;
    let dest = unique("jobs");
    let ids = send_n(&client, &dest, 3).await;
    let started = Arc::new(AtomicU32::new(0));
    let s = started.clone();
    let handler = move |_m: Received| {
        let started = s.clone();
        async move {
            started.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        }
    };
    let consumer = client.consumer(&dest).await.expect("consumer");
    let token = CancellationToken::new();
    let worker = tokio::spawn(
        Worker::new(consumer, handler)
            .concurrency(3)
            .shutdown_grace(Duration::from_millis(100))
            .run(token.clone()),
    );
    eventually("handlers to start", || started.load(Ordering::SeqCst) == 3).await;
    token.cancel();
    let report = worker.await.expect("join").expect("worker");
    assert_eq!(report.abandoned, 3);
    assert_eq!(report.acked, 0);
    let again = drain(&client, &dest).await;
    let mut got: Vec<_> = again.iter().map(|r| r.id().to_owned()).collect();
    got.sort();
    let mut expected = ids;
    expected.sort();
    assert_eq!(got, expected);
    assert!(
        again.iter().all(|r| r.attempt() == 2),
        "redelivered as attempt 2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_retried_and_the_worker_survives() {
    let client = client().await;
    let dest = unique("jobs");
    send_n(&client, &dest, 5).await;
    let ok = Arc::new(AtomicU32::new(0));
    let o = ok.clone();
    let handler = move |m: Received| {
        let ok = o.clone();
        async move {
            if m.attempt() == 1 {
                panic!("boom on first attempt of {}", m.id());
            }
            ok.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    };
    let consumer = client.consumer(&dest).await.expect("consumer");
    let token = CancellationToken::new();
    let worker = tokio::spawn(
        Worker::new(consumer, handler)
            .concurrency(2)
            .run(token.clone()),
    );
    eventually("all five to succeed", || ok.load(Ordering::SeqCst) == 5).await;
    token.cancel();
    let report = worker.await.expect("join").expect("worker");
    assert_eq!(report.nacked, 5, "each panic nacked");
    assert_eq!(report.acked, 5);
}

/// A panic in a user's layer (outside the handler's own catch) unwinds the
/// handler's task: the delivery goes back to the broker and comes again, the
/// panic is counted, and the worker keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_layer_returns_the_message_and_the_worker_survives() {
    let client = client().await;
    let dest = unique("jobs");
    send_n(&client, &dest, 5).await;
    let ok = Arc::new(AtomicU32::new(0));
    let o = ok.clone();
    let handler = move |_m: Received| {
        let ok = o.clone();
        async move {
            ok.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    };
    let panicky = mq::layer_fn(|m: Received, next: BoxHandler| async move {
        if m.attempt() == 1 {
            panic!("layer boom on first attempt of {}", m.id());
        }
        next.call(m).await
    });
    let consumer = client.consumer(&dest).await.expect("consumer");
    let token = CancellationToken::new();
    let worker = Worker::new(consumer, handler).layer(panicky).concurrency(2);
    let stats = worker.stats();
    let worker = tokio::spawn(worker.run(token.clone()));
    eventually("all five to succeed", || ok.load(Ordering::SeqCst) == 5).await;
    eventually("five panics counted", || stats.snapshot().panics == 5).await;
    token.cancel();
    let report = worker.await.expect("join").expect("worker");
    assert_eq!(report.acked, 5);
    assert_eq!(report.panics, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_then_dead_letter_with_reason_headers() {
    let client = client().await;
    let dest = unique("orders");
    let producer = client.producer().await.expect("producer");
    producer
        .send(&dest, Message::new("flaky").with_id("flaky"))
        .await
        .expect("send");
    producer
        .send(&dest, Message::new("poison").with_id("poison"))
        .await
        .expect("send");
    producer
        .send(&dest, Message::new("invalid").with_id("invalid"))
        .await
        .expect("send");

    let attempts = Arc::new(Mutex::new(HashMap::<String, Vec<u32>>::new()));
    let a = attempts.clone();
    let handler = move |m: Received| {
        let attempts = a.clone();
        async move {
            attempts
                .lock()
                .entry(m.id().to_owned())
                .or_default()
                .push(m.attempt());
            match (m.text()?, m.attempt()) {
                ("flaky", 1 | 2) => Err(HandlerError::transient("flaky backend")),
                ("flaky", _) => Ok(()),
                ("invalid", _) => Err(HandlerError::permanent("invalid order")),
                _ => Err(HandlerError::transient("always down")),
            }
        }
    };
    let consumer = client.consumer(&dest).await.expect("consumer");
    let token = CancellationToken::new();
    let policy = RetryPolicy::exponential(Duration::from_millis(20))
        .without_jitter()
        .max_attempts(4);
    let worker = tokio::spawn(
        Worker::new(consumer, handler)
            .layer(RetryLayer::new(policy))
            .concurrency(3)
            .run(token.clone()),
    );
    let dlq = client.dead_letter_destination(&dest);
    assert_eq!(dlq, format!("{dest}-dlq"));
    let mut dlq_consumer = client.consumer(&dlq).await.expect("dlq consumer");
    let mut dead = HashMap::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(10), dlq_consumer.receive())
            .await
            .expect("dead letter within 10s")
            .expect("receive");
        dead.insert(d.id().to_owned(), d.received().clone());
        d.ack().await.expect("ack");
    }
    eventually("flaky to succeed", || {
        attempts.lock().get("flaky").map(Vec::len) == Some(3)
    })
    .await;
    token.cancel();
    let report = worker.await.expect("join").expect("worker");

    let attempts = attempts.lock().clone();
    assert_eq!(attempts["flaky"], [1, 2, 3]);
    assert_eq!(
        attempts["poison"],
        [1, 2, 3, 4],
        "retried up to max_attempts"
    );
    assert_eq!(attempts["invalid"], [1], "permanent errors are not retried");
    let poison = &dead["poison"];
    assert_eq!(
        poison.headers().get(headers::DEAD_LETTER_REASON),
        Some("gave up after 4 attempts: always down")
    );
    assert_eq!(
        poison.headers().get(headers::ORIGINAL_SOURCE),
        Some(dest.as_str())
    );
    assert_eq!(poison.headers().get(headers::ATTEMPT), Some("4"));
    assert_eq!(poison.payload().as_ref(), b"poison");
    assert_eq!(
        dead["invalid"].headers().get(headers::DEAD_LETTER_REASON),
        Some("invalid order")
    );
    assert_eq!(report.dead_lettered, 2);
    assert_eq!(report.acked, 1);
    assert_eq!(report.nacked, 2 + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_in_a_worker_runs_a_duplicate_once() {
    let client = client().await;
    let dest = unique("emails");
    let producer = client.producer().await.expect("producer");
    for _ in 0..3 {
        producer
            .send(&dest, Message::new("welcome").with_id("email-1"))
            .await
            .expect("send");
    }
    producer
        .send(&dest, Message::new("other").with_id("email-2"))
        .await
        .expect("send");
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let handler = move |_m: Received| {
        let runs = r.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    };
    let consumer = client.consumer(&dest).await.expect("consumer");
    let token = CancellationToken::new();
    let settled = Arc::new(AtomicU32::new(0));
    let worker = tokio::spawn(
        Worker::new(consumer, handler)
            .layer(Outcomes(settled.clone()))
            .layer(DedupLayer::new(MemoryDedupStore::new()))
            .layer(RetryLayer::new(RetryPolicy::immediate()))
            .run(token.clone()),
    );
    eventually("all four messages to be handled", || {
        settled.load(Ordering::SeqCst) == 4
    })
    .await;
    token.cancel();
    let report = worker.await.expect("join").expect("worker");
    assert_eq!(report.acked, 4, "duplicates are acked");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "the handler ran once per id"
    );
}

/// An outermost layer counting every outcome, duplicates included.
struct Outcomes(Arc<AtomicU32>);

impl Layer for Outcomes {
    fn layer(&self, inner: BoxHandler) -> BoxHandler {
        let count = self.0.clone();
        Arc::new(move |m: Received| {
            let (inner, count) = (inner.clone(), count.clone());
            async move {
                let result = inner.call(m).await;
                count.fetch_add(1, Ordering::SeqCst);
                result
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_attempt_times_out_and_is_retried() {
    let client = client().await;
    let dest = unique("jobs");
    send_n(&client, &dest, 1).await;
    let handler = |m: Received| async move {
        if m.attempt() == 1 {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Ok(())
    };
    let consumer = client.consumer(&dest).await.expect("consumer");
    let token = CancellationToken::new();
    let worker = tokio::spawn(
        Worker::new(consumer, handler)
            .layer(TimeoutLayer::new(Duration::from_millis(100)))
            .run(token.clone()),
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    token.cancel();
    let report = worker.await.expect("join").expect("worker");
    assert_eq!((report.nacked, report.acked), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_stats_count_every_outcome_while_the_worker_runs() {
    let client = client().await;
    let dest = unique("outcomes");
    let producer = client.producer().await.expect("producer");
    // ok, dup (same id as ok), flaky (fails once), bad (permanent), panic (once), slow (times out once).
    let kinds = ["ok", "ok", "flaky", "bad", "panic", "slow"];
    for (i, kind) in kinds.iter().enumerate() {
        // The two "ok" messages share an id: the second is a duplicate.
        let id = if i < 2 {
            "dup".to_owned()
        } else {
            format!("m{i}")
        };
        producer
            .send(&dest, Message::new(*kind).with_id(id))
            .await
            .expect("send");
    }
    let tries = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let t = tries.clone();
    let handler = move |m: Received| {
        let tries = t.clone();
        async move {
            let n = {
                let mut tries = tries.lock();
                let n = tries.entry(m.id().to_owned()).or_insert(0);
                *n += 1;
                *n
            };
            match (m.text()?, n) {
                ("flaky", 1) => Err(HandlerError::transient("flaky")),
                ("bad", _) => Err(HandlerError::permanent("bad input")),
                ("panic", 1) => panic!("boom"),
                ("slow", 1) => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(())
                }
                _ => Ok(()),
            }
        }
    };
    let worker = Worker::new(client.consumer(&dest).await.expect("consumer"), handler)
        .layer(DedupLayer::new(MemoryDedupStore::new()))
        .layer(RetryLayer::new(
            RetryPolicy::fixed(Duration::from_millis(10))
                .max_attempts(3)
                .in_process_attempts(3),
        ))
        .layer(TimeoutLayer::new(Duration::from_millis(300)));
    let stats = worker.stats();
    let token = CancellationToken::new();
    let running = tokio::spawn(worker.run(token.clone()));
    let live = tokio::time::timeout(
        Duration::from_secs(10),
        stats.wait_until(|r| r.acked + r.dead_lettered == 6),
    )
    .await
    .expect("every message settled within 10 s");
    token.cancel();
    let report = running.await.expect("join").expect("run");
    assert_eq!(report, stats.snapshot(), "the handle and the report agree");
    assert_eq!(live.received, 6);
    assert_eq!(live.acked, 5, "{live:?}");
    assert_eq!(live.duplicates, 1, "{live:?}");
    assert_eq!(live.dead_lettered, 1, "{live:?}");
    assert_eq!(live.panics, 1, "{live:?}");
    assert_eq!(live.timeouts, 1, "{live:?}");
    assert_eq!(
        live.retried_in_process, 3,
        "flaky, panic and slow once each: {live:?}"
    );
    assert_eq!(live.nacked, 0);
}

#[tokio::test]
async fn layer_fn_wraps_the_handler_without_boilerplate() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let layer = mq::layer_fn(move |m: Received, next: BoxHandler| {
        let seen = s.clone();
        async move {
            seen.lock().push(format!("before {}", m.id()));
            if m.id() == "skip" {
                return Ok(());
            }
            let result = next.call(m).await;
            seen.lock().push(format!("after ok={}", result.is_ok()));
            result
        }
    });
    let inner_calls = Arc::new(AtomicU32::new(0));
    let c = inner_calls.clone();
    let inner: BoxHandler = Arc::new(move |_m: Received| {
        c.fetch_add(1, Ordering::SeqCst);
        async { Err(HandlerError::transient("inner fails")) }
    });
    let handler = layer.layer(inner);
    let msg = |id: &str| Received::new("q", Message::new("x").with_id(id), 1);
    assert!(handler.call(msg("a")).await.is_err());
    assert!(handler.call(msg("skip")).await.is_ok());
    assert_eq!(inner_calls.load(Ordering::SeqCst), 1);
    assert_eq!(*seen.lock(), ["before a", "after ok=false", "before skip"]);
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Resize {
    photo: u64,
    width: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_worker_decodes_and_dead_letters_what_does_not_decode() {
    let client = client().await;
    let dest = unique("resize");
    let producer = client.producer().await.expect("producer");
    for i in 0..3u64 {
        producer
            .send(
                &dest,
                Message::json(&Resize {
                    photo: i,
                    width: 640,
                })
                .expect("json"),
            )
            .await
            .expect("send");
    }
    producer
        .send(&dest, Message::new("{not json").with_id("garbage"))
        .await
        .expect("send");
    let photos = Arc::new(Mutex::new(Vec::new()));
    let p = photos.clone();
    let worker = Worker::json(
        client.consumer(&dest).await.expect("consumer"),
        move |job: Resize, msg: Received| {
            let photos = p.clone();
            async move {
                assert_eq!(msg.content_type(), Some("application/json"));
                photos.lock().push((job.photo, job.width));
                Ok(())
            }
        },
    );
    let stats = worker.stats();
    let token = CancellationToken::new();
    let running = tokio::spawn(worker.run(token.clone()));
    let s = stats.clone();
    eventually("4 settled", move || {
        let r = s.snapshot();
        r.acked + r.dead_lettered == 4
    })
    .await;
    token.cancel();
    let report = running.await.expect("join").expect("run");
    assert_eq!((report.acked, report.dead_lettered), (3, 1));
    photos.lock().sort_unstable();
    assert_eq!(*photos.lock(), [(0, 640), (1, 640), (2, 640)]);
    let dead = drain(&client, &client.dead_letter_destination(&dest)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id(), "garbage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_runs_several_sources_with_one_shutdown_and_loses_nothing() {
    let client = client().await;
    let (emails, images) = (unique("emails"), unique("images"));
    let email_ids = send_n(&client, &emails, 200).await;
    let image_ids = send_n(&client, &images, 100).await;
    let handled = Arc::new(Mutex::new(Vec::new()));
    let route = |h: Arc<Mutex<Vec<String>>>| {
        move |m: Received| {
            let h = h.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                h.lock().push(m.id().to_owned());
                Ok(())
            }
        }
    };
    let router = mq::Router::new()
        .route(
            "emails",
            Worker::new(
                client.consumer(&emails).await.expect("c"),
                route(handled.clone()),
            )
            .concurrency(8),
        )
        .route(
            "images",
            Worker::new(
                client.consumer(&images).await.expect("c"),
                route(handled.clone()),
            ),
        );
    let live = router.stats();
    let token = CancellationToken::new();
    let running = tokio::spawn(router.run(token.clone()));
    eventually("both sources drained", move || {
        live.iter().map(|(_, s)| s.snapshot().acked).sum::<u64>() == 300
    })
    .await;
    token.cancel();
    let report = running.await.expect("join");
    assert!(report.is_ok());
    let names: Vec<&str> = report.routes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["emails", "images"]);
    assert_eq!(report.total().acked, 300);
    let mut got = handled.lock().clone();
    got.sort_unstable();
    let mut want: Vec<String> = email_ids.into_iter().chain(image_ids).collect();
    want.sort_unstable();
    assert_eq!(got, want, "every message handled exactly once");
}

#[tokio::test]
async fn router_stops_every_route_when_one_fails_permanently() {
    let client = client().await;
    let ok = unique("ok");
    let mut closed = client.consumer(unique("closed")).await.expect("consumer");
    closed.close().await.expect("close");
    let report = tokio::time::timeout(
        Duration::from_secs(10),
        mq::Router::new()
            .route(
                "ok",
                Worker::new(
                    client.consumer(&ok).await.expect("c"),
                    |_m: Received| async { Ok(()) },
                ),
            )
            .route(
                "closed",
                Worker::new(closed, |_m: Received| async { Ok(()) }),
            )
            .run(CancellationToken::new()),
    )
    .await
    .expect("the failing route stops the router without an external shutdown");
    assert!(!report.is_ok());
    assert!(
        report.routes[0].1.is_ok(),
        "the healthy route shut down gracefully"
    );
    assert!(report.routes[1].1.is_err());
}
