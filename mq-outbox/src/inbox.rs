//! The inbox: a handler wrapper whose done mark is written in the handler's
//! own transaction, so the handler's effects and the mark commit together.
//!
//! For each delivery: begin a transaction, insert the mark
//! (`consumer`, message id) unless it exists, run the handler with that
//! transaction, commit. A redelivered message whose mark committed finds it
//! and is acked without running the handler; a handler that failed, or a
//! process that died before the commit, left no mark and no effects, so the
//! redelivery runs it again. Two deliveries of one message at once (a
//! redelivery racing the first attempt) serialise on the mark's primary key:
//! the second waits for the first transaction and then sees its outcome.
//!
//! This is what the `DedupLayer` of `mq` cannot give with its memory or
//! Redis stores: there the mark and the handler's writes commit separately.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use mq_core::{Handler, HandlerError, HandlerResult, Received};
use sqlx::Pool;
use tracing::Instrument;

use crate::config::{millis, now_millis, OutboxConfig};
use crate::database::{OutboxDatabase, Statements};
use crate::error::Result;
use crate::outbox::Outbox;

impl<DB: OutboxDatabase> Outbox<DB> {
    /// An inbox on this outbox's database for the consumer named `consumer`
    /// (marks are per consumer: two services consuming the same message each
    /// apply it once).
    pub fn inbox(&self, consumer: &str) -> Inbox<DB> {
        Inbox {
            shared: Arc::new(Shared {
                pool: self.pool().clone(),
                sql: self.statements().clone(),
                consumer: consumer.to_owned(),
            }),
        }
    }
}

/// Exactly-once effects for a consumer: see the [module docs](self).
/// Cheap to clone.
pub struct Inbox<DB: OutboxDatabase> {
    shared: Arc<Shared<DB>>,
}

struct Shared<DB: OutboxDatabase> {
    pool: Pool<DB>,
    sql: Statements,
    consumer: String,
}

/// What the inbox did with one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The handler ran and its transaction, with the mark, committed.
    Applied,
    /// The mark was there: the handler did not run.
    Duplicate,
}

impl<DB: OutboxDatabase> Inbox<DB> {
    /// An inbox on `pool` with `config`'s inbox table, for `consumer`
    /// (without an [`Outbox`]).
    pub fn new(pool: Pool<DB>, config: &OutboxConfig, consumer: &str) -> Result<Self> {
        Ok(Inbox {
            shared: Arc::new(Shared {
                pool,
                sql: DB::statements(config)?,
                consumer: consumer.to_owned(),
            }),
        })
    }

    /// The consumer name the marks are written under.
    pub fn consumer(&self) -> &str {
        &self.shared.consumer
    }

    /// Runs `handler` for `message` in one transaction with the mark, unless
    /// the mark is already there. A handler error rolls back both (and is
    /// returned); so does a failed commit.
    pub async fn process<F>(&self, message: Received, handler: &F) -> Result<Outcome, HandlerError>
    where
        F: for<'a> Fn(Received, &'a mut DB::Connection) -> BoxFuture<'a, HandlerResult>
            + Send
            + Sync,
    {
        let span = tracing::debug_span!(
            "inbox",
            messaging.message.id = message.id(),
            inbox.consumer = %self.shared.consumer,
        );
        async {
            let mut tx = self
                .shared
                .pool
                .begin()
                .await
                .map_err(HandlerError::transient)?;
            let fresh = DB::inbox_mark(
                &mut tx,
                &self.shared.sql,
                &self.shared.consumer,
                message.id(),
                now_millis(),
            )
            .await?;
            if !fresh {
                metrics::counter!(mq_core::observe::names::DUPLICATES,
                    "backend" => message.backend(),
                    "source" => message.source().to_owned(),
                    "group" => message.group().unwrap_or("").to_owned())
                .increment(1);
                tx.rollback().await.map_err(HandlerError::transient)?;
                return Ok(Outcome::Duplicate);
            }
            handler(message, &mut tx).await?;
            tx.commit().await.map_err(HandlerError::transient)?;
            Ok(Outcome::Applied)
        }
        .instrument(span)
        .await
    }

    /// A [`Handler`] for a [`Worker`](mq_core::Worker): each delivery through
    /// [`Inbox::process`], a duplicate acked without running `handler`.
    ///
    /// ```no_run
    /// # async fn demo(inbox: mq_outbox::Inbox<sqlx::Sqlite>, consumer: mq_core::DynConsumer) {
    /// use mq_core::{Received, Worker};
    /// let handler = inbox.handler(|msg: Received, tx: &mut sqlx::SqliteConnection| {
    ///     Box::pin(async move {
    ///         sqlx::query("UPDATE totals SET n = n + 1").execute(&mut *tx).await?;
    ///         Ok(())
    ///     })
    /// });
    /// let worker = Worker::new(consumer, handler);
    /// # }
    /// ```
    pub fn handler<F>(&self, handler: F) -> impl Handler
    where
        F: for<'a> Fn(Received, &'a mut DB::Connection) -> BoxFuture<'a, HandlerResult>
            + Send
            + Sync
            + 'static,
    {
        let inbox = self.clone();
        let handler = Arc::new(handler);
        move |message: Received| {
            let inbox = inbox.clone();
            let handler = handler.clone();
            async move { inbox.process(message, &*handler).await.map(|_| ()) }
        }
    }

    /// Deletes marks older than `age` (keep them longer than any redelivery
    /// can take: the broker's retention or redrive window). Returns how many.
    pub async fn purge(&self, age: Duration) -> Result<u64> {
        let before = now_millis().saturating_sub(millis(age));
        DB::inbox_purge(&self.shared.pool, &self.shared.sql, before).await
    }
}

impl<DB: OutboxDatabase> Clone for Inbox<DB> {
    fn clone(&self) -> Self {
        Inbox {
            shared: self.shared.clone(),
        }
    }
}

impl<DB: OutboxDatabase> fmt::Debug for Inbox<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox")
            .field("consumer", &self.shared.consumer)
            .finish()
    }
}
