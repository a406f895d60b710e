//! Swap brokers by changing the URL: the same application code runs on
//! `memory://` and on every broker it is given, and must come to the same
//! result on each.
//!
//! ```sh
//! cargo run --example swap_broker                       # memory:// only
//! cargo run --example swap_broker --features rabbit,kafka,sqs -- amqp://guest:guest@127.0.0.1:5672/%2f
//! # every broker scripts/brokers.sh starts (tansu needs auto_create_topics):
//! eval "$(bash scripts/brokers.sh start rabbit kafka sqs)"
//! export MQ_TEST_KAFKA_URL="$MQ_TEST_KAFKA_URL?auto_create_topics=true"
//! cargo run --example swap_broker --features rabbit,kafka,sqs
//! ```
//!
//! Brokers come from the environment (`MQ_TEST_RABBIT_URL`,
//! `MQ_TEST_KAFKA_URL`, `MQ_TEST_SQS_URL`, as `scripts/brokers.sh` prints
//! them) and from the command line (any number of URLs). `memory://` always
//! runs. A broker whose variable is unset, or whose backend this build lacks
//! (a cargo feature that is off), is skipped, and the output says so and why.
//! Kafka URLs need `auto_create_topics=true` for the fresh topics each run
//! uses, unless the cluster creates topics itself.
//!
//! The application, `app`, knows nothing of the broker: it gets an
//! `mq::Client`, sends 40 order jobs to a fresh queue, runs a worker (4
//! handlers, exponential-backoff retries) until every order is settled,
//! reads the dead-letter queue and returns a `Summary`. One order fails
//! transiently on its first attempt (a payment gateway timeout) and goes
//! through on the redelivery; one is invalid and is dead-lettered.
//!
//! The program prints one line per broker and exits with status 1 if any
//! broker it ran failed, or came to a different summary than `memory://`.

use std::collections::BTreeSet;
use std::error::Error;
use std::fmt;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mq::middleware::{RetryLayer, RetryPolicy, TimeoutLayer};
use mq::{
    headers, CancellationToken, Client, Consumer, HandlerError, Message, Producer, Received, Worker,
};
use serde::{Deserialize, Serialize};

type BoxError = Box<dyn Error + Send + Sync>;

/// Orders the application sends.
const ORDERS: u32 = 40;
/// The order whose first attempt fails transiently.
const FLAKY_ORDER: u32 = 7;
/// The order that is invalid.
const INVALID_ORDER: u32 = 13;
/// How long one broker may take for the whole application.
const PER_BROKER: Duration = Duration::from_secs(120);

/// An order job.
#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u32,
    quantity: u32,
    unit_cents: u64,
}

/// What the application did. The same on every broker, or something is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Summary {
    sent: u32,
    processed: u32,
    /// Orders that needed more than one attempt.
    retried: u32,
    /// Dead-lettered message ids and their reasons.
    dead_letters: Vec<(String, String)>,
    /// Sum of the processed orders' totals.
    revenue_cents: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sent, {} processed ({} after a retry), revenue {}.{:02}, {} dead-lettered",
            self.sent,
            self.processed,
            self.retried,
            self.revenue_cents / 100,
            self.revenue_cents % 100,
            self.dead_letters.len()
        )?;
        for (id, reason) in &self.dead_letters {
            write!(f, " [{id}: {reason}]")?;
        }
        Ok(())
    }
}

/// What the handler has seen so far.
#[derive(Default)]
struct Progress {
    processed: Mutex<BTreeSet<u32>>,
    retried: AtomicU32,
    rejected: AtomicU32,
    revenue_cents: AtomicU64,
}

