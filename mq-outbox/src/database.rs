//! What the outbox needs from a database, as one small trait with an
//! implementation per database ([`sqlx::Postgres`] in `postgres.rs`,
//! [`sqlx::Sqlite`] in `sqlite.rs`), so [`Outbox`](crate::Outbox) is typed by
//! the application's own pool and transaction (no `sqlx::Any` and its
//! runtime type mapping).

use async_trait::async_trait;
use sqlx::Pool;

use crate::codec::{NewRow, StoredRow};
use crate::config::OutboxConfig;
use crate::error::Result;
use crate::schema::Dialect;

/// The SQL of one outbox and inbox (table names filled in), built once.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Statements {
    /// Table creation, in order.
    pub ddl: Vec<String>,
    /// Insert one row, returning its id (PostgreSQL: and `NOTIFY`).
    pub insert: String,
    /// Claim up to a batch of rows for one relay, returning them.
    pub claim: String,
    /// Mark rows sent.
    pub mark_sent: String,
    /// Delete sent rows at once (retention zero).
    pub delete_sent: String,
    /// Give claimed rows back, with the time they may be claimed again.
    pub release: String,
    /// Delete rows sent before a time, a bounded number at a time.
    pub purge: String,
    /// Count the pending rows and find the oldest.
    pub pending: String,
    /// Insert an inbox mark unless it exists.
    pub inbox_mark: String,
    /// Delete inbox marks older than a time.
    pub inbox_purge: String,
    /// The `NOTIFY` channel (PostgreSQL).
    pub channel: String,
}

/// How many rows one purge statement deletes (a long purge runs in steps
/// instead of one long lock).
pub const PURGE_STEP: i64 = 10_000;

/// A wake-up source for the relay: PostgreSQL `LISTEN`. SQLite has none
/// (the relay polls).
#[derive(Debug)]
#[non_exhaustive]
pub enum Listener {
    /// A dedicated connection listening on the outbox's channel.
    Postgres(sqlx::postgres::PgListener),
}

impl Listener {
    /// Waits for the next notification. After a lost connection the
    /// listener reconnects (notifications in between are lost; the relay
    /// polls anyway).
    pub async fn recv(&mut self) -> Result<()> {
        match self {
            Listener::Postgres(l) => {
                l.recv().await?;
                while l.next_buffered().is_some() {}
                Ok(())
            }
        }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for sqlx::Postgres {}
    impl Sealed for sqlx::Sqlite {}
}

/// A database the outbox runs on: [`sqlx::Postgres`] or [`sqlx::Sqlite`].
/// Sealed: the SQL is written and tested for these two.
#[async_trait]
pub trait OutboxDatabase: sqlx::Database + sealed::Sealed {
    /// The SQL dialect.
    const DIALECT: Dialect;

    /// The SQL of `config`'s tables.
    fn statements(config: &OutboxConfig) -> Result<Statements>;

    /// Creates the tables if missing.
    async fn migrate(pool: &Pool<Self>, sql: &Statements) -> Result<()>;

    /// Inserts `row` on `conn` (the caller's transaction); returns its id.
    async fn insert(conn: &mut Self::Connection, sql: &Statements, row: &NewRow) -> Result<i64>;

    /// Claims up to `limit` rows for `owner` until `lease_until` (ms): the
    /// oldest pending rows whose key has no earlier pending row held by
    /// anyone else, each key's rows in id order.
    async fn claim(
        pool: &Pool<Self>,
        sql: &Statements,
        owner: &str,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<StoredRow>>;

    /// Marks `ids` sent at `now` (or deletes them when `delete`).
    async fn mark_sent(
        pool: &Pool<Self>,
        sql: &Statements,
        ids: &[i64],
        now: i64,
        delete: bool,
    ) -> Result<()>;

    /// Gives `ids` held by `owner` back, claimable from `available_at`, with
    /// `error` recorded when given.
    async fn release(
        pool: &Pool<Self>,
        sql: &Statements,
        ids: &[i64],
        owner: &str,
        available_at: i64,
        error: Option<&str>,
    ) -> Result<()>;

    /// Deletes up to [`PURGE_STEP`] rows sent before `before` (ms); returns how many.
    async fn purge(pool: &Pool<Self>, sql: &Statements, before: i64) -> Result<u64>;

    /// The number of pending rows and the `created_at` of the oldest.
    async fn pending(pool: &Pool<Self>, sql: &Statements) -> Result<(i64, Option<i64>)>;

    /// Writes the inbox mark of (`consumer`, `message_id`) on `conn` unless
    /// it exists; `true` when written (first time), `false` for a duplicate.
    /// A concurrent transaction holding the same mark makes this wait for it.
    async fn inbox_mark(
        conn: &mut Self::Connection,
        sql: &Statements,
        consumer: &str,
        message_id: &str,
        now: i64,
    ) -> Result<bool>;

    /// Deletes inbox marks written before `before` (ms); returns how many.
    async fn inbox_purge(pool: &Pool<Self>, sql: &Statements, before: i64) -> Result<u64>;

    /// A listener woken when rows are committed, if the database has one.
    async fn listen(pool: &Pool<Self>, sql: &Statements) -> Result<Option<Listener>>;
}
