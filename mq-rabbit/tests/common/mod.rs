//! Helpers shared by the integration tests: the broker URL, unique names,
//! a raw lapin connection (to act as another application would) and cleanup.
#![allow(dead_code)]

use std::time::Duration;

use mq_core::{Consumer, Delivery};
use mq_rabbit::lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use mq_rabbit::lapin::{Channel, Connection, ConnectionProperties};

/// The broker under test, from `MQ_TEST_RABBIT_URL`; `None` (and a loud
/// message) when it is unset, so the test skips.
pub fn url(test: &str) -> Option<String> {
    match std::env::var("MQ_TEST_RABBIT_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!(
                "SKIPPED {test}: MQ_TEST_RABBIT_URL is not set \
                 (eval \"$(scripts/brokers.sh start rabbit)\")"
            );
            None
        }
    }
}

/// `url` with `options` added to its query string.
pub fn with(url: &str, options: &str) -> String {
    if url.contains('?') {
        format!("{url}&{options}")
    } else {
        format!("{url}?{options}")
    }
}

/// A fresh name for this test's queues and exchanges.
pub fn unique(base: &str) -> String {
    format!(
        "mqt-rabbit-{base}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A plain lapin connection, as another application would open.
pub async fn raw(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("raw lapin connection")
}

/// A fresh channel on `conn` (a failed declaration closes its channel).
pub async fn channel(conn: &Connection) -> Channel {
    conn.create_channel().await.expect("raw channel")
}

/// Deletes `queues` and `exchanges` (those that exist), each on a channel of its own.
pub async fn cleanup(url: &str, queues: &[&str], exchanges: &[&str]) {
    let deleting = async {
        let conn = raw(url).await;
        for q in queues {
            let ch = channel(&conn).await;
            let _ = ch
                .queue_delete((*q).into(), QueueDeleteOptions::default())
                .await;
        }
        for x in exchanges {
            let ch = channel(&conn).await;
            let _ = ch
                .exchange_delete((*x).into(), ExchangeDeleteOptions::default())
                .await;
        }
        close_raw(conn).await;
    };
    if tokio::time::timeout(RAW_LIMIT * 4, deleting).await.is_err() {
        eprintln!(
            "cleanup of {queues:?} did not finish within {:?}; left to the broker",
            RAW_LIMIT * 4
        );
    }
}

/// How long a raw connection's close may take before the test goes on.
const RAW_LIMIT: Duration = Duration::from_secs(5);

/// Closes a raw lapin connection, waiting at most [`RAW_LIMIT`]. lapin's
/// `close` can wait forever once its I/O loop has ended: a CI run hung
/// after every assertion of a test had passed, awaiting the close of its
/// cleanup connection, whose socket was already gone (the broker logged
/// "client unexpectedly closed TCP connection").
pub async fn close_raw(conn: Connection) {
    if tokio::time::timeout(RAW_LIMIT, conn.close(200, "done".into()))
        .await
        .is_err()
    {
        eprintln!("closing a raw RabbitMQ connection took over {RAW_LIMIT:?}; dropped it");
    }
}

/// The next delivery, or `None` if none comes within `wait`.
pub async fn next(consumer: &mut Box<dyn Consumer>, wait: Duration) -> Option<Delivery> {
    match tokio::time::timeout(wait, consumer.receive()).await {
        Ok(Ok(d)) => Some(d),
        Ok(Err(e)) => panic!("receive failed: {e}"),
        Err(_) => None,
    }
}
