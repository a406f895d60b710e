//! Email sender: a worker that delivers emails through a flaky mail server,
//! with retries, a dead-letter queue and deduplication.
//!
//! ```sh
//! cargo run --example email_sender                    # memory://, no broker needed
//! cargo run --example email_sender --features rabbit -- amqp://guest:guest@127.0.0.1:5672/%2f
//! cargo run --example email_sender --features kafka -- 'kafka://127.0.0.1:9092?auto_create_topics=true'
//! cargo run --example email_sender --features sqs -- 'sqs+http://test:test@127.0.0.1:4566?region=us-east-1'
//! ```
//!
//! The first argument is the broker URL (default `memory://email-sender`).
//! Every run uses fresh queue names, so reruns against a real broker do not
//! see messages of earlier runs.
//!
//! What it shows:
//!
//! - **Retry with exponential backoff** (`RetryLayer`): the simulated mail
//!   server answers like SMTP. A `4xx` reply is a transient error: the
//!   greylisting server of `greylist.example` refuses the first two tries,
//!   so the email goes out on the third (two tries in process, then a
//!   delayed redelivery by the broker). The server of `down.example` never
//!   answers, so that email is dead-lettered once the policy's 4 attempts
//!   are used up.
//! - **Dead-letter queue**: a `5xx` reply (`nobody@invalid.example`: no such
//!   mailbox) is a permanent error: no retry, straight to `<queue>-dlq`. A
//!   second worker reads the dead-letter queue and prints each message's
//!   `mq-dead-letter-reason` header.
//! - **Deduplication** (`DedupLayer`): the welcome email of `ada` is sent
//!   twice with the same message id (as a producer does after a lost
//!   confirmation); the second copy is acked without sending anything.
//!
//! At the end it checks that every deliverable email was sent exactly once
//! and that exactly the two undeliverable ones are in the dead-letter queue
//! with the right reasons, prints a summary, and exits with status 1 if
//! anything differs.

use std::collections::HashMap;
use std::error::Error;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mq::middleware::{DedupLayer, MemoryDedupStore, RetryLayer, RetryPolicy, TimeoutLayer};
use mq::{
    headers, BoxHandler, CancellationToken, Consumer, HandlerError, HandlerResult, Layer, Message,
    Producer, Received, Worker, WorkerReport,
};
use serde::{Deserialize, Serialize};

/// How long to wait for every email to reach its final state.
const DEADLINE: Duration = Duration::from_secs(60);

/// An email to send, as JSON on the queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Email {
    to: String,
    subject: String,
    body: String,
}

/// An SMTP-style reply code and text.
#[derive(Debug)]
struct SmtpReply {
    code: u16,
    text: &'static str,
}

impl std::fmt::Display for SmtpReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

impl Error for SmtpReply {}

/// A simulated mail server. Deterministic: what it answers depends only on
/// the recipient and on how often this message was tried before.
#[derive(Default)]
struct MailServer {
    /// Tries per message id (every call of `send`).
    tries: Mutex<HashMap<String, u32>>,
    /// Emails accepted per message id: must end up exactly 1 for each.
    accepted: Mutex<HashMap<String, u32>>,
}

impl MailServer {
    async fn send(&self, message_id: &str, email: &Email) -> Result<(), SmtpReply> {
        tokio::time::sleep(Duration::from_millis(15)).await; // the network round trip
        let try_no = {
            let mut tries = lock(&self.tries);
            let n = tries.entry(message_id.to_owned()).or_default();
            *n += 1;
            *n
        };
        let domain = email.to.rsplit_once('@').map_or("", |(_, d)| d);
        match domain {
            "" => Err(SmtpReply {
                code: 501,
                text: "5.1.3 bad recipient address syntax",
            }),
            "invalid.example" => Err(SmtpReply {
                code: 550,
                text: "5.1.1 mailbox does not exist",
            }),
            // Greylisting: a legitimate sender comes back, spammers rarely do.
            "greylist.example" if try_no <= 2 => Err(SmtpReply {
                code: 451,
                text: "4.7.1 greylisted, try again later",
            }),
            "down.example" => Err(SmtpReply {
                code: 421,
                text: "4.3.2 service not available",
            }),
            _ => {
                *lock(&self.accepted)
                    .entry(message_id.to_owned())
                    .or_default() += 1;
                Ok(())
            }
        }
    }

