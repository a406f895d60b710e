//! Order service: an order row and its `order-created` message written in
//! one database transaction (transactional outbox), a relay publishing the
//! message after the commit, and a consumer updating a read model exactly
//! once through the inbox.
//!
//! ```sh
//! cargo run -p mq-examples --example order_service               # memory:// and a SQLite temp file
//! cargo run -p mq-examples --example order_service -- memory:// postgres://postgres@127.0.0.1:5432/postgres
//! cargo run -p mq-examples --example order_service --features rabbit -- amqp://guest:guest@127.0.0.1:5672/%2f
//! ```
//!
//! The first argument is the broker URL (default `memory://orders`), the
//! second the database URL (default: `MQ_OUTBOX_DATABASE_URL`, else a fresh
//! SQLite file in the temp dir); `postgres://` selects PostgreSQL. Every
//! run uses fresh table and queue names.
//!
//! What it shows:
//!
//! - **No dual write**: `place_order` inserts the order and calls
//!   `outbox.send(&mut tx, ...)` in the same transaction. An order whose
//!   payment is declined rolls back: neither the row nor the message exist.
//! - **A relay** (`outbox.relay(client).run(token)`) publishes committed
//!   rows, keyed by customer so each customer's events stay in order.
//! - **Exactly-once effects** (`outbox.inbox("read-model").handler(...)`):
//!   the read model's update and the inbox mark commit together. The broker
//!   redelivering a message (here: some events sent twice, and a failure
//!   after the commit for every tenth) finds the mark and changes nothing.
//!
//! At the end it checks that the read model equals the orders table (count
//! and sum per customer), prints a summary and the line `order_service OK:`,
//! and exits with status 1 if anything differs.

use std::error::Error;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};

use mq::outbox::sqlx::postgres::PgPoolOptions;
use mq::outbox::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use mq::outbox::sqlx::{self, PgConnection, Pool, Postgres, Sqlite, SqliteConnection};
use mq::outbox::{Outbox, OutboxConfig, OutboxDatabase};
use mq::{layer_fn, CancellationToken, HandlerError, Message, Producer, Received, Worker};
use serde::{Deserialize, Serialize};

const ORDERS: i64 = 200;
const CUSTOMERS: i64 = 12;
const DEADLINE: Duration = Duration::from_secs(60);

/// The event the order service publishes.
#[derive(Debug, Serialize, Deserialize)]
struct OrderCreated {
    order: i64,
    customer: String,
    total_cents: i64,
}

/// Fresh table and queue names of one run.
struct Names {
    orders: String,
    totals: String,
    queue: String,
}

type AnyError = Box<dyn Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let broker = args.next().unwrap_or_else(|| "memory://orders".to_owned());
    let database = args
        .next()
        .or_else(|| std::env::var("MQ_OUTBOX_DATABASE_URL").ok());
    match run(&broker, database).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("order_service failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(broker: &str, database: Option<String>) -> Result<bool, AnyError> {
    let client = mq::connect(broker).await?;
    let run_id = mq::message::new_message_id().replace('-', "");
    let run_id = &run_id[run_id.len() - 10..];
    let names = Names {
        orders: format!("orders_{run_id}"),
        totals: format!("customer_totals_{run_id}"),
        queue: format!("order-created-{run_id}"),
    };
    let config = OutboxConfig::new()
        .table(&format!("outbox_{run_id}"))?
        .inbox_table(&format!("inbox_{run_id}"))?
        .max_poll_interval(Duration::from_millis(100));
    match database.as_deref() {
        Some(url) if url.starts_with("postgres") => {
            println!("database: PostgreSQL");
            let pool = PgPoolOptions::new().max_connections(8).connect(url).await?;
            let outbox = Outbox::new(pool, config)?;
            let app = Postgresql;
            demo(&app, outbox, client, &names).await
        }
        url => {
            let temp;
            let url = match url {
                Some(u) => u.to_owned(),
                None => {
                    temp = std::env::temp_dir().join(format!("order_service_{run_id}.db"));
                    format!("sqlite://{}", temp.display())
                }
            };
            println!("database: SQLite ({url})");
            let options = SqliteConnectOptions::from_str(&url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal);
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await?;
            let outbox = Outbox::new(pool, config)?;
            let ok = demo(&SqliteApp, outbox, client, &names).await;
            if database.is_none() {
                let path = url.trim_start_matches("sqlite://");
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{path}{suffix}"));
                }
            }
            ok
        }
    }
}

