//! The relay killed with `kill -9` at random points over 10,000 messages
//! loses none, and every duplicate carries its original message id.
//!
//! The test re-executes its own binary as the relay process (`kill_child`,
//! selected by `MQ_OUTBOX_KILL_CHILD`), kills it with SIGKILL after a
//! random 100-700 ms, starts a new one, and so on; the last one runs until
//! no row is pending. A consumer in this process receives everything from
//! RabbitMQ (`MQ_TEST_RABBIT_URL`; `memory://` cannot cross processes, so
//! the test is skipped with the reason printed when it is unset). Runs on
//! SQLite (a temp file shared by both processes) and on PostgreSQL when
//! `MQ_TEST_POSTGRES_URL` is set. Prints
//! `kill -9 <db>: sent S, kills K, confirmed C, received R, lost 0, duplicates D`.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{say, unique};
use mq::{Consumer, Message};
use mq_outbox::sqlx::{Pool, Postgres, Sqlite};
use mq_outbox::{Outbox, OutboxConfig, OutboxDatabase};
use tokio_util::sync::CancellationToken;

/// Selects the child mode; its value is `sqlite` or `postgres`.
const CHILD_ENV: &str = "MQ_OUTBOX_KILL_CHILD";
/// The database URL, the broker URL and the table the child uses.
const DB_ENV: &str = "MQ_OUTBOX_KILL_DB";
const BROKER_ENV: &str = "MQ_OUTBOX_KILL_BROKER";
const TABLE_ENV: &str = "MQ_OUTBOX_KILL_TABLE";

const MESSAGES: usize = 10_000;
const KILLS: usize = 6;
/// Short, so the next relay takes over a killed one's rows quickly.
const LEASE: Duration = Duration::from_secs(1);

fn config(table: &str) -> OutboxConfig {
    OutboxConfig::new()
        .table(table)
        .expect("table")
        .lease(LEASE)
        .batch_size(200)
        .max_poll_interval(Duration::from_millis(50))
}

/// The child: a relay that runs until it is killed. A no-op in a normal run.
#[test]
fn kill_child() {
    let Ok(db) = std::env::var(CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let db_url = std::env::var(DB_ENV).expect("db url");
        let broker = std::env::var(BROKER_ENV).expect("broker url");
        let table = std::env::var(TABLE_ENV).expect("table");
        let client = mq::connect(&broker).await.expect("broker");
        let result = if db == "sqlite" {
            let pool = common::sqlite_pool(&db_url, 4).await;
            let outbox = Outbox::new(pool, config(&table)).expect("outbox");
            outbox.relay(client).run(CancellationToken::new()).await
        } else {
            let pool = Pool::<Postgres>::connect(&db_url).await.expect("postgres");
            let outbox = Outbox::new(pool, config(&table)).expect("outbox");
            outbox.relay(client).run(CancellationToken::new()).await
        };
        say(&format!("kill child: relay ended: {result:?}"));
    });
    std::process::exit(3);
}

fn random_ms(low: u64, high: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    low + nanos % (high - low)
}

