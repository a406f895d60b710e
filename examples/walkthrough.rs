//! Walkthrough: the quickstart at length, with a hand-written observer layer
//! that prints every event as it happens.
//!
//! Run it with `cargo run -p mq-examples --example walkthrough`. It needs no broker: it uses
//! `memory://quickstart`, which lives inside this process.
//!
//! What happens:
//!
//! 1. A producer sends a batch of eight JSON jobs to the queue `jobs`, then
//!    sends job 2 a second time with the same message id (as a client would
//!    after a lost confirmation).
//! 2. A worker handles them, four at a time, behind two layers:
//!    `DedupLayer` (outermost: a message id already processed is acked
//!    without running the handler) and `RetryLayer` (exponential backoff from
//!    50 ms, at most 3 attempts).
//! 3. The `webhook` job fails transiently on its first attempt and succeeds
//!    when the broker redelivers it; the `fax` job fails permanently and is
//!    moved to the dead-letter queue `jobs-dlq`; the second copy of job 2 is
//!    suppressed.
//! 4. Once every outcome has been seen the worker is stopped gracefully, the
//!    dead-letter queue is read, and a summary is printed. The program exits
//!    with status 1 if anything did not go as described.

use std::collections::HashMap;
use std::error::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mq::middleware::{DedupLayer, MemoryDedupStore, RetryLayer, RetryPolicy};
use mq::{
    headers, BoxHandler, CancellationToken, Consumer, HandlerError, HandlerResult, Layer, Message,
    Producer, Received, Worker,
};
use serde::{Deserialize, Serialize};

/// The queue the jobs go to.
const QUEUE: &str = "jobs";
/// How long to wait for every expected outcome before giving up.
const DEADLINE: Duration = Duration::from_secs(10);

/// A job, sent as JSON.
#[derive(Debug, Serialize, Deserialize)]
struct Job {
    id: u32,
    kind: String,
    target: String,
}

/// What happened so far, shared by the handler, the observer layer and `main`.
struct Counters {
    started: Instant,
    /// Handler runs per message id.
    runs: Mutex<HashMap<String, u32>>,
    /// Handler runs that succeeded.
    processed: AtomicU64,
    /// Deliveries that failed transiently and go back to the broker.
    retried: AtomicU64,
    /// Deliveries that failed permanently and go to the dead-letter queue.
    dead_lettered: AtomicU64,
    /// Deliveries acked without the handler running (the dedup layer's work).
    duplicates: AtomicU64,
}

impl Counters {
    fn new() -> Self {
        Counters {
            started: Instant::now(),
            runs: Mutex::new(HashMap::new()),
            processed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
        }
    }

    fn runs_of(&self, id: &str) -> u32 {
        self.runs
            .lock()
            .map_or(0, |runs| runs.get(id).copied().unwrap_or(0))
    }

    fn count_run(&self, id: &str) -> u32 {
        match self.runs.lock() {
            Ok(mut runs) => {
                let n = runs.entry(id.to_owned()).or_default();
                *n += 1;
                *n
            }
            Err(_) => 0,
        }
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }

    /// Prints `event` with the time since the start.
    fn log(&self, event: std::fmt::Arguments<'_>) {
        println!("[{:>5} ms] {event}", self.started.elapsed().as_millis());
    }
}

