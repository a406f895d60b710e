//! Relay throughput against the producer's own pipelined throughput: how
//! much the outbox costs.
//!
//! ```sh
//! cargo run --release -p mq-outbox --example relay_bench              # SQLite x memory://
//! MQ_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres \
//! MQ_TEST_RABBIT_URL=amqp://guest:guest@127.0.0.1:5672/%2f \
//!   cargo run --release -p mq-outbox --example relay_bench -- 20000 3
//! ```
//!
//! Arguments: messages per run (default 20,000) and pairs (default 3). For
//! each database (SQLite temp file; PostgreSQL from `MQ_TEST_POSTGRES_URL`)
//! and broker (`memory://`; RabbitMQ from `MQ_TEST_RABBIT_URL`), runs
//! interleaved A B A B ...: A sends the messages directly through a
//! `Pipeline` (256 in flight), B relays the same number of rows already
//! committed to the outbox (batch 256, 256 in flight) until none is pending.
//! Prints each run, then one Markdown table row per pair of database and
//! broker: median msg/s of A and B, the median of the per-pair ratios B/A
//! and their spread (min-max). Also prints the cost of the writes
//! (`Outbox::send` in transactions of 100 rows).

use std::str::FromStr;
use std::time::{Duration, Instant};

use mq::{Consumer, Message, ProducerExt};
use mq_outbox::sqlx::postgres::PgPoolOptions;
use mq_outbox::sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use mq_outbox::sqlx::Pool;
use mq_outbox::{Outbox, OutboxConfig, OutboxDatabase};

type AnyError = Box<dyn std::error::Error + Send + Sync>;

fn unique(prefix: &str) -> String {
    let id = mq::message::new_message_id().replace('-', "");
    format!("{prefix}_{}", &id[id.len() - 12..])
}

fn message(i: usize) -> Message {
    Message::new(vec![b'x'; 100]).with_header("n", i.to_string())
}

/// A: the same messages sent directly, 256 in flight.
async fn direct(client: &mq::Client, n: usize) -> Result<(f64, String), AnyError> {
    let queue = unique("bench_direct");
    let producer = client.producer().await?;
    let started = Instant::now();
    let mut pipeline = producer.pipeline(256);
    for i in 0..n {
        pipeline.send(&queue, message(i)).await;
    }
    pipeline.finish().await.into_result()?;
    Ok((n as f64 / started.elapsed().as_secs_f64(), queue))
}

/// B: `n` committed rows relayed until none is pending; also the write rate.
async fn relayed<DB: OutboxDatabase>(
    pool: &Pool<DB>,
    client: &mq::Client,
    n: usize,
) -> Result<(f64, f64, String), AnyError> {
    let queue = unique("bench_outbox");
    let config = OutboxConfig::new()
        .table(&unique("bench_outbox"))?
        .retention(Duration::ZERO);
    let outbox = Outbox::new(pool.clone(), config)?;
    outbox.migrate().await?;
    let written = Instant::now();
    for chunk in 0..n.div_ceil(100) {
        let mut tx = pool.begin().await?;
        for i in chunk * 100..((chunk + 1) * 100).min(n) {
            outbox.send(&mut tx, &queue, message(i)).await?;
        }
        tx.commit().await?;
    }
    let write_rate = n as f64 / written.elapsed().as_secs_f64();
    let mut relay = outbox.relay(client.clone());
    let started = Instant::now();
    // Until a round finds nothing: that round also writes the last marks.
    while relay.run_once().await? > 0 {}
    let rate = n as f64 / started.elapsed().as_secs_f64();
    if relay.report().sent != n as u64 {
        return Err(format!("relayed {} of {n}", relay.report().sent).into());
    }
    Ok((rate, write_rate, queue))
}

/// Empties a benchmark queue on a real broker (not timed).
async fn drain(client: &mq::Client, queue: &str, n: usize) -> Result<(), AnyError> {
    if client.backend_name() == "memory" {
        return Ok(());
    }
    let mut consumer = client.consumer(queue).await?;
    let mut left = n;
    while left > 0 {
        let batch = consumer.receive_batch(1000, Duration::from_secs(5)).await?;
        if batch.is_empty() {
            break;
        }
        left = left.saturating_sub(batch.len());
        for d in batch {
            d.ack().await?;
        }
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn bench<DB: OutboxDatabase>(
    db: &str,
    pool: Pool<DB>,
    broker: &str,
    url: &str,
    n: usize,
    pairs: usize,
) -> Result<String, AnyError> {
    let client = mq::connect(url).await?;
    let (mut a, mut b, mut ratios, mut writes) = (vec![], vec![], vec![], vec![]);
    for pair in 1..=pairs {
        let (ra, qa) = direct(&client, n).await?;
        drain(&client, &qa, n).await?;
        let (rb, w, qb) = relayed(&pool, &client, n).await?;
        drain(&client, &qb, n).await?;
        eprintln!(
            "{db} x {broker} pair {pair}: direct {ra:.0} msg/s, relay {rb:.0} msg/s ({:.0}%), outbox writes {w:.0} rows/s",
            100.0 * rb / ra
        );
        a.push(ra);
        b.push(rb);
        ratios.push(rb / ra);
        writes.push(w);
    }
    let (lo, hi) = ratios
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
    Ok(format!(
        "| {db} | {broker} | {:.0} | {:.0} | {:.0}% | {:.0}-{:.0}% | {:.0} |",
        median(&mut a),
        median(&mut b),
        100.0 * median(&mut ratios),
        100.0 * lo,
        100.0 * hi,
        median(&mut writes),
    ))
}

#[tokio::main]
async fn main() -> Result<(), AnyError> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let pairs: usize = args.next().map_or(Ok(3), |a| a.parse())?;
    let mut brokers = vec![(
        "memory://".to_owned(),
        format!("memory://relay-bench?capacity={}", n * 2 + 1000),
    )];
    match std::env::var("MQ_TEST_RABBIT_URL") {
        Ok(url) => brokers.push(("RabbitMQ".to_owned(), url)),
        Err(_) => eprintln!("RabbitMQ: skipped (MQ_TEST_RABBIT_URL is unset)"),
    }
    let path = std::env::temp_dir().join(format!("{}.db", unique("relay_bench")));
    let sqlite = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(
            SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal),
        )
        .await?;
    let postgres = match std::env::var("MQ_TEST_POSTGRES_URL") {
        Ok(url) => Some(
            PgPoolOptions::new()
                .max_connections(8)
                .connect(&url)
                .await?,
        ),
        Err(_) => {
            eprintln!("PostgreSQL: skipped (MQ_TEST_POSTGRES_URL is unset)");
            None
        }
    };
    let mut rows = Vec::new();
    for (broker, url) in &brokers {
        rows.push(bench("SQLite", sqlite.clone(), broker, url, n, pairs).await?);
        if let Some(pg) = &postgres {
            rows.push(bench("PostgreSQL", pg.clone(), broker, url, n, pairs).await?);
        }
    }
    println!("\n{n} messages of 100 bytes per run, {pairs} interleaved pairs (direct, relay):\n");
    println!("| database | broker | direct pipelined msg/s | relay msg/s | relay/direct (median) | spread | outbox writes rows/s |");
    println!("|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}
