//! A [`DedupStore`] in Redis, shared by every consumer process (feature `redis`).
//!
//! Keys are `mq:dedup:<key>`; a claim is the value `lease:<token>` with the
//! lease as its expiry, a finished key is `done` with the done TTL. Each
//! operation is one Lua script, so it is atomic across processes. The
//! connection is a `redis::aio::ConnectionManager`, which reconnects on its
//! own; an unreachable Redis makes the dedup layer fail the attempt
//! transiently (the message is retried, never processed unguarded).

use std::fmt;
use std::time::Duration;

use super::store::{Claim, DedupStore, LeaseToken};
use crate::error::{Error, ErrorKind, Result};
use crate::url::redact_str;
use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::Script;

const PREFIX: &str = "mq:dedup:";

/// Dedup keys in Redis. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct RedisDedupStore {
    connection: ConnectionManager,
    shown_url: String,
    claim: Script,
    renew: Script,
    complete: Script,
    release: Script,
}

impl RedisDedupStore {
    /// Connects to `url` (`redis://[user:password@]host:port[/db]`, or `rediss://`).
    pub async fn connect(url: &str) -> Result<Self> {
        let shown_url = redact_str(url);
        let client = redis::Client::open(url).map_err(|e| {
            Error::config(format!("invalid Redis URL {shown_url}: {e}")).with_backend("redis")
        })?;
        let connection = ConnectionManager::new(client)
            .await
            .map_err(|e| convert(e, "connect"))?;
        Ok(RedisDedupStore {
            connection,
            shown_url,
            claim: Script::new(
                r"local v = redis.call('GET', KEYS[1])
                  if v == false then
                    redis.call('SET', KEYS[1], 'lease:' .. ARGV[2], 'PX', ARGV[1])
                    return {1, 0}
                  elseif v == 'done' then
                    return {2, 0}
                  end
                  return {3, redis.call('PTTL', KEYS[1])}",
            ),
            renew: Script::new(
                r"if redis.call('GET', KEYS[1]) == 'lease:' .. ARGV[1] then
                    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
                  end
                  return 0",
            ),
            // Fenced: done only over our own lease, or over nothing (our
            // lease expired and nobody claimed the key since).
            complete: Script::new(
                r"local v = redis.call('GET', KEYS[1])
                  if v == false or v == 'lease:' .. ARGV[1] then
                    redis.call('SET', KEYS[1], 'done', 'PX', ARGV[2])
                    return 1
                  end
                  return 0",
            ),
            release: Script::new(
                r"if redis.call('GET', KEYS[1]) == 'lease:' .. ARGV[1] then
                    return redis.call('DEL', KEYS[1])
                  end
                  return 0",
            ),
        })
    }
}

fn convert(e: redis::RedisError, operation: &'static str) -> Error {
    let kind = if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        ErrorKind::Connection
    } else if e.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Broker
    };
    Error::new(kind, format!("redis {operation} failed"))
        .with_retryable(true)
        .with_backend("redis")
        .with_operation(operation)
        .with_source(e)
}

/// Milliseconds for `PX`/`PEXPIRE`: at least 1, clamped to 100 years (Redis
/// refuses expiry times that overflow its clock).
fn millis(d: Duration) -> u64 {
    u64::try_from(crate::time::clamp(d).as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

#[async_trait]
impl DedupStore for RedisDedupStore {
    async fn claim(&self, key: &str, lease: Duration) -> Result<Claim> {
        let token = LeaseToken::random();
        let (state, pttl): (i64, i64) = self
            .claim
            .key(format!("{PREFIX}{key}"))
            .arg(millis(lease))
            .arg(token.0.to_string())
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(|e| convert(e, "claim"))?;
        Ok(match state {
            1 => Claim::Acquired(token),
            2 => Claim::Done,
            // PTTL is -1/-2 when the key has no expiry or just vanished: retry soon.
            _ => Claim::InProgress(Duration::from_millis(
                u64::try_from(pttl.max(10)).unwrap_or(10),
            )),
        })
    }

    async fn renew(&self, key: &str, token: LeaseToken, lease: Duration) -> Result<bool> {
        let renewed: i64 = self
            .renew
            .key(format!("{PREFIX}{key}"))
            .arg(token.0.to_string())
            .arg(millis(lease))
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(|e| convert(e, "renew"))?;
        Ok(renewed == 1)
    }

    async fn complete(&self, key: &str, token: LeaseToken, ttl: Duration) -> Result<bool> {
        let done: i64 = self
            .complete
            .key(format!("{PREFIX}{key}"))
            .arg(token.0.to_string())
            .arg(millis(ttl))
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(|e| convert(e, "complete"))?;
        Ok(done == 1)
    }

    async fn release(&self, key: &str, token: LeaseToken) -> Result<()> {
        self.release
            .key(format!("{PREFIX}{key}"))
            .arg(token.0.to_string())
            .invoke_async::<i64>(&mut self.connection.clone())
            .await
            .map(|_| ())
            .map_err(|e| convert(e, "release"))
    }
}

impl fmt::Debug for RedisDedupStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDedupStore")
            .field("url", &self.shown_url)
            .finish()
    }
}
