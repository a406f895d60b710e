//! Request/reply: a price-quote service answering concurrent requests, and
//! a request that times out.
//!
//! ```sh
//! cargo run --example rpc                    # memory://, no broker needed
//! cargo run --example rpc --features rabbit -- amqp://guest:guest@127.0.0.1:5672/%2f
//! cargo run --example rpc --features kafka -- 'kafka://127.0.0.1:9092?auto_create_topics=true'
//! cargo run --example rpc --features sqs -- 'sqs+http://test:test@127.0.0.1:4566?region=us-east-1'
//! ```
//!
//! The first argument is the broker URL (default `memory://rpc`). Every run
//! uses a fresh request queue.
//!
//! What it shows:
//!
//! - **The service** is an ordinary `Worker` whose handler is
//!   `rpc::responder`: it decodes the request, looks up the price (50 ms of
//!   simulated database time) and returns the reply message; the responder
//!   sends it to the requester's `mq-reply-to` with the request's
//!   `mq-correlation-id`. Eight requests are served at once.
//! - **The client** is one `Requester` shared by many tasks: ten quotes are
//!   requested at the same time and each reply finds its own caller.
//! - **Errors the caller should see are replies.** An unknown product gets
//!   an `unknown product` reply. (A handler *error* sends no reply at all: the
//!   request is retried or dead-lettered, and the caller only sees a timeout.)
//! - **Timeouts**: a quote for `SLOW-1` takes the service 1.5 s; the caller
//!   gives up after 300 ms with an `ErrorKind::Timeout` error. The reply that
//!   arrives later matches no waiting request and is dropped, so a later
//!   request still gets its own answer.
//!
//! It checks every answer, prints a summary and exits with status 1 if any
//! is wrong or the timeout did not happen as expected.

use std::collections::BTreeMap;
use std::error::Error;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mq::rpc::responder;
use mq::{CancellationToken, ErrorKind, HandlerError, Message, Received, Requester, Worker};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

