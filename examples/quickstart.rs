//! `cargo run --example quickstart` (memory://, no broker): a worker retries a transient
//! failure, dead-letters a permanent one with its reason, suppresses a duplicate, stops.
use std::time::Duration;

use mq::middleware::{DedupLayer, MemoryDedupStore, RetryLayer, RetryPolicy};
use mq::{CancellationToken, Consumer, HandlerError, Message, Producer, Received, Worker};

#[derive(serde::Serialize, serde::Deserialize)]
struct Job {
    id: u32,
    kind: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let client = mq::connect("memory://quickstart").await?;
    let kinds = ["email", "webhook", "fax", "email"].map(String::from);
    let jobs = (0..)
        .zip(kinds)
        .map(|(id, kind)| Message::json(&Job { id, kind }));
    let jobs: Vec<Message> = jobs.collect::<mq::Result<_>>()?;
    let producer = client.producer().await?;
    producer.send("jobs", jobs[0].clone()).await?; // the batch repeats it: a duplicate
    producer.send_batch("jobs", jobs).await.into_result()?;
    let handler = |job: Job, msg: Received| async move {
        let attempt = msg.attempt();
        match job.kind.as_str() {
            "webhook" if attempt == 1 => Err(HandlerError::transient("webhook said 503")),
            "fax" => Err(HandlerError::permanent("nobody has a fax")),
            kind => {
                println!("job {} ({kind}) done, attempt {attempt}", job.id);
                Ok(())
            }
        }
    };
    let retry = RetryPolicy::exponential(Duration::from_millis(50)).max_attempts(3);
    let worker = Worker::json(client.consumer("jobs").await?, handler)
        .layer(DedupLayer::new(MemoryDedupStore::new()))
        .layer(RetryLayer::new(retry));
    let (stats, stop) = (worker.stats(), CancellationToken::new());
    let running = tokio::spawn(worker.run(stop.clone()));
    let all_settled = stats.wait_until(|r| r.acked + r.dead_lettered == 5);
    let settled = tokio::time::timeout(Duration::from_secs(10), all_settled).await;
    stop.cancel(); // graceful: handlers in flight finish, then the consumer closes
    let report = running.await??;
    let mut dead_letters = client.consumer("jobs-dlq").await?;
    let dead = tokio::time::timeout(Duration::from_secs(5), dead_letters.receive()).await??;
    let reason = dead.dead_letter_reason().unwrap_or_default().to_owned();
    println!("dead letter {} because {reason:?}", dead.text()?);
    dead.ack().await?;
    let r = report;
    let counts = [r.acked, r.duplicates, r.nacked, r.dead_lettered];
    if settled.is_err() || counts != [4, 1, 1, 1] || reason != "nobody has a fax" {
        eprintln!("error: not the outcome the quickstart expects: {r:#?}");
        std::process::exit(1);
    }
    println!("{r:#?}\nall expectations met");
    Ok(())
}