/// Runs the scenario on `pool`'s database in table `table`; `confirmed`
/// counts the rows marked sent afterwards.
async fn run<DB: OutboxDatabase>(
    name: &str,
    pool: Pool<DB>,
    db_url: &str,
    broker: &str,
    table: &str,
    confirmed: impl std::future::Future<Output = i64>,
) {
    let queue = unique("kill_q");
    let outbox = Outbox::new(pool.clone(), config(table)).expect("outbox");
    outbox.migrate().await.expect("migrate");
    let client = mq::connect(broker).await.expect("broker");
    let mut consumer = client.consumer(&queue).await.expect("consumer");

    let mut sent: HashMap<String, String> = HashMap::with_capacity(MESSAGES);
    for chunk in 0..MESSAGES / 500 {
        let mut tx = pool.begin().await.expect("begin");
        for i in chunk * 500..(chunk + 1) * 500 {
            let m = Message::new(i.to_string()).with_key(format!("k{}", i % 1000));
            sent.insert(m.id().to_owned(), i.to_string());
            outbox.send(&mut tx, &queue, m).await.expect("send");
        }
        tx.commit().await.expect("commit");
    }

    let receiver = tokio::spawn(async move {
        let mut got: Vec<(String, String)> = Vec::new();
        let mut unique = std::collections::HashSet::new();
        loop {
            // Once every message arrived, only late duplicates are awaited.
            let quiet = if unique.len() >= MESSAGES { 1 } else { 8 };
            match tokio::time::timeout(Duration::from_secs(quiet), consumer.receive()).await {
                Ok(Ok(d)) => {
                    unique.insert(d.id().to_owned());
                    got.push((d.id().to_owned(), d.text().unwrap_or("?").to_owned()));
                    d.ack().await.expect("ack");
                }
                Ok(Err(e)) => panic!("receive: {e}"),
                Err(_) => return got,
            }
        }
    });

    let started = Instant::now();
    let spawn = || {
        Command::new(std::env::current_exe().expect("own binary"))
            .args(["kill_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, name)
            .env(DB_ENV, db_url)
            .env(BROKER_ENV, broker)
            .env(TABLE_ENV, table)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn relay")
    };
    let mut kills = 0;
    let mut pending_at_kill = Vec::new();
    while kills < KILLS {
        let mut child = spawn();
        tokio::time::sleep(Duration::from_millis(random_ms(100, 700))).await;
        child.kill().expect("kill -9"); // SIGKILL
        let _ = child.wait();
        kills += 1;
        pending_at_kill.push(outbox.pending().await.expect("pending").rows);
    }
    // The last relay runs until nothing is pending, then dies the same way.
    let mut child = spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    while outbox.pending().await.expect("pending").rows > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().expect("kill -9");
    let _ = child.wait();
    let relayed_in = started.elapsed();

    let got = receiver.await.expect("receiver");
    let confirmed = confirmed.await;
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut foreign = 0;
    for (id, payload) in &got {
        *seen.entry(id.as_str()).or_default() += 1;
        // A duplicate is the same message: its id maps to its own payload.
        if sent.get(id) != Some(payload) {
            foreign += 1;
        }
    }
    let lost = sent
        .keys()
        .filter(|id| !seen.contains_key(id.as_str()))
        .count();
    let duplicates = got.len() - seen.len();
    say(&format!(
        "kill -9 {name}: sent {MESSAGES}, kills {kills} (pending rows at each: {pending_at_kill:?}), confirmed {confirmed}, received {}, lost {lost}, duplicates {duplicates} (all with their original id: {}), relayed in {relayed_in:?}",
        got.len(),
        foreign == 0
    ));
    assert_eq!(lost, 0, "lost messages");
    assert_eq!(foreign, 0, "a received message is not one that was sent");
    assert_eq!(confirmed, MESSAGES as i64);
    assert!(
        pending_at_kill
            .iter()
            .any(|p| *p > 0 && *p < MESSAGES as u64),
        "no kill landed mid-stream: {pending_at_kill:?}"
    );
}

/// Rows of `table` marked sent (evaluated when awaited, after the run).
async fn sent_rows<DB>(pool: &Pool<DB>, table: &str) -> i64
where
    DB: mq_outbox::sqlx::Database,
    for<'c> &'c Pool<DB>: mq_outbox::sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: mq_outbox::sqlx::IntoArguments<'q, DB>,
    usize: mq_outbox::sqlx::ColumnIndex<DB::Row>,
    i64: mq_outbox::sqlx::Type<DB> + for<'r> mq_outbox::sqlx::Decode<'r, DB>,
{
    mq_outbox::sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM \"{table}\" WHERE sent_at IS NOT NULL"
    ))
    .fetch_one(pool)
    .await
    .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_with_sigkill_loses_nothing() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let Ok(broker) = std::env::var("MQ_TEST_RABBIT_URL") else {
        say("kill -9: SKIPPED (MQ_TEST_RABBIT_URL is unset: the relay and the consumer run in different processes, which memory:// cannot span; `bash scripts/brokers.sh start rabbit` exports it)");
        return;
    };
    let tmp = common::TempDb::new("kill");
    let pool = common::sqlite_pool(&tmp.url(), 4).await;
    let table = unique("kill");
    let count = sent_rows::<Sqlite>(&pool, &table);
    run::<Sqlite>("sqlite", pool.clone(), &tmp.url(), &broker, &table, count).await;
    match std::env::var("MQ_TEST_POSTGRES_URL") {
        Ok(url) => {
            let pool = Pool::<Postgres>::connect(&url).await.expect("postgres");
            let table = unique("kill");
            let count = sent_rows::<Postgres>(&pool, &table);
            run::<Postgres>("postgres", pool.clone(), &url, &broker, &table, count).await;
        }
        Err(_) => say("kill -9 postgres: SKIPPED (MQ_TEST_POSTGRES_URL is unset)"),
    }
}
