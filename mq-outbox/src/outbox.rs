//! The outbox: messages written in the application's own transaction.

use std::fmt;
use std::sync::Arc;

use mq_core::observe::trace;
use mq_core::Message;
use sqlx::Pool;
use tokio::sync::Notify;
use tracing::Instrument;

use crate::codec::NewRow;
use crate::config::{now_millis, OutboxConfig};
use crate::database::{OutboxDatabase, Statements};
use crate::error::{Error, Result};

/// A transactional outbox on the database of `pool`: [`Outbox::send`] writes
/// a message in the caller's transaction, a [`Relay`](crate::Relay)
/// (`outbox.relay(client)`) publishes it after the commit. Cheap to clone.
pub struct Outbox<DB: OutboxDatabase> {
    shared: Arc<Shared<DB>>,
}

struct Shared<DB: OutboxDatabase> {
    pool: Pool<DB>,
    config: OutboxConfig,
    sql: Statements,
    wake: Notify,
}

/// The pending rows of an outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Pending {
    /// Rows not yet confirmed by the broker.
    pub rows: u64,
    /// `created_at` of the oldest (milliseconds since the Unix epoch).
    pub oldest_created_at: Option<i64>,
}

impl<DB: OutboxDatabase> Outbox<DB> {
    /// An outbox on `pool` with `config`'s tables (create them with
    /// [`Outbox::migrate`] or your own migrations, see [`crate::schema`]).
    pub fn new(pool: Pool<DB>, config: OutboxConfig) -> Result<Self> {
        let sql = DB::statements(&config)?;
        Ok(Outbox {
            shared: Arc::new(Shared {
                pool,
                config,
                sql,
                wake: Notify::new(),
            }),
        })
    }

    /// Creates the outbox and inbox tables and their indexes if missing.
    pub async fn migrate(&self) -> Result<()> {
        DB::migrate(&self.shared.pool, &self.shared.sql).await
    }

    /// Writes `message` for `destination` on `conn`, normally the caller's
    /// open transaction (`&mut tx`): the message is published if and only if
    /// that transaction commits. Returns the row id.
    ///
    /// The whole message is stored (id, key, headers, payload, content type,
    /// delay, dedup id); the relay publishes it with the same id. Also
    /// records the current span's trace context in the headers (`otel`), so
    /// the trace continues from the request that wrote the row.
    pub async fn send(
        &self,
        conn: &mut DB::Connection,
        destination: &str,
        mut message: Message,
    ) -> Result<i64> {
        let span = tracing::info_span!(
            "outbox.send",
            otel.name = %format_args!("outbox send {destination}"),
            otel.kind = "producer",
            messaging.destination.name = destination,
            messaging.message.id = message.id(),
            outbox.table = %self.shared.config.table,
        );
        trace::inject(&span, message.headers_mut());
        let row = NewRow::new(destination, message, now_millis())?;
        DB::insert(conn, &self.shared.sql, &row)
            .instrument(span)
            .await
    }

    /// [`Outbox::send`] of `value` as JSON (content type `application/json`).
    pub async fn send_json<T: serde::Serialize + ?Sized>(
        &self,
        conn: &mut DB::Connection,
        destination: &str,
        value: &T,
    ) -> Result<i64> {
        let message = Message::json(value).map_err(|e| Error::Encode(e.to_string()))?;
        self.send(conn, destination, message).await
    }

    /// Wakes this process's relays now (call it after a commit to skip their
    /// poll interval; PostgreSQL relays are woken by `NOTIFY` anyway).
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// Counts the pending rows.
    pub async fn pending(&self) -> Result<Pending> {
        let (rows, oldest) = DB::pending(&self.shared.pool, &self.shared.sql).await?;
        Ok(Pending {
            rows: u64::try_from(rows).unwrap_or(0),
            oldest_created_at: oldest,
        })
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<DB> {
        &self.shared.pool
    }

    /// The configuration.
    pub fn config(&self) -> &OutboxConfig {
        &self.shared.config
    }

    pub(crate) fn statements(&self) -> &Statements {
        &self.shared.sql
    }

    pub(crate) async fn woken(&self) {
        self.shared.wake.notified().await;
    }
}

impl<DB: OutboxDatabase> Clone for Outbox<DB> {
    fn clone(&self) -> Self {
        Outbox {
            shared: self.shared.clone(),
        }
    }
}

impl<DB: OutboxDatabase> fmt::Debug for Outbox<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("dialect", &DB::DIALECT)
            .field("config", &self.shared.config)
            .finish()
    }
}