/// The application's handler: what to do with one job.
async fn handle_job(msg: Received, counters: Arc<Counters>) -> HandlerResult {
    // A payload that is not a `Job` is a permanent error: `?` keeps the
    // decode error's classification, so it is dead-lettered, not retried.
    let job: Job = msg.json()?;
    let run = counters.count_run(msg.id());
    counters.log(format_args!(
        "handler: {} {} -> {} (delivery attempt {}, run {run})",
        msg.id(),
        job.kind,
        job.target,
        msg.attempt()
    ));
    tokio::time::sleep(Duration::from_millis(10)).await; // the "work"

    match job.kind.as_str() {
        // The webhook's endpoint is down the first time we try.
        "webhook" if msg.attempt() == 1 => Err(HandlerError::transient(format!(
            "{} did not answer (HTTP 503)",
            job.target
        ))),
        "email" | "resize" | "report" | "webhook" => {
            counters.processed.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        // No retry can make an unknown kind of job work.
        other => Err(HandlerError::permanent(format!(
            "unsupported job kind `{other}`"
        ))),
    }
}

/// An outermost layer that reports what the worker will do with each
/// delivery. Real applications do not need it (use tracing and metrics); it
/// is here to make the dedup and retry layers' decisions visible.
struct Observe(Arc<Counters>);

impl Layer for Observe {
    fn layer(&self, inner: BoxHandler) -> BoxHandler {
        let counters = self.0.clone();
        Arc::new(move |msg: Received| {
            let (inner, counters) = (inner.clone(), counters.clone());
            async move {
                let id = msg.id().to_owned();
                let runs_before = counters.runs_of(&id);
                let result = inner.call(msg).await;
                match &result {
                    Ok(()) if counters.runs_of(&id) == runs_before => {
                        counters.duplicates.fetch_add(1, Ordering::SeqCst);
                        counters.log(format_args!(
                            "worker:  {id} already processed: duplicate acked without running the handler"
                        ));
                    }
                    Ok(()) => counters.log(format_args!("worker:  {id} acked")),
                    Err(e) if e.is_permanent() => {
                        counters.dead_lettered.fetch_add(1, Ordering::SeqCst);
                        counters.log(format_args!("worker:  {id} dead-lettered: {e}"));
                    }
                    Err(e) => {
                        counters.retried.fetch_add(1, Ordering::SeqCst);
                        let delay = e.requested_delay().unwrap_or_default();
                        counters.log(format_args!(
                            "worker:  {id} nacked, redelivery in {delay:?}: {e}"
                        ));
                    }
                }
                result
            }
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let client = mq::connect("memory://quickstart").await?;
    println!(
        "connected to memory://quickstart ({} backend)",
        client.backend_name()
    );

    // 1. Produce: one batch of eight jobs, then a duplicate of job 2.
    let producer = client.producer().await?;
    let kinds = [
        ("email", "ada@example.com"),
        ("resize", "photos/2.jpg"),
        ("webhook", "https://hooks.example.com/orders"),
        ("report", "sales-2024-q4"),
        ("email", "grace@example.com"),
        ("fax", "+1-555-0100"),
        ("resize", "photos/7.jpg"),
        ("report", "inventory"),
    ];
    let mut batch = Vec::new();
    for (i, (kind, target)) in (1u32..).zip(kinds) {
        let job = Job {
            id: i,
            kind: kind.to_owned(),
            target: target.to_owned(),
        };
        // The message id is what the dedup layer keys on.
        batch.push(Message::json(&job)?.with_id(format!("job-{i}")));
    }
    let unique_jobs = batch.len() as u64;
    let report = producer.send_batch(QUEUE, batch).await;
    println!("sent {} of {unique_jobs} jobs to `{QUEUE}`", report.sent());
    report.into_result()?;

    let again = Job {
        id: 2,
        kind: "resize".to_owned(),
        target: "photos/2.jpg".to_owned(),
    };
    producer
        .send(QUEUE, Message::json(&again)?.with_id("job-2"))
        .await?;
    println!("sent job-2 again with the same message id");

    // 2. Consume: a worker with dedup, then retry, four handlers at once.
    let counters = Arc::new(Counters::new());
    let consumer = client.consumer(QUEUE).prefetch(4).await?;
    let handler = {
        let counters = counters.clone();
        move |msg: Received| handle_job(msg, counters.clone())
    };
    let worker = Worker::new(consumer, handler)
        .layer(Observe(counters.clone()))
        // A short lease: a duplicate that arrives while the original is still
        // running is redelivered after at most this long (default 30 s).
        .layer(DedupLayer::new(MemoryDedupStore::new()).lease(Duration::from_millis(500)))
        .layer(RetryLayer::new(
            RetryPolicy::exponential(Duration::from_millis(50))
                .without_jitter()
                .max_attempts(3),
        ))
        .concurrency(4)
        .shutdown_grace(Duration::from_secs(5));

    // 3. Stop the worker once every expected outcome has been seen.
    let shutdown = CancellationToken::new();
    let expected_processed = unique_jobs - 1; // all but the fax job
    let watch = {
        let (counters, shutdown) = (counters.clone(), shutdown.clone());
        async move {
            let deadline = Instant::now() + DEADLINE;
            let done = loop {
                let done = Counters::get(&counters.processed) >= expected_processed
                    && Counters::get(&counters.dead_lettered) >= 1
                    && Counters::get(&counters.duplicates) >= 1;
                if done || Instant::now() >= deadline {
                    break done;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            shutdown.cancel();
            done
        }
    };
    let (worker_result, all_seen) = tokio::join!(worker.run(shutdown.clone()), watch);
    let worker_report = worker_result?;
    if !all_seen {
        eprintln!(
            "error: not every expected outcome happened within {DEADLINE:?} \
             (processed {}/{expected_processed}, dead-lettered {}/1, duplicates suppressed {}/1)",
            Counters::get(&counters.processed),
            Counters::get(&counters.dead_lettered),
            Counters::get(&counters.duplicates),
        );
        std::process::exit(1);
    }
    counters.log(format_args!("worker stopped"));

    // 4. Read the dead-letter queue.
    let dlq_name = client.dead_letter_destination(QUEUE);
    let mut dlq = client.consumer(dlq_name.as_str()).await?;
    let mut dead_letters = Vec::new();
    while let Ok(received) = tokio::time::timeout(Duration::from_millis(200), dlq.receive()).await {
        let delivery = received?;
        let reason = delivery
            .headers()
            .get(headers::DEAD_LETTER_REASON)
            .unwrap_or("<missing>")
            .to_owned();
        println!(
            "{dlq_name}: {} {} = {reason:?}",
            delivery.id(),
            headers::DEAD_LETTER_REASON
        );
        dead_letters.push((delivery.id().to_owned(), reason));
        delivery.ack().await?;
    }
    dlq.close().await?;
    producer.close().await?;
    client.close().await?;

    // 5. Summary and checks.
    let processed = Counters::get(&counters.processed);
    let retried = Counters::get(&counters.retried);
    let duplicates = Counters::get(&counters.duplicates);
    println!();
    println!("summary");
    println!("  processed:             {processed}");
    println!("  retried:               {retried}");
    println!("  dead-lettered:         {}", dead_letters.len());
    println!("  duplicates suppressed: {duplicates}");
    println!("  worker report:         {worker_report:?}");

    let mut problems = Vec::new();
    if processed != expected_processed {
        problems.push(format!(
            "processed {processed} jobs, expected {expected_processed}"
        ));
    }
    if counters.runs_of("job-2") != 1 {
        problems.push(format!(
            "the handler ran {} times for job-2, expected once",
            counters.runs_of("job-2")
        ));
    }
    if counters.runs_of("job-3") != 2 {
        problems.push(format!(
            "the handler ran {} times for the webhook job-3, expected twice",
            counters.runs_of("job-3")
        ));
    }
    if retried < 1 {
        problems.push("no delivery was retried".to_owned());
    }
    if duplicates != 1 {
        problems.push(format!("{duplicates} duplicates suppressed, expected 1"));
    }
    match dead_letters.as_slice() {
        [(id, reason)] if id == "job-6" && reason.contains("unsupported job kind") => {}
        other => problems.push(format!(
            "expected job-6 alone in {dlq_name} with its reason, found {other:?}"
        )),
    }
    if worker_report.dead_lettered != 1 || worker_report.settle_failures != 0 {
        problems.push(format!("unexpected worker report {worker_report:?}"));
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("error: {p}");
        }
        std::process::exit(1);
    }
    println!("\nall expectations met");
    Ok(())
}