/// The application: the same code for every broker.
async fn app(client: Client) -> Result<Summary, BoxError> {
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let queue = format!("orders-{}", &run_id[..12]);

    // Produce.
    let producer = client.producer().await?;
    let orders: Vec<Message> = (1..=ORDERS)
        .map(|id| {
            let order = Order {
                id,
                quantity: if id == INVALID_ORDER { 0 } else { id % 5 + 1 },
                unit_cents: 100 + u64::from(id) * 25,
            };
            Message::json(&order).map(|m| m.with_id(format!("order-{id}")))
        })
        .collect::<Result<_, _>>()?;
    producer.send_batch(&queue, orders).await.into_result()?;

    // Consume with a worker.
    let progress = Arc::new(Progress::default());
    let handler = {
        let progress = progress.clone();
        move |msg: Received| {
            let progress = progress.clone();
            async move {
                let order: Order = msg.json()?;
                tokio::time::sleep(Duration::from_millis(5)).await; // the "work"
                if order.quantity == 0 {
                    progress.rejected.fetch_add(1, Ordering::SeqCst);
                    return Err(HandlerError::permanent(format!(
                        "order {} has quantity 0",
                        order.id
                    )));
                }
                if order.id == FLAKY_ORDER && msg.attempt() == 1 {
                    return Err(HandlerError::transient("payment gateway timed out"));
                }
                if msg.attempt() > 1 {
                    progress.retried.fetch_add(1, Ordering::SeqCst);
                }
                progress.revenue_cents.fetch_add(
                    order.unit_cents * u64::from(order.quantity),
                    Ordering::SeqCst,
                );
                lock(&progress.processed).insert(order.id);
                Ok(())
            }
        }
    };
    let consumer = client.consumer(&queue).prefetch(8).await?;
    let worker = Worker::new(consumer, handler)
        .layer(RetryLayer::new(
            RetryPolicy::exponential(Duration::from_millis(50)).max_attempts(3),
        ))
        .layer(TimeoutLayer::new(Duration::from_secs(10)))
        .concurrency(4)
        .shutdown_grace(Duration::from_secs(5));
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(worker.run(shutdown.clone()));
    let expected = ORDERS - 1;
    // (A worker that stopped early failed: its error is returned below.)
    while (lock(&progress.processed).len() < expected as usize
        || progress.rejected.load(Ordering::SeqCst) < 1)
        && !worker.is_finished()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    worker.await??;

    // Read the dead-letter queue.
    let dlq = client.dead_letter_destination(&queue);
    let mut dead_letters = Vec::new();
    let mut consumer = client.consumer(&dlq).await?;
    let mut wait = Duration::from_secs(30); // a Kafka group join takes a while
    loop {
        let batch = consumer.receive_batch(10, wait).await?;
        if batch.is_empty() {
            break;
        }
        for d in batch {
            let reason = d
                .headers()
                .get(headers::DEAD_LETTER_REASON)
                .unwrap_or("<no reason>")
                .to_owned();
            dead_letters.push((d.id().to_owned(), reason));
            d.ack().await?;
        }
        wait = Duration::from_millis(500);
    }
    consumer.close().await?;
    producer.close().await?;
    dead_letters.sort();

    let processed = lock(&progress.processed).len() as u32;
    Ok(Summary {
        sent: ORDERS,
        processed,
        retried: progress.retried.load(Ordering::SeqCst),
        dead_letters,
        revenue_cents: progress.revenue_cents.load(Ordering::SeqCst),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The cargo feature that adds `scheme`.
fn feature_for(scheme: &str) -> &'static str {
    match scheme {
        "amqp" | "amqps" => "rabbit",
        "kafka" => "kafka",
        s if s.starts_with("sqs") => "sqs",
        _ => "?",
    }
}

/// The backend's name and the application's summary, or why it failed.
type Outcome = Result<(&'static str, Summary), BoxError>;

/// Runs `app` against `url`, within `PER_BROKER`.
async fn run_on(url: &str) -> Outcome {
    let attempt = async {
        let client = mq::connect(url).await?;
        let backend = client.backend_name();
        let summary = app(client.clone()).await;
        client.close().await?;
        Ok::<_, BoxError>((backend, summary?))
    };
    match tokio::time::timeout(PER_BROKER, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("did not finish within {PER_BROKER:?}").into()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // Which brokers to run on, and which to skip (and why).
    let mut targets: Vec<String> = vec!["memory://swap-broker".to_owned()];
    let mut skipped: Vec<String> = Vec::new();
    for (var, name) in [
        ("MQ_TEST_RABBIT_URL", "RabbitMQ"),
        ("MQ_TEST_KAFKA_URL", "Kafka"),
        ("MQ_TEST_SQS_URL", "SQS"),
    ] {
        match std::env::var(var) {
            Ok(url) if !url.trim().is_empty() => targets.push(url),
            _ => skipped.push(format!("{name}: {var} is not set")),
        }
    }
    for url in std::env::args().skip(1) {
        if !targets.contains(&url) {
            targets.push(url);
        }
    }
    let supported: Vec<&str> = mq::registry().schemes().collect();
    targets.retain(|url| {
        let scheme = url.split("://").next().unwrap_or("");
        if supported.contains(&scheme) {
            return true;
        }
        let feature = feature_for(scheme);
        skipped.push(format!(
            "{}: this build has no `{scheme}://` backend (add `--features {feature}`)",
            mq::url::redact_str(url)
        ));
        false
    });

    println!(
        "running the same application on {} broker(s)",
        targets.len()
    );
    let mut results: Vec<(String, Outcome)> = Vec::new();
    for url in &targets {
        let started = Instant::now();
        let result = run_on(url).await;
        let took = started.elapsed();
        let shown = mq::url::redact_str(url);
        match &result {
            Ok((backend, summary)) => {
                println!(
                    "  {backend:<9} OK     {:>6.2}s  {summary}",
                    took.as_secs_f64()
                )
            }
            Err(e) => {
                println!("  {shown:<9} FAILED {:>6.2}s  {e}", took.as_secs_f64());
                if url.starts_with("kafka://") && !url.contains("auto_create_topics") {
                    println!(
                        "            hint: fresh topics need `?auto_create_topics=true` \
                         unless the cluster creates them"
                    );
                }
            }
        }
        results.push((shown, result));
    }
    for reason in &skipped {
        println!("  skipped: {reason}");
    }

    // Every broker must agree with memory://.
    let mut problems = Vec::new();
    let reference = match results.first() {
        Some((_, Ok((_, summary)))) => summary.clone(),
        _ => {
            eprintln!("swap_broker FAILED: the application failed on memory://");
            return ExitCode::FAILURE;
        }
    };
    let expected_dead = vec![(
        format!("order-{INVALID_ORDER}"),
        format!("order {INVALID_ORDER} has quantity 0"),
    )];
    if reference.processed != ORDERS - 1
        || reference.retried != 1
        || reference.dead_letters != expected_dead
    {
        problems.push(format!("memory://: unexpected summary: {reference}"));
    }
    let mut passed = Vec::new();
    for (url, result) in &results {
        match result {
            Ok((backend, summary)) if *summary == reference => passed.push(*backend),
            Ok((backend, summary)) => problems.push(format!(
                "{backend} ({url}) came to a different summary: {summary}"
            )),
            Err(e) => problems.push(format!("{url}: {e}")),
        }
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("error: {p}");
        }
        eprintln!("swap_broker FAILED: {} problem(s)", problems.len());
        return ExitCode::FAILURE;
    }
    println!(
        "\nswap_broker OK: the same summary on {} broker(s) ({}); {} skipped",
        passed.len(),
        passed.join(", "),
        skipped.len()
    );
    ExitCode::SUCCESS
}