    fn tries(&self, message_id: &str) -> u32 {
        lock(&self.tries).get(message_id).copied().unwrap_or(0)
    }
}

/// Locks `m`, carrying on with the data if another thread panicked holding it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The application's handler: send one email; map the server's reply class
/// to the error class the worker understands.
async fn send_email(msg: Received, server: Arc<MailServer>, log: Log) -> HandlerResult {
    // Not an `Email`: a decode error, which is permanent (dead-letter).
    let email: Email = msg.json()?;
    match server.send(msg.id(), &email).await {
        Ok(()) => {
            log.line(format_args!(
                "sent    {} to {} (try {}, delivery attempt {})",
                msg.id(),
                email.to,
                server.tries(msg.id()),
                msg.attempt()
            ));
            Ok(())
        }
        // 5xx: the same email will never go through.
        Err(reply) if reply.code >= 500 => Err(HandlerError::permanent(reply)),
        // 4xx: try again later.
        Err(reply) => {
            log.line(format_args!(
                "refused {} to {}: {reply} (try {}, delivery attempt {})",
                msg.id(),
                email.to,
                server.tries(msg.id()),
                msg.attempt()
            ));
            Err(HandlerError::transient(reply))
        }
    }
}

/// Prints lines with the time since the start.
#[derive(Clone, Copy)]
struct Log(Instant);

impl Log {
    fn line(&self, event: std::fmt::Arguments<'_>) {
        println!("[{:>5} ms] {event}", self.0.elapsed().as_millis());
    }
}

/// What the worker did with each delivery, counted as it happens.
#[derive(Default)]
struct Outcomes {
    acked: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    duplicates: AtomicU64,
}

/// The outermost layer: reports what the worker is about to do with each
/// delivery (ack, redeliver, dead-letter), so `main` knows when every email
/// reached its final state. Real applications would use the metrics that
/// `mq` records instead.
struct Observe {
    outcomes: Arc<Outcomes>,
    server: Arc<MailServer>,
    log: Log,
}

impl Layer for Observe {
    fn layer(&self, inner: BoxHandler) -> BoxHandler {
        let (outcomes, server, log) = (self.outcomes.clone(), self.server.clone(), self.log);
        Arc::new(move |msg: Received| {
            let (inner, outcomes, server) = (inner.clone(), outcomes.clone(), server.clone());
            async move {
                let id = msg.id().to_owned();
                let tries_before = server.tries(&id);
                let result = inner.call(msg).await;
                match &result {
                    Ok(()) if server.tries(&id) == tries_before => {
                        outcomes.duplicates.fetch_add(1, Ordering::SeqCst);
                        outcomes.acked.fetch_add(1, Ordering::SeqCst);
                        log.line(format_args!(
                            "dedup   {id} was already sent: duplicate acked, nothing sent"
                        ));
                    }
                    Ok(()) => {
                        outcomes.acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) if e.is_permanent() => {
                        outcomes.dead_lettered.fetch_add(1, Ordering::SeqCst);
                        log.line(format_args!(
                            "dead    {id} goes to the dead-letter queue: {e}"
                        ));
                    }
                    Err(e) => {
                        outcomes.retried.fetch_add(1, Ordering::SeqCst);
                        // Whole milliseconds: the policy's f32 arithmetic
                        // makes 80 ms come out as 79.999 ms.
                        let delay = e.requested_delay().unwrap_or_default();
                        let ms = (delay.as_micros() + 500) / 1000;
                        log.line(format_args!(
                            "retry   {id}: the broker redelivers it in {ms} ms"
                        ));
                    }
                }
                result
            }
        })
    }
}

/// Runs `worker` until `shutdown` is cancelled; if the worker fails (its
/// consumer broke), cancels `shutdown` so that everything else stops too.
async fn run_worker<C: Consumer + 'static>(
    worker: Worker<C>,
    shutdown: CancellationToken,
) -> mq::Result<WorkerReport> {
    let result = worker.run(shutdown.clone()).await;
    if result.is_err() {
        shutdown.cancel();
    }
    result
}

