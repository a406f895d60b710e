//! The relay: publishes committed outbox rows and marks them sent once the
//! broker confirmed.
//!
//! One round: claim up to `batch_size` rows (PostgreSQL `FOR UPDATE SKIP
//! LOCKED`, then a lease column on both databases, so the publishing runs
//! outside any transaction and several relays share the table), publish
//! them with many sends in flight (`send_batch` per destination, one row of
//! each key per wave so a key's rows go out one after another in id order),
//! mark the confirmed rows sent, give failed rows back with
//! `mq_core::time::backoff` and the rest of their key with them. A relay
//! that dies mid-round (`kill -9`) leaves its rows leased; after the lease
//! another relay publishes them again with the same message ids.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

use futures::future::join_all;
use mq_core::{Client, DynProducer, Message, Producer};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::codec::StoredRow;
use crate::config::{millis, now_millis};
use crate::database::{Listener, OutboxDatabase, PURGE_STEP};
use crate::error::Result;
use crate::metrics::RelayMetrics;
use crate::outbox::Outbox;

impl<DB: OutboxDatabase> Outbox<DB> {
    /// A relay publishing this outbox's rows through `client` (any backend
    /// URL). Run it with [`Relay::run`] on a task; several relays (in one or
    /// many processes) may run at once.
    pub fn relay(&self, client: Client) -> Relay<DB> {
        Relay {
            outbox: self.clone(),
            client,
            producer: None,
            id: format!(
                "{}-{}",
                std::process::id(),
                mq_core::message::new_message_id()
            ),
            metrics: RelayMetrics::new(&self.config().table.as_unquoted()),
            report: RelayReport::default(),
            prefetched: Vec::new(),
            unsettled: None,
        }
    }
}

/// What a relay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayReport {
    /// Claims that returned rows.
    pub rounds: u64,
    /// Rows published and confirmed.
    pub sent: u64,
    /// Publishes that failed (retried later).
    pub failed: u64,
    /// Sent rows deleted after their retention.
    pub purged: u64,
}

/// Publishes an [`Outbox`]'s rows; made by [`Outbox::relay`].
pub struct Relay<DB: OutboxDatabase> {
    outbox: Outbox<DB>,
    client: Client,
    producer: Option<DynProducer>,
    id: String,
    metrics: RelayMetrics,
    report: RelayReport,
    /// Rows claimed ahead, published next.
    prefetched: Vec<StoredRow>,
    /// The last round published, its marks not yet written.
    unsettled: Option<Outcome>,
}

/// A row on its way to the broker.
struct InFlight {
    lane: usize,
    id: i64,
    created_at: i64,
    attempts: i64,
}

impl<DB: OutboxDatabase> Relay<DB> {
    /// This relay's lease owner name (`<pid>-<uuid>`), in `lease_owner`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What this relay did so far.
    pub fn report(&self) -> &RelayReport {
        &self.report
    }

