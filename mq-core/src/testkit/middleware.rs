//! The worker and its layers on a real backend.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::support::*;
use super::{Ctx, Outcome, Verdict};
use crate::delivery::Received;
use crate::handler::HandlerError;
use crate::message::{headers, Message};
use crate::middleware::{DedupLayer, MemoryDedupStore, RetryLayer, RetryPolicy};
use crate::producer::{Producer, ProducerExt};
use crate::worker::{CancellationToken, Worker, WorkerReport};
use crate::{check, check_eq};

async fn stop(
    token: CancellationToken,
    worker: tokio::task::JoinHandle<crate::Result<WorkerReport>>,
) -> Result<WorkerReport, Verdict> {
    token.cancel();
    Ok(worker
        .await
        .map_err(|e| Verdict::Fail(format!("worker task: {e}")))??)
}

/// Scenario 10: The retry layer retries with backoff, then dead-letters with the
/// reason headers; the dead-letter destination is readable.
pub async fn retry_then_dead_letter(ctx: Ctx) -> Outcome {
    let dest = ctx.unique("jobs");
    let producer = ctx.client().producer().await?;
    let poison = Message::new("poison").with_header("tenant", "acme");
    producer.send(&dest, poison.clone()).await?;
    let seen = Seen::default();
    let s = seen.clone();
    let handler = move |m: Received| {
        s.record(&m);
        async { Err(HandlerError::transient("downstream unavailable")) }
    };
    let consumer = ctx.client().consumer(&dest).await?;
    let token = CancellationToken::new();
    let policy = RetryPolicy::fixed(Duration::from_millis(200)).max_attempts(3);
    let worker = tokio::spawn(
        Worker::new(consumer, handler)
            .layer(RetryLayer::new(policy))
            .run(token.clone()),
    );
    let dlq = ctx.client().dead_letter_destination(&dest);
    let mut dead = ctx.client().consumer(&dlq).await?;
    let d = receive_one(&mut dead, "dead-lettered message").await?;
    let report = stop(token, worker).await?;
    check_eq!(d.id(), poison.id(), "dead letter keeps the message id");
    check_eq!(
        d.payload(),
        poison.payload(),
        "dead letter keeps the payload"
    );
    check_eq!(
        d.headers().get("tenant"),
        Some("acme"),
        "dead letter keeps headers"
    );
    check_eq!(
        d.headers().get(headers::DEAD_LETTER_REASON),
        Some("gave up after 3 attempts: downstream unavailable"),
        "reason header"
    );
    check_eq!(
        d.headers().get(headers::ORIGINAL_SOURCE),
        Some(dest.as_str()),
        "source header"
    );
    check_eq!(
        d.headers().get(headers::ATTEMPT),
        Some("3"),
        "attempt header"
    );
    check_eq!(
        seen.attempts(poison.id()),
        vec![1, 2, 3],
        "handler attempts"
    );
    check_eq!(report.dead_lettered, 1, "worker report");
    d.ack().await?;
    Ok(())
}

/// Scenario 11: Dedup: a duplicate runs the handler once; after a crash mid-handler
/// the redelivery runs once the lease expires.
pub async fn dedup_runs_once_and_survives_a_crash(ctx: Ctx) -> Outcome {
    let dest = ctx.unique("emails");
    let producer = ctx.client().producer().await?;
    for _ in 0..2 {
        producer
            .send(&dest, Message::new("welcome").with_id("email-1"))
            .await?;
    }
    producer
        .send(&dest, Message::new("receipt").with_id("email-2"))
        .await?;
    let store = MemoryDedupStore::new();
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let handler = move |_m: Received| {
        r.fetch_add(1, Ordering::SeqCst);
        async { Ok(()) }
    };
    let outcomes = Outcomes::default();
    let consumer = ctx.client().consumer(&dest).await?;
    let token = CancellationToken::new();
    let worker = tokio::spawn(
        Worker::new(consumer, handler)
            .layer(outcomes.clone())
            .layer(DedupLayer::new(store.clone()))
            .run(token.clone()),
    );
    let all = eventually(ARRIVAL, || outcomes.ok() >= 3).await;
    let report = stop(token, worker).await?;
    check!(all, "only {} of 3 deliveries were handled", outcomes.ok());
    check_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "handler runs for 2 distinct ids"
    );
    check_eq!(report.acked, 3, "the duplicate is acked");

    // The crash: the handler hangs, the worker is stopped with no grace, so
    // the lease is never released and the message goes back unsettled.
    let dest = ctx.unique("crash");
    producer
        .send(&dest, Message::new("charge card").with_id("payment-1"))
        .await?;
    let lease = Duration::from_secs(2);
    let started = Arc::new(AtomicU32::new(0));
    let st = started.clone();
    let hangs = move |_m: Received| {
        st.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        }
    };
    let consumer = ctx.client().consumer(&dest).await?;
    let token = CancellationToken::new();
    let crashing = tokio::spawn(
        Worker::new(consumer, hangs)
            .layer(DedupLayer::new(store.clone()).lease(lease))
            .shutdown_grace(Duration::ZERO)
            .run(token.clone()),
    );
    check!(
        eventually(ARRIVAL, || started.load(Ordering::SeqCst) == 1).await,
        "the first attempt never started"
    );
    let report = stop(token, crashing).await?;
    check_eq!(report.abandoned, 1, "the hung handler is abandoned");

    let finished = Seen::default();
    let f = finished.clone();
    let completes = move |m: Received| {
        f.record(&m);
        async { Ok(()) }
    };
    let outcomes = Outcomes::default();
    let consumer = ctx.client().consumer(&dest).await?;
    let token = CancellationToken::new();
    let recovered_at = std::time::Instant::now();
    let worker = tokio::spawn(
        Worker::new(consumer, completes)
            .layer(outcomes.clone())
            .layer(DedupLayer::new(store).lease(lease))
            .run(token.clone()),
    );
    let ran = eventually(ARRIVAL, || !finished.is_empty()).await;
    stop(token, worker).await?;
    check!(ran, "the redelivery never ran after the lease expired");
    check!(
        recovered_at.elapsed() >= lease.mul_f32(0.5),
        "the redelivery ran after {:?}, while the crashed attempt's lease ({lease:?}) was still held",
        recovered_at.elapsed()
    );
    check_eq!(finished.len(), 1, "the redelivery ran exactly once");
    Ok(())
}

