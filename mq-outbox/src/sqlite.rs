//! The outbox on SQLite: one writer at a time, so a claim is a single
//! `UPDATE ... RETURNING` statement holding rows with a lease column; the
//! relay polls (SQLite has no notifications between processes).

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, SqliteConnection, SqlitePool};

use crate::codec::{NewRow, StoredRow};
use crate::config::OutboxConfig;
use crate::database::{Listener, OutboxDatabase, Statements, PURGE_STEP};
use crate::error::Result;
use crate::schema::{self, claim_sql, Dialect};

fn stored_row(row: &SqliteRow) -> Result<StoredRow> {
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
        attempts: row.try_get(10)?,
    })
}

/// Row ids as a JSON array for `json_each` (SQLite has no array binds).
fn id_list(ids: &[i64]) -> String {
    let mut s = String::with_capacity(ids.len() * 8 + 2);
    s.push('[');
    for (n, id) in ids.iter().enumerate() {
        if n > 0 {
            s.push(',');
        }
        s.push_str(&id.to_string());
    }
    s.push(']');
    s
}

#[async_trait]
impl OutboxDatabase for Sqlite {
    const DIALECT: Dialect = Dialect::Sqlite;

    fn statements(config: &OutboxConfig) -> Result<Statements> {
        let t = config.table.quoted();
        let i = config.inbox_table.quoted();
        let ids = "(SELECT value FROM json_each(?1))";
        Ok(Statements {
            ddl: schema::statements(Dialect::Sqlite, config)?,
            insert: format!(
                "INSERT INTO {t} (destination, message_id, msg_key, headers, payload, \
                 content_type, dedup_id, delay_ms, created_at, available_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9) RETURNING id"
            ),
            claim: claim_sql(&t, ["?1", "?2", "?3", "?4"], ""),
            mark_sent: format!(
                "UPDATE {t} SET sent_at = ?2, lease_owner = NULL, lease_until = NULL \
                 WHERE id IN {ids}"
            ),
            delete_sent: format!("DELETE FROM {t} WHERE id IN {ids}"),
            release: format!(
                "UPDATE {t} SET lease_owner = NULL, lease_until = NULL, available_at = ?3, \
                 last_error = COALESCE(?4, last_error) \
                 WHERE id IN {ids} AND lease_owner = ?2 AND sent_at IS NULL"
            ),
            purge: format!(
                "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} \
                 WHERE sent_at IS NOT NULL AND sent_at < ?1 LIMIT {PURGE_STEP})"
            ),
            pending: format!("SELECT COUNT(*), MIN(created_at) FROM {t} WHERE sent_at IS NULL"),
            inbox_mark: format!(
                "INSERT INTO {i} (consumer, message_id, processed_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT DO NOTHING"
            ),
            inbox_purge: format!("DELETE FROM {i} WHERE processed_at < ?1"),
            channel: config.channel(),
        })
    }

    async fn migrate(pool: &SqlitePool, sql: &Statements) -> Result<()> {
        let mut tx = pool.begin().await?;
        for ddl in &sql.ddl {
            sqlx::query(ddl).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn insert(conn: &mut SqliteConnection, sql: &Statements, row: &NewRow) -> Result<i64> {
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
            .fetch_one(conn)
            .await?;
        Ok(id)
    }

    async fn claim(
        pool: &SqlitePool,
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
        pool: &SqlitePool,
        sql: &Statements,
        ids: &[i64],
        now: i64,
        delete: bool,
    ) -> Result<()> {
        let list = id_list(ids);
        if delete {
            sqlx::query(&sql.delete_sent)
                .bind(list)
                .execute(pool)
                .await?;
        } else {
            sqlx::query(&sql.mark_sent)
                .bind(list)
                .bind(now)
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    async fn release(
        pool: &SqlitePool,
        sql: &Statements,
        ids: &[i64],
        owner: &str,
        available_at: i64,
        error: Option<&str>,
    ) -> Result<()> {
        sqlx::query(&sql.release)
            .bind(id_list(ids))
            .bind(owner)
            .bind(available_at)
            .bind(error)
            .execute(pool)
            .await?;
        Ok(())
    }

    async fn purge(pool: &SqlitePool, sql: &Statements, before: i64) -> Result<u64> {
        Ok(sqlx::query(&sql.purge)
            .bind(before)
            .execute(pool)
            .await?
            .rows_affected())
    }

    async fn pending(pool: &SqlitePool, sql: &Statements) -> Result<(i64, Option<i64>)> {
        Ok(sqlx::query_as(&sql.pending).fetch_one(pool).await?)
    }

    async fn inbox_mark(
        conn: &mut SqliteConnection,
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

    async fn inbox_purge(pool: &SqlitePool, sql: &Statements, before: i64) -> Result<u64> {
        Ok(sqlx::query(&sql.inbox_purge)
            .bind(before)
            .execute(pool)
            .await?
            .rows_affected())
    }

    async fn listen(_pool: &SqlitePool, _sql: &Statements) -> Result<Option<Listener>> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn id_lists_are_json_arrays() {
        assert_eq!(super::id_list(&[]), "[]");
        assert_eq!(
            super::id_list(&[1, -2, i64::MAX]),
            "[1,-2,9223372036854775807]"
        );
    }
}