/// The application's own SQL, per database (the outbox's is in mq-outbox).
trait App<DB: OutboxDatabase>: Sync {
    /// Creates the orders and read-model tables.
    async fn create_tables(&self, pool: &Pool<DB>, names: &Names) -> Result<(), AnyError>;
    /// Places one order: the row and its event in one transaction; a
    /// declined payment rolls both back. Returns the event if committed.
    async fn place_order(
        &self,
        outbox: &Outbox<DB>,
        names: &Names,
        order: OrderCreated,
        declined: bool,
    ) -> Result<Option<Message>, AnyError>;
    /// The read-model worker's handler.
    fn handler(&self, outbox: &Outbox<DB>, names: &Names) -> impl mq::Handler;
    /// (orders, sum) of the orders table and of the read model.
    async fn totals(&self, pool: &Pool<DB>, names: &Names) -> Result<[(i64, i64); 2], AnyError>;
}

/// The read model's update: one row per customer, counts and sums.
fn upsert_sql(totals: &str) -> String {
    format!(
        "INSERT INTO {totals} (customer, orders, total_cents) VALUES ($1, 1, $2) \
         ON CONFLICT (customer) DO UPDATE SET orders = {totals}.orders + 1, \
         total_cents = {totals}.total_cents + $2"
    )
}

/// The same SQL on both databases, typed per database: a macro writes the
/// two implementations.
macro_rules! app {
    ($app:ident, $db:ty, $conn:ty) => {
        struct $app;

        impl App<$db> for $app {
            async fn create_tables(&self, pool: &Pool<$db>, n: &Names) -> Result<(), AnyError> {
                sqlx::query(&format!(
                    "CREATE TABLE {} (id BIGINT PRIMARY KEY, customer TEXT NOT NULL, total_cents BIGINT NOT NULL)",
                    n.orders
                ))
                .execute(pool)
                .await?;
                sqlx::query(&format!(
                    "CREATE TABLE {} (customer TEXT PRIMARY KEY, orders BIGINT NOT NULL, total_cents BIGINT NOT NULL)",
                    n.totals
                ))
                .execute(pool)
                .await?;
                Ok(())
            }

            async fn place_order(
                &self,
                outbox: &Outbox<$db>,
                n: &Names,
                order: OrderCreated,
                declined: bool,
            ) -> Result<Option<Message>, AnyError> {
                let mut tx = outbox.pool().begin().await?;
                sqlx::query(&format!("INSERT INTO {} (id, customer, total_cents) VALUES ($1, $2, $3)", n.orders))
                    .bind(order.order)
                    .bind(&order.customer)
                    .bind(order.total_cents)
                    .execute(&mut *tx)
                    .await?;
                let message = Message::json(&order)?.with_key(order.customer.clone());
                outbox.send(&mut tx, &n.queue, message.clone()).await?;
                if declined {
                    tx.rollback().await?; // neither the order nor its event
                    return Ok(None);
                }
                tx.commit().await?;
                outbox.wake(); // this process's relay: publish now
                Ok(Some(message))
            }

            fn handler(&self, outbox: &Outbox<$db>, n: &Names) -> impl mq::Handler {
                let upsert = upsert_sql(&n.totals);
                outbox.inbox("read-model").handler(move |msg: Received, tx: &mut $conn| {
                    let upsert = upsert.clone();
                    Box::pin(async move {
                        let event: OrderCreated = msg.json()?;
                        sqlx::query(&upsert)
                            .bind(&event.customer)
                            .bind(event.total_cents)
                            .execute(&mut *tx)
                            .await?;
                        Ok(())
                    })
                })
            }

            async fn totals(&self, pool: &Pool<$db>, n: &Names) -> Result<[(i64, i64); 2], AnyError> {
                let orders: (i64, Option<i64>) = sqlx::query_as(&format!(
                    "SELECT COUNT(*), CAST(SUM(total_cents) AS BIGINT) FROM {}", n.orders
                ))
                .fetch_one(pool)
                .await?;
                let model: (Option<i64>, Option<i64>) = sqlx::query_as(&format!(
                    "SELECT CAST(SUM(orders) AS BIGINT), CAST(SUM(total_cents) AS BIGINT) FROM {}", n.totals
                ))
                .fetch_one(pool)
                .await?;
                Ok([
                    (orders.0, orders.1.unwrap_or(0)),
                    (model.0.unwrap_or(0), model.1.unwrap_or(0)),
                ])
            }
        }
    };
}