/// Scenario 14: Graceful shutdown: handlers in flight finish and are acked, nothing
/// is lost, the rest stays queued.
pub async fn graceful_shutdown_loses_nothing(ctx: Ctx) -> Outcome {
    const N: usize = 40;
    let dest = ctx.unique("shutdown");
    let producer = ctx.client().producer().await?;
    send_all(&*producer, &dest, numbered("s", N)).await?;
    let started = Arc::new(AtomicU32::new(0));
    let done = Seen::default();
    let (st, dn) = (started.clone(), done.clone());
    let handler = move |m: Received| {
        let (started, done) = (st.clone(), dn.clone());
        async move {
            started.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            done.record(&m);
            Ok(())
        }
    };
    let consumer = ctx.client().consumer(&dest).prefetch(4).await?;
    let token = CancellationToken::new();
    let worker = tokio::spawn(
        Worker::new(consumer, handler)
            .concurrency(4)
            .shutdown_grace(Duration::from_secs(30))
            .run(token.clone()),
    );
    check!(
        eventually(ARRIVAL, || started.load(Ordering::SeqCst) >= 4).await,
        "handlers never started"
    );
    let report = stop(token, worker).await?;
    let finished = done.all();
    check_eq!(
        report.received as usize,
        finished.len(),
        "every received message finished"
    );
    check_eq!(
        report.acked,
        report.received,
        "every finished message acked"
    );
    check_eq!(
        report.abandoned,
        0,
        "nothing abandoned within the grace period"
    );
    check!(
        finished.len() < N,
        "the worker should have stopped before draining all {N}"
    );

    let mut rest = ctx.client().consumer(&dest).await?;
    let (remaining, _) = collect_acked(&mut rest, N - finished.len()).await?;
    let mut ids: Vec<String> = finished.into_iter().map(|(id, _)| id).collect();
    ids.extend(remaining.iter().map(|r| r.id().to_owned()));
    ids.sort();
    ids.dedup();
    check_eq!(ids.len(), N, "every message handled or still queued");
    expect_nothing(
        &mut rest,
        Duration::from_millis(500),
        "acked during shutdown",
    )
    .await
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Invoice {
    number: u64,
    customer: String,
    lines: Vec<(String, f64)>,
}

/// Scenario 17: Typed JSON round trip; a payload that does not decode is
/// dead-lettered at once, without retries.
pub async fn json_round_trip_and_decode_failure(ctx: Ctx) -> Outcome {
    let dest = ctx.unique("invoices");
    let producer = ctx.client().producer().await?;
    let invoice = Invoice {
        number: 42,
        customer: "Z\u{fc}rich AG".into(),
        lines: vec![("widget".into(), 9.5), ("gadget".into(), 120.0)],
    };
    producer.send_json(&dest, &invoice).await?;
    let mut consumer = ctx.client().consumer(&dest).await?;
    let d = receive_one(&mut consumer, "JSON message").await?;
    check_eq!(
        d.content_type(),
        Some("application/json"),
        "content type recorded"
    );
    check_eq!(d.json::<Invoice>()?, invoice, "typed round trip");
    d.ack().await?;
    consumer.close().await?;

    let garbage = Message::new("{not json").with_content_type("application/json");
    producer.send(&dest, garbage.clone()).await?;
    let seen = Seen::default();
    let s = seen.clone();
    let handler = move |m: Received| {
        s.record(&m);
        async move {
            let _invoice: Invoice = m.json()?;
            Ok(())
        }
    };
    let consumer = ctx.client().consumer(&dest).await?;
    let token = CancellationToken::new();
    let worker = tokio::spawn(
        Worker::new(consumer, handler)
            .layer(RetryLayer::new(
                RetryPolicy::immediate()
                    .max_attempts(5)
                    .in_process_attempts(3),
            ))
            .run(token.clone()),
    );
    let mut dead = ctx
        .client()
        .consumer(ctx.client().dead_letter_destination(&dest))
        .await?;
    let d = receive_one(&mut dead, "undecodable message in the dead-letter queue").await?;
    let report = stop(token, worker).await?;
    check_eq!(
        d.id(),
        garbage.id(),
        "the undecodable message is dead-lettered"
    );
    let reason = d.headers().get(headers::DEAD_LETTER_REASON).unwrap_or("");
    check!(
        reason.contains("decode"),
        "reason names the decode failure: {reason:?}"
    );
    check_eq!(
        seen.attempts(garbage.id()),
        vec![1],
        "no retries for a decode failure"
    );
    check_eq!(report.dead_lettered, 1, "worker report");
    d.ack().await?;
    Ok(())
}