/// How long a caller waits for a normal reply (generous: a broker's first
/// consumer-group join can take seconds).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the caller waits for the slow quote.
const SHORT_TIMEOUT: Duration = Duration::from_millis(300);
/// How long the service takes for the slow product.
const SLOW_LOOKUP: Duration = Duration::from_millis(1500);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct QuoteRequest {
    sku: String,
    quantity: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum QuoteReply {
    Quote {
        sku: String,
        quantity: u32,
        unit_cents: u64,
        total_cents: u64,
    },
    UnknownProduct {
        sku: String,
    },
}

/// The service's price list.
fn price_of(sku: &str) -> Option<u64> {
    match sku {
        "APPLE" => Some(45),
        "BREAD" => Some(250),
        "CHEESE" => Some(899),
        "COFFEE" => Some(1_299),
        "EGGS" => Some(375),
        "SLOW-1" => Some(100),
        _ => None,
    }
}

/// Volume discount: 10% off from 10 items.
fn total(unit_cents: u64, quantity: u32) -> u64 {
    let gross = unit_cents * u64::from(quantity);
    if quantity >= 10 {
        gross - gross / 10
    } else {
        gross
    }
}

/// The service: one request in, one reply message out.
async fn quote(request: Received) -> Result<Message, HandlerError> {
    // A request that is not a `QuoteRequest` is a permanent error: it is
    // dead-lettered, and its caller times out.
    let req: QuoteRequest = request.json()?;
    let lookup = if req.sku == "SLOW-1" {
        SLOW_LOOKUP
    } else {
        Duration::from_millis(50)
    };
    tokio::time::sleep(lookup).await;
    let reply = match price_of(&req.sku) {
        Some(unit_cents) => QuoteReply::Quote {
            total_cents: total(unit_cents, req.quantity),
            sku: req.sku,
            quantity: req.quantity,
            unit_cents,
        },
        None => QuoteReply::UnknownProduct { sku: req.sku },
    };
    Ok(Message::json(&reply)?)
}

#[tokio::main]
async fn main() -> ExitCode {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://rpc".to_owned());
    match run(&url).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rpc FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(url: &str) -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    let client = mq::connect(url).await?;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let queue = format!("quotes-{}", &run_id[..12]);
    println!(
        "connected to {} ({} backend); requests go to `{queue}`",
        mq::url::redact_str(url),
        client.backend_name()
    );

    // 1. The service.
    let service_producer = client.producer().await?;
    let consumer = client.consumer(&queue).prefetch(8).await?;
    let service = Worker::new(consumer, responder(service_producer.clone(), quote))
        .concurrency(8)
        .shutdown_grace(Duration::from_secs(5));
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(service.run(shutdown.clone()));

    // 2. The client: one requester, shared by every task.
    let requester = Arc::new(Requester::new(&client).await?);
    println!(
        "requester's replies come back on `{}`",
        requester.reply_to()
    );
    let orders: [(&str, u32); 10] = [
        ("APPLE", 12),
        ("BREAD", 1),
        ("CHEESE", 2),
        ("COFFEE", 1),
        ("EGGS", 10),
        ("APPLE", 3),
        ("CAVIAR", 1),
        ("BREAD", 20),
        ("COFFEE", 4),
        ("EGGS", 2),
    ];
    let batch_started = Instant::now();
    let mut calls = JoinSet::new();
    for (n, (sku, quantity)) in orders.into_iter().enumerate() {
        let (requester, queue) = (requester.clone(), queue.clone());
        calls.spawn(async move {
            let request = QuoteRequest {
                sku: sku.to_owned(),
                quantity,
            };
            let asked = Instant::now();
            let reply = requester
                .request(&queue, Message::json(&request)?, REPLY_TIMEOUT)
                .await?;
            let reply: QuoteReply = reply.json()?;
            Ok::<_, mq::Error>((n, request, reply, asked.elapsed()))
        });
    }
    let mut answers = BTreeMap::new();
    let mut problems = Vec::new();
    while let Some(done) = calls.join_next().await {
        match done? {
            Ok((n, request, reply, took)) => {
                println!(
                    "request {n}: {} x {} -> {} ({} ms)",
                    request.quantity,
                    request.sku,
                    describe(&reply),
                    took.as_millis()
                );
                answers.insert(n, (request, reply));
            }
            Err(e) => problems.push(format!("a quote request failed: {e}")),
        }
    }
    let batch_took = batch_started.elapsed();
    println!(
        "{} concurrent requests answered in {} ms (one after the other: at least {} ms of lookups)",
        answers.len(),
        batch_took.as_millis(),
        orders.len() * 50
    );

    // 3. A request that takes longer than the caller is willing to wait.
    let slow = QuoteRequest {
        sku: "SLOW-1".to_owned(),
        quantity: 1,
    };
    let asked = Instant::now();
    let timed_out = match requester
        .request(&queue, Message::json(&slow)?, SHORT_TIMEOUT)
        .await
    {
        Err(e) if e.kind() == ErrorKind::Timeout => {
            println!(
                "SLOW-1: gave up after {} ms, as expected: {e}",
                asked.elapsed().as_millis()
            );
            true
        }
        Err(e) => {
            problems.push(format!("SLOW-1 failed with {e}, expected a timeout"));
            false
        }
        Ok(reply) => {
            problems.push(format!(
                "SLOW-1 was answered within {SHORT_TIMEOUT:?} ({:?}), expected a timeout",
                reply.json::<QuoteReply>()
            ));
            false
        }
    };

    // 4. After the late reply has come back (and been dropped), the
    //    requester still matches replies to requests.
    tokio::time::sleep(SLOW_LOOKUP).await;
    let after = QuoteRequest {
        sku: "CHEESE".to_owned(),
        quantity: 1,
    };
    let after_reply: QuoteReply = requester
        .request(&queue, Message::json(&after)?, REPLY_TIMEOUT)
        .await?
        .json()?;
    println!(
        "after the late reply: 1 x CHEESE -> {}",
        describe(&after_reply)
    );

    shutdown.cancel();
    let report = service.await??;
    drop(requester);
    service_producer.close().await?;
    client.close().await?;

    // 5. Check every answer against the price list.
    for (n, (sku, quantity)) in orders.into_iter().enumerate() {
        let expected = match price_of(sku) {
            Some(unit_cents) => QuoteReply::Quote {
                sku: sku.to_owned(),
                quantity,
                unit_cents,
                total_cents: total(unit_cents, quantity),
            },
            None => QuoteReply::UnknownProduct {
                sku: sku.to_owned(),
            },
        };
        match answers.get(&n) {
            Some((_, reply)) if *reply == expected => {}
            Some((_, reply)) => problems.push(format!(
                "request {n} was answered {reply:?}, expected {expected:?}"
            )),
            None => problems.push(format!("request {n} got no answer")),
        }
    }
    if !matches!(&after_reply, QuoteReply::Quote { sku, total_cents: 899, .. } if sku == "CHEESE") {
        problems.push(format!(
            "the request after the timeout got {after_reply:?}, expected CHEESE at 899"
        ));
    }

    println!();
    println!("summary");
    println!("  answered:  {} of {}", answers.len(), orders.len());
    println!("  timed out: {}", u32::from(timed_out));
    println!("  service:   {report:?}");
    println!("  time:      {:.2?}", started.elapsed());
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("error: {p}");
        }
        return Err(format!("{} expectation(s) not met", problems.len()).into());
    }
    println!(
        "\nrpc OK: {} concurrent requests answered correctly, 1 timed out as expected, \
         late reply ignored",
        answers.len()
    );
    Ok(())
}

fn describe(reply: &QuoteReply) -> String {
    match reply {
        QuoteReply::Quote {
            unit_cents,
            total_cents,
            ..
        } => format!(
            "{}.{:02} each, {}.{:02} in all",
            unit_cents / 100,
            unit_cents % 100,
            total_cents / 100,
            total_cents % 100
        ),
        QuoteReply::UnknownProduct { sku } => format!("unknown product {sku}"),
    }
}
