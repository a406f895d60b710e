//! The outbox, the relay and the inbox against real databases: SQLite
//! always (a temp file), PostgreSQL when `MQ_TEST_POSTGRES_URL` is set
//! (skipped with the reason printed otherwise), on `memory://` brokers.
//!
//! Each test prints its numbers (sent, confirmed, lost, duplicates,
//! effects applied). Run: `cargo test -p mq-outbox --test outbox -- --nocapture`.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{drain, say, unique};
use mq::{layer_fn, HandlerError, Message, ProducerExt, Received, Worker};
use mq_outbox::{Outbox, OutboxConfig};
use tokio_util::sync::CancellationToken;

/// Publishes until a round finds nothing pending.
async fn relay_all<DB: mq_outbox::OutboxDatabase>(relay: &mut mq_outbox::Relay<DB>) -> usize {
    let mut total = 0;
    loop {
        let n = relay.run_once().await.expect("relay round");
        if n == 0 {
            return total;
        }
        total += n;
    }
}

macro_rules! suite {
    ($db:ident, $conn:ty, $pool:expr, $notifies:expr) => {
        mod $db {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rollback_sends_nothing_and_commit_sends_exactly_the_rows() {
                let tmp = common::TempDb::new("rollback");
                let Some(pool) = $pool(&tmp, "rollback").await else { return };
                let table = unique("outbox");
                let config = OutboxConfig::new().table(&table).unwrap().inbox_table(&unique("inbox")).unwrap();
                let outbox = Outbox::new(pool.clone(), config).unwrap();
                outbox.migrate().await.unwrap();
                outbox.migrate().await.expect("migrate twice");
                let url = format!("memory://{table}");
                let client = mq::connect(&url).await.unwrap();
                let queue = unique("orders");
                let mut consumer = client.consumer(&queue).await.unwrap();

                let mut tx = pool.begin().await.unwrap();
                for i in 0..50 {
                    outbox.send(&mut tx, &queue, Message::new(format!("rolled back {i}"))).await.unwrap();
                }
                tx.rollback().await.unwrap();

                let mut committed: HashMap<String, Message> = HashMap::new();
                let mut tx = pool.begin().await.unwrap();
                for i in 0..100u32 {
                    let m = Message::new(vec![i as u8, 0, 255])
                        .with_key(format!("k{}", i % 7))
                        .with_header("n", i.to_string())
                        .with_header("Mixed-Case", "ü")
                        .with_content_type("application/octet-stream");
                    committed.insert(m.id().to_owned(), m.clone());
                    outbox.send(&mut tx, &queue, m).await.unwrap();
                }
                tx.commit().await.unwrap();
                assert_eq!(outbox.pending().await.unwrap().rows, 100);

                let mut relay = outbox.relay(client.clone());
                let relayed = relay_all(&mut relay).await;
                let got = drain(&mut consumer, 100, Duration::from_secs(5)).await;
                let ids: HashSet<&str> = got.iter().map(|r| r.id()).collect();
                let lost = committed.keys().filter(|id| !ids.contains(id.as_str())).count();
                let duplicates = got.len() - ids.len();
                say(&format!(
                    "rollback/commit {}: rolled back 50, committed 100, relayed {relayed}, received {}, lost {lost}, duplicates {duplicates}",
                    stringify!($db), got.len()
                ));
                assert_eq!(got.len(), 100, "exactly the committed rows");
                assert_eq!((lost, duplicates), (0, 0));
                for r in &got {
                    let sent = &committed[r.id()];
                    assert_eq!(r.payload(), sent.payload());
                    assert_eq!(r.key(), sent.key());
                    assert_eq!(r.content_type(), sent.content_type());
                    for (k, v) in sent.headers().iter() {
                        assert_eq!(r.headers().get(k), Some(v), "header {k}");
                    }
                }
                assert_eq!(outbox.pending().await.unwrap().rows, 0);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn two_relays_never_publish_a_row_twice_and_keep_key_order() {
                const N: usize = 2_000;
                // Enough keys that one relay's batch does not hold every key's head
                // (a key is one relay's at a time); every third row has no key.
                const KEYS: usize = 300;
                let tmp = common::TempDb::new("two");
                let Some(pool) = $pool(&tmp, "two relays").await else { return };
                let table = unique("outbox");
                let config = OutboxConfig::new()
                    .table(&table).unwrap()
                    .batch_size(64)
                    .retention(Duration::ZERO)
                    .max_poll_interval(Duration::from_millis(20));
                let outbox = Outbox::new(pool.clone(), config).unwrap();
                outbox.migrate().await.unwrap();
                let client = mq::connect(&format!("memory://{table}")).await.unwrap();
                let queue = unique("events");
                let mut consumer = client.consumer(&queue).await.unwrap();

                let stop = CancellationToken::new();
                let a = tokio::spawn(outbox.relay(client.clone()).run(stop.clone()));
                let b = tokio::spawn(outbox.relay(client.clone()).run(stop.clone()));
                // Written while both relays run, in transactions of 20.
                for chunk in 0..N / 20 {
                    let mut tx = pool.begin().await.unwrap();
                    for i in chunk * 20..(chunk + 1) * 20 {
                        let m = Message::new(i.to_string());
                        let m = if i % 3 == 0 { m } else { m.with_key(format!("key-{}", i % KEYS)) };
                        outbox.send(&mut tx, &queue, m).await.unwrap();
                    }
                    tx.commit().await.unwrap();
                    outbox.wake();
                }
                let got = drain(&mut consumer, N, Duration::from_secs(10)).await;
                stop.cancel();
                let ra = a.await.unwrap().unwrap();
                let rb = b.await.unwrap().unwrap();
                let ids: HashSet<&str> = got.iter().map(|r| r.id()).collect();
                let duplicates = got.len() - ids.len();
                let mut last: HashMap<String, i64> = HashMap::new();
                let mut out_of_order = 0;
                for r in &got {
                    let n: i64 = r.text().unwrap().parse().unwrap();
                    let Some(key) = r.key().map(str::to_owned) else { continue };
                    if last.get(&key).is_some_and(|prev| *prev > n) {
                        out_of_order += 1;
                    }
                    last.insert(key, n);
                }
                say(&format!(
                    "two relays {}: written {N}, relay A sent {} in {} rounds, relay B sent {} in {} rounds, received {}, lost {}, duplicates {duplicates}, out of key order {out_of_order}",
                    stringify!($db), ra.sent, ra.rounds, rb.sent, rb.rounds, got.len(), N - ids.len()
                ));
                assert_eq!(ra.sent + rb.sent, N as u64);
                assert_eq!((got.len(), duplicates, out_of_order), (N, 0, 0));
                assert_eq!(outbox.pending().await.unwrap().rows, 0);
                // Retention zero: confirmed rows are deleted.
                let left: i64 = mq_outbox::sqlx::query_scalar(&format!("SELECT COUNT(*) FROM \"{table}\""))
                    .fetch_one(&pool).await.unwrap();
                assert_eq!(left, 0);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_idle_relay_wakes_on_commit() {
                let tmp = common::TempDb::new("wake");
                let Some(pool) = $pool(&tmp, "wake").await else { return };
                let table = unique("outbox");
                // Polls only every 30 s: a delivery within 3 s was woken.
                let config = OutboxConfig::new().table(&table).unwrap().max_poll_interval(Duration::from_secs(30));
                let outbox = Outbox::new(pool.clone(), config).unwrap();
                outbox.migrate().await.unwrap();
                let client = mq::connect(&format!("memory://{table}")).await.unwrap();
                let queue = unique("wake");
                let mut consumer = client.consumer(&queue).await.unwrap();
                let stop = CancellationToken::new();
                let relay = tokio::spawn(outbox.relay(client.clone()).run(stop.clone()));
                tokio::time::sleep(Duration::from_millis(500)).await; // idle by now
                let mut tx = pool.begin().await.unwrap();
                outbox.send(&mut tx, &queue, Message::new("wake up")).await.unwrap();
                tx.commit().await.unwrap();
                let how = if $notifies { "LISTEN/NOTIFY" } else { outbox.wake(); "Outbox::wake" };
                let started = std::time::Instant::now();
                let got = tokio::time::timeout(Duration::from_secs(3), mq::Consumer::receive(&mut consumer)).await;
                say(&format!("wake {}: by {how} in {:?}", stringify!($db), started.elapsed()));
                got.expect("not woken").unwrap().ack().await.unwrap();
                stop.cancel();
                relay.await.unwrap().unwrap();
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn inbox_applies_every_effect_exactly_once_under_redelivery() {
                const N: usize = 10_000;
                const RESENT: usize = 500;
                let tmp = common::TempDb::new("inbox");
                let Some(pool) = $pool(&tmp, "inbox").await else { return };
                let inbox_table = unique("inbox");
                let effects = unique("effects");
                let config = OutboxConfig::new().table(&unique("outbox")).unwrap().inbox_table(&inbox_table).unwrap();
                let outbox = Outbox::new(pool.clone(), config).unwrap();
                outbox.migrate().await.unwrap();
                mq_outbox::sqlx::query(&format!("CREATE TABLE \"{effects}\" (id TEXT PRIMARY KEY, n BIGINT NOT NULL)"))
                    .execute(&pool).await.unwrap();

                let client = mq::connect(&format!("memory://{effects}")).await.unwrap();
                let queue = unique("jobs");
                let producer = client.producer().await.unwrap();
                let mut pipeline = producer.pipeline(256);
                let mut sent = Vec::with_capacity(N);
                for i in 0..N {
                    let m = Message::new(i.to_string());
                    sent.push(m.clone());
                    pipeline.send(&queue, m).await;
                }
                // The broker delivering some messages twice.
                for m in sent.iter().step_by(N / RESENT) {
                    pipeline.send(&queue, m.clone()).await;
                }
                let confirmed = pipeline.finish().await.into_result().unwrap();

                let upsert = format!(
                    "INSERT INTO \"{effects}\" (id, n) VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET n = \"{effects}\".n + 1"
                );
                let inbox = outbox.inbox("read-model");
                let handler = inbox.handler(move |msg: Received, tx: &mut $conn| {
                    let upsert = upsert.clone();
                    Box::pin(async move {
                        mq_outbox::sqlx::query(&upsert).bind(msg.id()).execute(&mut *tx).await?;
                        let n: usize = msg.text()?.parse().map_err(HandlerError::permanent)?;
                        // Fails before the commit: rolled back, redelivered.
                        if n % 17 == 0 && msg.attempt() == 1 {
                            return Err(HandlerError::transient("failed before commit"));
                        }
                        Ok(())
                    })
                });
                // Fails after the commit (outside the inbox): redelivered, found marked.
                let after_commit = layer_fn(|msg: Received, next| async move {
                    let n: usize = msg.text()?.parse().map_err(HandlerError::permanent)?;
                    let first = msg.attempt() == 1;
                    next.call(msg).await?;
                    if n % 13 == 0 && first {
                        return Err(HandlerError::transient("failed after commit"));
                    }
                    Ok(())
                });
                let consumer = client.consumer(&queue).await.unwrap();
                let worker = Worker::new(consumer, handler).layer(after_commit).concurrency(8);
                let stats = worker.stats();
                let stop = CancellationToken::new();
                let started = std::time::Instant::now();
                let run = tokio::spawn(worker.run(stop.clone()));
                let deliveries = (N + RESENT) as u64;
                let deadline = started + Duration::from_secs(60);
                while stats.snapshot().acked < deliveries && std::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                stop.cancel();
                let report = run.await.unwrap().unwrap();
                let (rows, total, max): (i64, Option<i64>, Option<i64>) = mq_outbox::sqlx::query_as(
                    &format!("SELECT COUNT(*), CAST(SUM(n) AS BIGINT), MAX(n) FROM \"{effects}\""),
                ).fetch_one(&pool).await.unwrap();
                let marks: i64 = mq_outbox::sqlx::query_scalar(&format!("SELECT COUNT(*) FROM \"{inbox_table}\""))
                    .fetch_one(&pool).await.unwrap();
                say(&format!(
                    "inbox {}: sent {N} + {RESENT} resent, confirmed {confirmed}, received {} (nacked {}), acked {}, effects applied {} (rows {rows}, largest per message {}), marks {marks}, lost {}, in {:?}",
                    stringify!($db), report.received, report.nacked, report.acked, total.unwrap_or(0), max.unwrap_or(0),
                    N as i64 - rows, started.elapsed()
                ));
                assert_eq!(report.acked, deliveries);
                assert!(report.nacked > 0, "no redelivery happened");
                assert_eq!(rows, N as i64, "every message applied");
                assert_eq!(total, Some(N as i64), "each exactly once");
                assert_eq!(max, Some(1));
                assert_eq!(marks, N as i64);
            }
        }
    };
}

async fn sqlite(tmp: &common::TempDb, _test: &str) -> Option<mq_outbox::sqlx::SqlitePool> {
    Some(common::sqlite_pool(&tmp.url(), 8).await)
}

async fn postgres(_tmp: &common::TempDb, test: &str) -> Option<mq_outbox::sqlx::PgPool> {
    common::postgres_pool(test).await
}

suite!(sqlite, mq_outbox::sqlx::SqliteConnection, sqlite, false);
suite!(postgres, mq_outbox::sqlx::PgConnection, postgres, true);