    /// Runs until `shutdown` is cancelled: claims and publishes rows, polls
    /// an empty outbox with a growing pause up to `max_poll_interval`, wakes
    /// early on PostgreSQL `NOTIFY` or [`Outbox::wake`], retries failures
    /// with `mq_core::time::backoff`, refreshes the metrics and purges sent
    /// rows every `maintenance_interval`. On shutdown the round in progress
    /// finishes (its sends are confirmed and marked) and the rows claimed
    /// ahead are given back before it returns.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<RelayReport> {
        let mut listener = self.listen().await;
        let mut idle: u32 = 0;
        let mut failures: u32 = 0;
        let mut next_maintenance = tokio::time::Instant::now();
        while !shutdown.is_cancelled() {
            if tokio::time::Instant::now() >= next_maintenance {
                if let Err(e) = self.maintain().await {
                    tracing::warn!(relay = %self.id, error = %e, "outbox maintenance failed");
                }
                if listener.is_none() {
                    listener = self.listen().await;
                }
                next_maintenance =
                    tokio::time::Instant::now() + self.outbox.config().maintenance_interval;
            }
            match self.run_once().await {
                Ok(n) if n > 0 => {
                    idle = 0;
                    failures = 0;
                    continue;
                }
                Ok(_) => {
                    failures = 0;
                    idle = idle.saturating_add(1);
                    let pause = if listener.is_some() {
                        self.outbox.config().max_poll_interval
                    } else {
                        poll_pause(idle, self.outbox.config().max_poll_interval)
                    };
                    let pause = pause.min(until(next_maintenance));
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = self.outbox.woken() => idle = 0,
                        woke = wait_listener(&mut listener) => {
                            idle = 0;
                            if let Err(e) = woke {
                                tracing::warn!(relay = %self.id, error = %e, "outbox LISTEN failed; polling");
                                listener = None;
                            }
                        }
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let pause = mq_core::time::backoff(failures);
                    tracing::warn!(relay = %self.id, error = %e, retry_in = ?pause, "outbox relay round failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
        self.close().await
    }

    /// One round: publishes the batch claimed ahead (or claims one now)
    /// while, at the same time, the previous round's rows are marked and,
    /// after a full batch, the next batch is claimed, so the database round
    /// trips overlap the broker's confirmations. Returns the number of rows
    /// published (0: nothing to do now; the last round's marks are written
    /// before 0 is returned).
    ///
    /// The next batch is only claimed while this one is in flight, so its
    /// keys exclude this batch's (their head rows are still leased): per-key
    /// order holds. Call [`Relay::close`] when you stop calling `run_once`
    /// yourself ([`Relay::run`] does), or the rows claimed ahead wait for
    /// their lease to end.
    pub async fn run_once(&mut self) -> Result<usize> {
        let producer = match &self.producer {
            Some(p) => p.clone(),
            None => {
                let p = self.client.producer().await?;
                self.producer = Some(p.clone());
                p
            }
        };
        let rows = match std::mem::take(&mut self.prefetched) {
            rows if !rows.is_empty() => rows,
            _ => claim(&self.outbox, &self.id, &self.metrics).await?,
        };
        if rows.is_empty() {
            self.flush().await?;
            return Ok(0);
        }
        let config = self.outbox.config();
        let n = rows.len();
        let full = n >= config.batch_size;
        let span = tracing::info_span!(
            "outbox.relay",
            otel.name = %format_args!("relay {}", config.table),
            otel.kind = "producer",
            messaging.batch.message_count = n,
            outbox.relay = %self.id,
        );
        let previous = self.unsettled.take();
        let (outcome, settled, next) = tokio::join!(
            publish(&producer, rows, config.max_in_flight).instrument(span),
            async {
                match previous {
                    Some(o) => settle(&self.outbox, &self.id, &self.metrics, o).await,
                    None => Ok((0, 0)),
                }
            },
            async {
                if full {
                    claim(&self.outbox, &self.id, &self.metrics).await.ok()
                } else {
                    None
                }
            },
        );
        self.unsettled = Some(outcome);
        self.prefetched = next.unwrap_or_default();
        self.report.rounds += 1;
        let (sent, failed) = settled?;
        self.report.sent += sent;
        self.report.failed += failed;
        Ok(n)
    }

    /// Writes the marks of the last round published.
    async fn flush(&mut self) -> Result<()> {
        if let Some(outcome) = self.unsettled.take() {
            let (sent, failed) = settle(&self.outbox, &self.id, &self.metrics, outcome).await?;
            self.report.sent += sent;
            self.report.failed += failed;
        }
        Ok(())
    }

    /// Writes the last round's marks and gives back the rows claimed ahead;
    /// returns the report.
    pub async fn close(mut self) -> Result<RelayReport> {
        self.flush().await?;
        let ahead: Vec<i64> = self.prefetched.iter().map(|r| r.id).collect();
        if !ahead.is_empty() {
            let (pool, sql) = (self.outbox.pool(), self.outbox.statements());
            DB::release(pool, sql, &ahead, &self.id, now_millis(), None).await?;
        }
        Ok(self.report)
    }

    /// Refreshes the gauges and purges rows past their retention.
    async fn maintain(&mut self) -> Result<()> {
        let pending = self.outbox.pending().await?;
        self.metrics.pending.set(pending.rows as f64);
        let age = pending
            .oldest_created_at
            .map_or(0, |t| now_millis().saturating_sub(t).max(0));
        self.metrics.oldest_age.set(age as f64 / 1000.0);
        let retention = self.outbox.config().retention;
        if !retention.is_zero() {
            let before = now_millis().saturating_sub(millis(retention));
            // Bounded: a huge backlog is purged over several maintenances.
            for _ in 0..10 {
                let n = DB::purge(self.outbox.pool(), self.outbox.statements(), before).await?;
                self.report.purged += n;
                self.metrics.purged.increment(n);
                if n < PURGE_STEP as u64 {
                    break;
                }
            }
        }
        Ok(())
    }

    async fn listen(&self) -> Option<Listener> {
        match DB::listen(self.outbox.pool(), self.outbox.statements()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(relay = %self.id, error = %e, "outbox LISTEN failed; polling");
                None
            }
        }
    }
}

/// What publishing a batch came to, before it is written back.
#[derive(Debug, Default)]
struct Outcome {
    /// Confirmed: (row id, created_at).
    sent: Vec<(i64, i64)>,
    /// Failed: (row id, attempts, error).
    failed: Vec<(i64, i64, String)>,
    /// Not tried because an earlier row of their key failed.
    held_back: Vec<i64>,
}

/// Claims up to a batch for relay `owner`.
async fn claim<DB: OutboxDatabase>(
    outbox: &Outbox<DB>,
    owner: &str,
    metrics: &RelayMetrics,
) -> Result<Vec<StoredRow>> {
    let config = outbox.config();
    let now = now_millis();
    let lease_until = now.saturating_add(millis(config.lease));
    let limit = i64::try_from(config.batch_size).unwrap_or(i64::MAX);
    DB::claim(
        outbox.pool(),
        outbox.statements(),
        owner,
        now,
        lease_until,
        limit,
    )
    .await
    .inspect_err(|_| metrics.database_errors.increment(1))
}

/// Publishes `rows`: waves of one row per key (a key's rows in id order,
/// the next only after the previous was confirmed; rows without a key are
/// each their own lane), `send_batch` per destination, at most
/// `max_in_flight` at once.
async fn publish(producer: &DynProducer, rows: Vec<StoredRow>, max_in_flight: usize) -> Outcome {
    let mut lanes: Vec<VecDeque<StoredRow>> = Vec::new();
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for row in rows {
        match row.key.clone() {
            Some(key) => {
                let lane = *by_key.entry(key).or_insert_with(|| {
                    lanes.push(VecDeque::new());
                    lanes.len() - 1
                });
                lanes[lane].push_back(row);
            }
            None => lanes.push(VecDeque::from([row])),
        }
    }
    let mut out = Outcome::default();
    loop {
        // A wave: the next row of every lane still going.
        let mut wave: Vec<(usize, StoredRow)> = lanes
            .iter_mut()
            .enumerate()
            .filter_map(|(lane, rows)| rows.pop_front().map(|r| (lane, r)))
            .collect();
        if wave.is_empty() {
            return out;
        }
        while !wave.is_empty() {
            let rest = wave.split_off(wave.len().min(max_in_flight));
            let chunk = std::mem::replace(&mut wave, rest);
            // Per destination, in order: (destination, rows, messages).
            let mut groups: Vec<(String, Vec<InFlight>, Vec<Message>)> = Vec::new();
            let now = now_millis();
            for (lane, row) in chunk {
                let message = match row.to_message(now) {
                    Ok(m) => m,
                    Err(e) => {
                        out.failed.push((row.id, row.attempts, e.to_string()));
                        out.held_back.extend(lanes[lane].drain(..).map(|r| r.id));
                        continue;
                    }
                };
                let meta = InFlight {
                    lane,
                    id: row.id,
                    created_at: row.created_at,
                    attempts: row.attempts,
                };
                match groups.iter_mut().find(|g| g.0 == row.destination) {
                    Some(g) => {
                        g.1.push(meta);
                        g.2.push(message);
                    }
                    None => groups.push((row.destination, vec![meta], vec![message])),
                }
            }
            let sends = groups
                .iter_mut()
                .map(|(dest, _, msgs)| producer.send_batch(dest, std::mem::take(msgs)));
            let reports = join_all(sends).await;
            for ((_, metas, _), report) in groups.into_iter().zip(reports) {
                let mut results = report.into_results().into_iter();
                for meta in metas {
                    match results.next() {
                        Some((_, Ok(()))) => out.sent.push((meta.id, meta.created_at)),
                        outcome => {
                            let why = match outcome {
                                Some((_, Err(e))) => e.to_string(),
                                _ => "the producer reported no outcome".to_owned(),
                            };
                            out.failed.push((meta.id, meta.attempts, why));
                            out.held_back
                                .extend(lanes[meta.lane].drain(..).map(|r| r.id));
                        }
                    }
                }
            }
        }
    }
}

/// Marks the confirmed rows sent and gives the others back (failed ones
/// after `mq_core::time::backoff` of their attempts). Returns (sent, failed).
async fn settle<DB: OutboxDatabase>(
    outbox: &Outbox<DB>,
    owner: &str,
    metrics: &RelayMetrics,
    outcome: Outcome,
) -> Result<(u64, u64)> {
    let (pool, sql) = (outbox.pool(), outbox.statements());
    let delete = outbox.config().retention.is_zero();
    let Outcome {
        sent,
        failed,
        held_back,
    } = outcome;
    if !sent.is_empty() {
        let ids: Vec<i64> = sent.iter().map(|(id, _)| *id).collect();
        let now = now_millis();
        // A failed mark leaves the rows leased: after the lease they are
        // published again (duplicates with the same ids), so try a few times.
        let mut tries = 0u32;
        loop {
            match DB::mark_sent(pool, sql, &ids, now, delete).await {
                Ok(()) => break,
                Err(e) if tries < 3 && e.is_retryable() => {
                    metrics.database_errors.increment(1);
                    tries += 1;
                    tokio::time::sleep(mq_core::time::backoff(tries)).await;
                }
                Err(e) => {
                    metrics.database_errors.increment(1);
                    return Err(e);
                }
            }
        }
        metrics.relayed.increment(sent.len() as u64);
        for (_, created_at) in &sent {
            let lag = now.saturating_sub(*created_at).max(0);
            metrics.lag.record(lag as f64 / 1000.0);
        }
    }
    let now = now_millis();
    for (id, attempts, why) in &failed {
        tracing::warn!(relay = %owner, row = id, attempts, error = %why, "outbox publish failed; will retry");
        metrics.errors.increment(1);
        let attempts = u32::try_from(*attempts).unwrap_or(u32::MAX);
        let at = now.saturating_add(millis(mq_core::time::backoff(attempts)));
        DB::release(pool, sql, &[*id], owner, at, Some(why)).await?;
    }
    if !held_back.is_empty() {
        DB::release(pool, sql, &held_back, owner, now, None).await?;
    }
    Ok((sent.len() as u64, failed.len() as u64))
}

/// The pause after `idle` empty polls in a row: 1 ms doubling, at most `max`.
fn poll_pause(idle: u32, max: Duration) -> Duration {
    Duration::from_millis(1u64 << idle.min(20)).min(max)
}

fn until(at: tokio::time::Instant) -> Duration {
    at.saturating_duration_since(tokio::time::Instant::now())
}

async fn wait_listener(listener: &mut Option<Listener>) -> Result<()> {
    match listener {
        Some(l) => l.recv().await,
        None => std::future::pending().await,
    }
}

impl<DB: OutboxDatabase> fmt::Debug for Relay<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("id", &self.id)
            .field("table", &self.outbox.config().table)
            .field("report", &self.report)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_polls_back_off_to_the_cap() {
        let max = Duration::from_millis(500);
        assert_eq!(poll_pause(0, max), Duration::from_millis(1));
        assert_eq!(poll_pause(3, max), Duration::from_millis(8));
        assert_eq!(poll_pause(u32::MAX, max), max);
    }
}
