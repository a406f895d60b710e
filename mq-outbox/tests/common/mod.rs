//! Helpers shared by the outbox tests: databases, unique names, draining.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use mq::{Consumer, DynConsumer, Received};
use mq_outbox::sqlx::postgres::{PgPool, PgPoolOptions};
use mq_outbox::sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// Prints past the test harness's output capture.
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A name for tables and queues no other run uses (letters, digits, `_`).
pub fn unique(prefix: &str) -> String {
    let id = mq::message::new_message_id().replace('-', "");
    format!("{prefix}_{}", &id[id.len() - 12..])
}

/// A SQLite database file in the temp dir, removed on drop.
pub struct TempDb {
    pub path: PathBuf,
}

impl TempDb {
    pub fn new(prefix: &str) -> Self {
        TempDb {
            path: std::env::temp_dir().join(format!("{}.db", unique(prefix))),
        }
    }

    pub fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A pool on `url` (a SQLite file): WAL, `synchronous = NORMAL`, a long busy
/// timeout (writers wait for each other, as in an application).
pub async fn sqlite_pool(url: &str, max: u32) -> SqlitePool {
    let options = SqliteConnectOptions::from_str(url)
        .expect("sqlite url")
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(30));
    SqlitePoolOptions::new()
        .max_connections(max)
        .connect_with(options)
        .await
        .expect("sqlite pool")
}

/// The PostgreSQL of `MQ_TEST_POSTGRES_URL`, or `None` with the reason printed.
pub async fn postgres_pool(test: &str) -> Option<PgPool> {
    let Ok(url) = std::env::var("MQ_TEST_POSTGRES_URL") else {
        say(&format!(
            "{test} postgres: SKIPPED (MQ_TEST_POSTGRES_URL is unset; `bash scripts/brokers.sh start postgres` exports it)"
        ));
        return None;
    };
    Some(
        PgPoolOptions::new()
            .max_connections(16)
            .connect(&url)
            .await
            .expect("MQ_TEST_POSTGRES_URL does not connect"),
    )
}

/// Receives and acks until `expected` deliveries arrived or nothing came
/// for `quiet`; returns what arrived.
pub async fn drain(consumer: &mut DynConsumer, expected: usize, quiet: Duration) -> Vec<Received> {
    let mut got = Vec::new();
    while got.len() < expected {
        match tokio::time::timeout(quiet, consumer.receive()).await {
            Ok(Ok(delivery)) => {
                got.push(delivery.received().clone());
                delivery.ack().await.expect("ack");
            }
            Ok(Err(e)) => panic!("receive: {e}"),
            Err(_) => break,
        }
    }
    // Anything beyond `expected` (a duplicate) within a short grace.
    while let Ok(Ok(delivery)) =
        tokio::time::timeout(Duration::from_millis(200), consumer.receive()).await
    {
        got.push(delivery.received().clone());
        delivery.ack().await.expect("ack");
    }
    got
}