#[tokio::main]
async fn main() -> ExitCode {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://email-sender".to_owned());
    match run(&url).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("email_sender FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(url: &str) -> Result<(), Box<dyn Error>> {
    let log = Log(Instant::now());
    let client = mq::connect(url).await?;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let queue = format!("emails-{}", &run_id[..12]);
    let dlq = client.dead_letter_destination(&queue);
    println!(
        "connected to {} ({} backend); queue `{queue}`, dead-letter queue `{dlq}`",
        mq::url::redact_str(url),
        client.backend_name()
    );

    // 1. Produce. The message id is the idempotency key: one per email the
    //    application means to send, not per send attempt.
    let emails = [
        ("welcome-ada", "ada@example.com", "Welcome, Ada"),
        ("welcome-grace", "grace@example.com", "Welcome, Grace"),
        ("invoice-1001", "billing@greylist.example", "Invoice 1001"),
        ("reset-alan", "alan@example.com", "Password reset"),
        ("newsletter-7", "nobody@invalid.example", "Newsletter #7"),
        ("receipt-2002", "orders@down.example", "Receipt 2002"),
        ("welcome-linus", "linus@example.com", "Welcome, Linus"),
        ("digest-ada", "ada@example.com", "Your weekly digest"),
        ("welcome-barbara", "barbara@example.com", "Welcome, Barbara"),
        ("invoice-1002", "accounts@greylist.example", "Invoice 1002"),
    ];
    let producer = client.producer().await?;
    let mut batch = Vec::new();
    for (id, to, subject) in emails {
        let email = Email {
            to: to.to_owned(),
            subject: subject.to_owned(),
            body: format!("Hello {to}!"),
        };
        batch.push(Message::json(&email)?.with_id(id));
    }
    let report = producer.send_batch(&queue, batch).await;
    log.line(format_args!(
        "queued  {} emails to `{queue}`",
        report.sent()
    ));
    report.into_result()?;
    // The same email again, same message id: a producer retrying a send
    // whose confirmation it never saw.
    let again = Email {
        to: "ada@example.com".to_owned(),
        subject: "Welcome, Ada".to_owned(),
        body: "Hello ada@example.com!".to_owned(),
    };
    producer
        .send(&queue, Message::json(&again)?.with_id("welcome-ada"))
        .await?;
    log.line(format_args!(
        "queued  welcome-ada a second time (same message id)"
    ));

    // 2. The sending worker.
    let server = Arc::new(MailServer::default());
    let outcomes = Arc::new(Outcomes::default());
    let handler = {
        let server = server.clone();
        move |msg: Received| send_email(msg, server.clone(), log)
    };
    let consumer = client.consumer(&queue).prefetch(8).await?;
    let sender = Worker::new(consumer, handler)
        .layer(Observe {
            outcomes: outcomes.clone(),
            server: server.clone(),
            log,
        })
        // Outermost real layer: the lease covers the retries below. A short
        // lease for the demo: a copy arriving while the original is still
        // being sent is redelivered after at most this long.
        .layer(DedupLayer::new(MemoryDedupStore::new()).lease(Duration::from_secs(1)))
        // 40 ms, 80 ms, 160 ms ... (production: seconds, and keep the jitter).
        // Two tries in process per delivery, then a delayed redelivery by
        // the broker; dead-letter after 4 tries in all.
        .layer(RetryLayer::new(
            RetryPolicy::exponential(Duration::from_millis(40))
                .without_jitter()
                .in_process_attempts(2)
                .max_attempts(4),
        ))
        .layer(TimeoutLayer::new(Duration::from_secs(10)))
        .concurrency(4)
        .shutdown_grace(Duration::from_secs(5));

    // 3. A second worker on the dead-letter queue: what an operator's
    //    alerting job would do. It prints the reason and keeps the message.
    let dead_letters = Arc::new(Mutex::new(Vec::<(String, String, String)>::new()));
    let dlq_handler = {
        let dead_letters = dead_letters.clone();
        move |msg: Received| {
            let dead_letters = dead_letters.clone();
            async move {
                let reason = msg
                    .headers()
                    .get(headers::DEAD_LETTER_REASON)
                    .unwrap_or("<no reason header>")
                    .to_owned();
                let to = msg.json::<Email>().map(|e| e.to).unwrap_or_default();
                log.line(format_args!(
                    "dlq     {} to {to}: {} = {reason:?}",
                    msg.id(),
                    headers::DEAD_LETTER_REASON
                ));
                lock(&dead_letters).push((msg.id().to_owned(), to, reason));
                Ok(())
            }
        }
    };
    let dlq_worker = Worker::new(client.consumer(&dlq).await?, dlq_handler)
        .shutdown_grace(Duration::from_secs(5));

    // 4. Run both until every email reached its final state.
    let deliverable = emails
        .iter()
        .filter(|(_, to, _)| !to.ends_with("invalid.example") && !to.ends_with("down.example"))
        .count() as u64;
    let expected_acks = deliverable + 1; // and the duplicate
    let expected_dead = emails.len() as u64 - deliverable;
    let shutdown = CancellationToken::new();
    let watch = {
        let (outcomes, dead_letters, shutdown) =
            (outcomes.clone(), dead_letters.clone(), shutdown.clone());
        async move {
            let deadline = Instant::now() + DEADLINE;
            let done = loop {
                let done = outcomes.acked.load(Ordering::SeqCst) >= expected_acks
                    && lock(&dead_letters).len() as u64 >= expected_dead;
                // (cancelled: a worker failed; its error is reported below)
                if done || shutdown.is_cancelled() || Instant::now() >= deadline {
                    break done;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            // Give a stray redelivery (there should be none) a moment to show up.
            tokio::time::sleep(Duration::from_millis(200)).await;
            shutdown.cancel();
            done
        }
    };
    let (sender_report, dlq_report, all_done) = tokio::join!(
        run_worker(sender, shutdown.clone()),
        run_worker(dlq_worker, shutdown.clone()),
        watch
    );
    let (sender_report, dlq_report) = (sender_report?, dlq_report?);
    log.line(format_args!("workers stopped"));
    producer.close().await?;
    client.close().await?;

    // 5. Summary and checks.
    let accepted = lock(&server.accepted).clone();
    let dead_letters = lock(&dead_letters).clone();
    let retried = outcomes.retried.load(Ordering::SeqCst);
    let duplicates = outcomes.duplicates.load(Ordering::SeqCst);
    println!();
    println!("summary");
    println!(
        "  emails sent:           {}",
        accepted.values().sum::<u32>()
    );
    println!("  redeliveries:          {retried}");
    println!(
        "  dead-lettered:         {} (read back from `{dlq}`: {})",
        outcomes.dead_lettered.load(Ordering::SeqCst),
        dead_letters.len()
    );
    println!("  duplicates suppressed: {duplicates}");
    println!("  sender worker:         {sender_report:?}");
    println!("  dead-letter worker:    {dlq_report:?}");

    let mut problems = Vec::new();
    if !all_done {
        problems.push(format!(
            "not every email reached its final state within {DEADLINE:?} \
             (acked {}/{expected_acks}, dead-lettered {}/{expected_dead})",
            outcomes.acked.load(Ordering::SeqCst),
            dead_letters.len()
        ));
    }
    for (id, to, _) in emails {
        let sent = accepted.get(id).copied().unwrap_or(0);
        let should = u32::from(!to.ends_with("invalid.example") && !to.ends_with("down.example"));
        if sent != should {
            problems.push(format!(
                "{id} to {to} was sent {sent} times, expected {should}"
            ));
        }
    }
    for (id, tries) in [("invoice-1001", 3), ("welcome-ada", 1), ("newsletter-7", 1)] {
        if server.tries(id) != tries {
            problems.push(format!(
                "{id} was tried {} times, expected {tries}",
                server.tries(id)
            ));
        }
    }
    if duplicates != 1 {
        problems.push(format!("{duplicates} duplicates suppressed, expected 1"));
    }
    let mut reasons: Vec<(&str, &str)> = dead_letters
        .iter()
        .map(|(id, _, reason)| (id.as_str(), reason.as_str()))
        .collect();
    reasons.sort();
    match reasons.as_slice() {
        [("newsletter-7", r1), ("receipt-2002", r2)]
            if r1.contains("550") && r2.contains("gave up after 4 attempts") => {}
        other => problems.push(format!(
            "expected newsletter-7 (550) and receipt-2002 (gave up after 4 attempts) \
             in `{dlq}`, found {other:?}"
        )),
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("error: {p}");
        }
        return Err(format!("{} expectation(s) not met", problems.len()).into());
    }
    println!(
        "\nemail_sender OK: {} emails sent exactly once, {retried} redeliveries, \
         {} dead-lettered, {duplicates} duplicate suppressed",
        accepted.len(),
        dead_letters.len()
    );
    Ok(())
}
