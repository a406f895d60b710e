//! Serve `mq` metrics in Prometheus format on a local port.
//!
//! ```sh
//! cargo run --example prometheus                      # memory://, port 9898
//! cargo run --example prometheus -- amqp://guest:guest@127.0.0.1:5672/%2f 9898 60
//! ```
//!
//! Runs a short workload (sends, a retry and a dead letter) through a worker,
//! then scrapes its own `/metrics` endpoint and prints the `mq_` lines. Give
//! a third argument to keep serving that many seconds for a real Prometheus.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use mq::middleware::{RetryLayer, RetryPolicy};
use mq::{CancellationToken, HandlerError, Message, Producer, Received, Worker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "memory://prometheus-example".into());
    let port: u16 = args.next().map_or(Ok(9898), |p| p.parse())?;
    let serve_for: u64 = args.next().map_or(Ok(0), |s| s.parse())?;

    PrometheusBuilder::new()
        .with_http_listener(([127, 0, 0, 1], port))
        .install()?;
    println!("metrics on http://127.0.0.1:{port}/metrics");

    let client = mq::connect(&url).await?;
    let queue = format!("prometheus-example-{}", uuid::Uuid::new_v4().simple());
    let producer = client.producer().await?;
    for job in ["resize", "flaky", "poison", "email"] {
        producer.send(&queue, Message::new(job)).await?;
    }
    let handler = |m: Received| async move {
        match (m.text()?, m.attempt()) {
            ("flaky", 1) => Err(HandlerError::transient("first attempt fails")),
            ("poison", _) => Err(HandlerError::permanent("cannot process")),
            _ => Ok(()),
        }
    };
    let consumer = client.consumer(&queue).await?;
    let token = CancellationToken::new();
    let worker = tokio::spawn(
        Worker::new(consumer, handler)
            .layer(RetryLayer::new(RetryPolicy::fixed(Duration::from_millis(
                50,
            ))))
            .run(token.clone()),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    token.cancel();
    let report = worker.await??;
    println!("worker: {report:?}");

    let body = scrape(port).await?;
    let lines: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("mq_") && l.contains(&queue))
        .collect();
    for line in &lines {
        println!("{line}");
    }
    let sent = counter(&lines, "mq_messages_sent_total");
    let acked = counter(&lines, "mq_messages_acked_total");
    let dead = counter(&lines, "mq_messages_dead_lettered_total");
    if sent < 4.0 || acked < 3.0 || dead < 1.0 {
        eprintln!("expected non-zero counters: sent {sent}, acked {acked}, dead-lettered {dead}");
        std::process::exit(1);
    }
    println!("ok: sent {sent}, acked {acked}, dead-lettered {dead}");
    if serve_for > 0 {
        println!("serving for {serve_for}s");
        tokio::time::sleep(Duration::from_secs(serve_for)).await;
    }
    Ok(())
}

/// The sum of a counter's samples for this run.
fn counter(lines: &[&str], name: &str) -> f64 {
    lines
        .iter()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// GET /metrics from our own exporter on loopback.
async fn scrape(port: u16) -> Result<String, BoxError> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body)
}