app!(SqliteApp, Sqlite, SqliteConnection);
app!(Postgresql, Postgres, PgConnection);

async fn demo<DB: OutboxDatabase, A: App<DB>>(
    app: &A,
    outbox: Outbox<DB>,
    client: mq::Client,
    names: &Names,
) -> Result<bool, AnyError> {
    let started = Instant::now();
    outbox.migrate().await?;
    app.create_tables(outbox.pool(), names).await?;

    // The relay and the read-model worker run while orders come in.
    let stop = CancellationToken::new();
    let relay = tokio::spawn(outbox.relay(client.clone()).run(stop.clone()));
    // Every tenth event fails after the inbox committed it: the broker
    // redelivers it, the inbox finds its mark and acks without running.
    let after_commit = layer_fn(|msg: Received, next| async move {
        let first = msg.attempt() == 1;
        let order: OrderCreated = msg.json()?;
        next.call(msg).await?;
        if first && order.order % 10 == 0 {
            return Err(HandlerError::transient("connection reset after commit"));
        }
        Ok(())
    });
    let worker = Worker::new(
        client.consumer(&names.queue).await?,
        app.handler(&outbox, names),
    )
    .layer(after_commit)
    .concurrency(4);
    let stats = worker.stats();
    let worker = tokio::spawn(worker.run(stop.clone()));

    let (mut committed, mut declined) = (Vec::new(), 0);
    for id in 1..=ORDERS {
        let order = OrderCreated {
            order: id,
            customer: format!("customer-{}", id % CUSTOMERS),
            total_cents: 1_000 + (id * 37) % 5_000,
        };
        match app.place_order(&outbox, names, order, id % 25 == 0).await? {
            Some(message) => committed.push(message),
            None => declined += 1,
        }
    }
    let placed = committed.len() as i64;
    println!("placed {placed} orders, {declined} declined (rolled back with their events)");

    // The broker delivering some events twice (as after a lost ack): the
    // very messages the relay published, same ids, sent again.
    let published = wait_for(|| async { Ok(outbox.pending().await?.rows == 0) }).await?;
    let producer = client.producer().await?;
    let resent = committed.iter().step_by(20).count();
    for message in committed.iter().step_by(20) {
        producer.send(&names.queue, message.clone()).await?;
    }
    let applied = wait_for(|| async {
        let [orders, model] = app.totals(outbox.pool(), names).await?;
        Ok(orders == model && stats.snapshot().acked >= (placed as usize + resent) as u64)
    })
    .await?;
    stop.cancel();
    let relay = relay.await??;
    let report = worker.await??;
    let [orders, model] = app.totals(outbox.pool(), names).await?;
    println!(
        "relay: {} rows published in {} rounds; worker: received {}, acked {}, nacked {} (failures after commit); deliveries the inbox skipped: {}",
        relay.sent, relay.rounds, report.received, report.acked, report.nacked,
        report.received.saturating_sub(placed as u64)
    );
    println!(
        "orders table: {} orders, {} cents; read model: {} orders, {} cents; {resent} events delivered twice",
        orders.0, orders.1, model.0, model.1
    );
    let ok = published
        && applied
        && orders == model
        && orders.0 == placed
        && relay.sent == placed as u64;
    if ok {
        println!(
            "order_service OK: {placed} orders, {declined} rolled back, every event applied exactly once ({resent} duplicates ignored) in {:?}",
            started.elapsed()
        );
    } else {
        println!("order_service FAILED: the read model differs from the orders table");
    }
    Ok(ok)
}

/// Polls `check` until it holds or [`DEADLINE`] passes.
async fn wait_for<F, Fut>(check: F) -> Result<bool, AnyError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<bool, AnyError>>,
{
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        if check().await? {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(false)
}
