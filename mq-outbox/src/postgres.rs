//! The outbox on PostgreSQL: claims with `FOR UPDATE SKIP LOCKED`, wake-ups
//! with `LISTEN`/`NOTIFY` (sent by the insert, delivered only on commit).

use async_trait::async_trait;
use sqlx::postgres::{PgListener, PgRow};
use sqlx::{PgConnection, PgPool, Postgres, Row};

use crate::codec::{NewRow, StoredRow};
use crate::config::OutboxConfig;
use crate::database::{Listener, OutboxDatabase, Statements, PURGE_STEP};
use crate::error::Result;
use crate::schema::{self, claim_sql, Dialect};

fn stored_row(row: &PgRow) -> Result<StoredRow> {
    Ok(StoredRow {
        id: row.try_get(0)?,
        destination: row.try_get(1)?,
        message_id: row.try_get(2)?,
        key: row.try_get(3)?,
        headers: row.try_get(4)?,
        payload: row.try_get(5)?,
        content_type: row.try_get(6)?,
        dedup_id: row.try_get(7)?,
        delay_ms: row.try_get(8)?,
        created_at: row.try_get(9)?,
        attempts: i64::from(row.try_get::<i32, _>(10)?),
    })
}

#[async_trait]
impl OutboxDatabase for Postgres {
    const DIALECT: Dialect = Dialect::Postgres;

    fn statements(config: &OutboxConfig) -> Result<Statements> {
        let t = config.table.quoted();
        let i = config.inbox_table.quoted();
        Ok(Statements {
            ddl: schema::statements(Dialect::Postgres, config)?,
            insert: format!(
                "WITH ins AS (INSERT INTO {t} (destination, message_id, msg_key, headers, payload, \
                 content_type, dedup_id, delay_ms, created_at, available_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) RETURNING id), \
                 woke AS (SELECT pg_notify($10, '')) \
                 SELECT ins.id FROM ins, woke"
            ),
            claim: claim_sql(&t, ["$1", "$2", "$3", "$4"], " FOR UPDATE OF o SKIP LOCKED"),
            mark_sent: format!(
                "UPDATE {t} SET sent_at = $2, lease_owner = NULL, lease_until = NULL \
                 WHERE id = ANY($1)"
            ),
            delete_sent: format!("DELETE FROM {t} WHERE id = ANY($1)"),
            release: format!(
                "UPDATE {t} SET lease_owner = NULL, lease_until = NULL, available_at = $3, \
                 last_error = COALESCE($4, last_error) \
                 WHERE id = ANY($1) AND lease_owner = $2 AND sent_at IS NULL"
            ),
            purge: format!(
                "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} \
                 WHERE sent_at IS NOT NULL AND sent_at < $1 LIMIT {PURGE_STEP})"
            ),
            pending: format!("SELECT COUNT(*), MIN(created_at) FROM {t} WHERE sent_at IS NULL"),
            inbox_mark: format!(
                "INSERT INTO {i} (consumer, message_id, processed_at) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING"
            ),
            inbox_purge: format!("DELETE FROM {i} WHERE processed_at < $1"),
            channel: config.channel(),
        })
    }

    async fn migrate(pool: &PgPool, sql: &Statements) -> Result<()> {
        // Serialised: concurrent `CREATE TABLE IF NOT EXISTS` can still
        // collide in PostgreSQL's catalog.
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(&sql.channel)
            .execute(&mut *tx)
            .await?;
        for ddl in &sql.ddl {
            sqlx::query(ddl).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn insert(conn: &mut PgConnection, sql: &Statements, row: &NewRow) -> Result<i64> {
        let id: i64 = sqlx::query_scalar(&sql.insert)
            .bind(&row.destination)
            .bind(&row.message_id)
            .bind(&row.key)
            .bind(&row.headers)
            .bind(row.payload.as_ref())
            .bind(&row.content_type)
            .bind(&row.dedup_id)
            .bind(row.delay_ms)
            .bind(row.created_at)
            .bind(&sql.channel)
            .fetch_one(conn)
            .await?;
        Ok(id)
    }

    async fn claim(
        pool: &PgPool,
        sql: &Statements,
        owner: &str,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<StoredRow>> {
        let rows = sqlx::query(&sql.claim)
            .bind(owner)
            .bind(now)
            .bind(lease_until)
            .bind(limit)
            .fetch_all(pool)
            .await?;
        let mut out = rows.iter().map(stored_row).collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|r| r.id);
        Ok(out)
    }

    async fn mark_sent(
        pool: &PgPool,
        sql: &Statements,
        ids: &[i64],
        now: i64,
        delete: bool,
    ) -> Result<()> {
        if delete {
            sqlx::query(&sql.delete_sent)
                .bind(ids)
                .execute(pool)
                .await?;
        } else {
            sqlx::query(&sql.mark_sent)
                .bind(ids)
                .bind(now)
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    async fn release(
        pool: &PgPool,
        sql: &Statements,
        ids: &[i64],
        owner: &str,
        available_at: i64,
        error: Option<&str>,
    ) -> Result<()> {
        sqlx::query(&sql.release)
            .bind(ids)
            .bind(owner)
            .bind(available_at)
            .bind(error)
            .execute(pool)
            .await?;
        Ok(())
    }

    async fn purge(pool: &PgPool, sql: &Statements, before: i64) -> Result<u64> {
        Ok(sqlx::query(&sql.purge)
            .bind(before)
            .execute(pool)
            .await?
            .rows_affected())
    }

    async fn pending(pool: &PgPool, sql: &Statements) -> Result<(i64, Option<i64>)> {
        Ok(sqlx::query_as(&sql.pending).fetch_one(pool).await?)
    }

    async fn inbox_mark(
        conn: &mut PgConnection,
        sql: &Statements,
        consumer: &str,
        message_id: &str,
        now: i64,
    ) -> Result<bool> {
        let done = sqlx::query(&sql.inbox_mark)
            .bind(consumer)
            .bind(message_id)
            .bind(now)
            .execute(conn)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn inbox_purge(pool: &PgPool, sql: &Statements, before: i64) -> Result<u64> {
        Ok(sqlx::query(&sql.inbox_purge)
            .bind(before)
            .execute(pool)
            .await?
            .rows_affected())
    }

    async fn listen(pool: &PgPool, sql: &Statements) -> Result<Option<Listener>> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(&sql.channel).await?;
        Ok(Some(Listener::Postgres(listener)))
    }
}
