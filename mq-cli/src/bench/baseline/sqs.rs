//! SQS baseline: the bench workload written directly against aws-sdk-sqs,
//! with the settings `mq-sqs` uses for the same URL.
//!
//! The settings come from `SqsConfig::from_url`; the SDK clients are
//! `mq-sqs`'s own, built by `mq_sqs::SdkClients::build` (without the health
//! tracking `mq-sqs` adds to its clients):
//!
//! | setting | mq-sqs | this baseline |
//! |---|---|---|
//! | client | hyper + rustls (ring); standard retries, `max_attempts` (3); `connect_timeout` (5 s); per-attempt `timeout` (10 s), receives `wait` + `timeout`; region, endpoint and static credentials from the URL | the same two clients |
//! | queue | created on first use with no attributes (a standard queue) | the same, on a fresh `mq-bench-raw-*` name |
//! | send | `SendMessageBatch` of up to 10 entries (1 MiB), coalesced from concurrent sends; at most `send_concurrency` (16) calls in flight per producer and destination, `max_connections` (8 on a plain-HTTP endpoint, else 50) send calls per client | batches of 10 built directly; per producer at most `send_concurrency` calls and `--in-flight` messages in flight, `max_connections` send calls per client |
//! | message | body = the payload (text), String attribute `mq-message-id` (a UUIDv7) | body only (plus the String attribute with the latency stamp in the end-to-end phase); with `--raw-ids` also the `mq-message-id` attribute (a UUIDv7) |
//! | receive | a poller per consumer, polling from its first `receive` on, reading ahead while a `receive` asked within the last second: `ReceiveMessage` of up to 10 (`MaxNumberOfMessages` = free prefetch), `WaitTimeSeconds` = `wait` (20), `VisibilityTimeout` = `visibility_timeout` (30), attributes `All` plus three system attributes; `receivers` long polls at once (1 on a plain-HTTP endpoint, else adaptive up to 4) | the same poller, started when its phase starts and reading ahead to the end, with a fixed `receivers` count (the same 1 on an emulator) and message attributes `All`, no system attributes |
//! | prefetch | at most `--prefetch` deliveries received and not acked; their visibility is extended by `visibility_timeout` once half of it has passed | the same, with `ChangeMessageVisibilityBatch` |
//! | ack | queued `DeleteMessageBatch` of up to 10, at most 8 calls in flight per consumer and `max_connections` per client; `close` waits for them | `DeleteMessageBatch` per 10 processed receipts, the same limits; the phase waits for them |
//!
//! FIFO queues (`fifo=true`) are not supported by the baseline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageAttributeValue, SendMessageBatchRequestEntry,
};
use hdrhistogram::Histogram;
use mq::url::RedactedUrl;
use mq_sqs::{Endpoint, SdkClients, SqsConfig};
use parking_lot::Mutex;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use super::super::{
    fresh_name, join_consumers, new_histogram, payload, peak_rss, record_latency, shares, Args,
    PhaseClock, Results, Tally, RECEIVE_BATCH, RECEIVE_WAIT, SENT_AT,
};
use crate::CliResult;

/// Entries per batch call.
const MAX_ENTRIES: usize = 10;

/// Delete calls in flight per consumer (`mq-sqs`'s `SETTLE_CONCURRENCY`).
const SETTLE_CONCURRENCY: usize = 8;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn config(url: &str) -> CliResult<SqsConfig> {
    let config = SqsConfig::from_url(&RedactedUrl::parse(url)?)?;
    if config.fifo {
        return Err("the SQS baseline does not support fifo=true".into());
    }
    Ok(config)
}

fn is_emulator(config: &SqsConfig) -> bool {
    matches!(&config.endpoint, Endpoint::Url(u) if u.starts_with("http://"))
}

/// Whole seconds, rounded up (as `mq-sqs` sends them).
fn secs(d: Duration) -> i32 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(s).unwrap_or(i32::MAX)
}

/// What the calls of one run share.
struct Ctx {
    /// The two clients `mq-sqs` builds: one for ordinary calls, one whose
    /// time limits leave room for the long poll.
    clients: SdkClients,
    config: SqsConfig,
    /// Send calls in flight per client (`max_connections`).
    sends: Arc<Semaphore>,
    /// Delete calls in flight per client (`max_connections`).
    others: Arc<Semaphore>,
}

async fn create_queue(ctx: &Ctx, name: &str) -> CliResult<String> {
    let out = ctx
        .clients
        .ops
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .map_err(aws_sdk_sqs::Error::from)?;
    Ok(out
        .queue_url()
        .ok_or("SQS returned no queue URL")?
        .to_owned())
}

fn attribute(value: String) -> CliResult<MessageAttributeValue> {
    Ok(MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()?)
}

async fn publish(
    ctx: &Arc<Ctx>,
    queue_url: &str,
    args: &Args,
    body: &str,
    stamp_from: Option<Instant>,
) -> CliResult {
    let mut tasks = JoinSet::new();
    for share in shares(args.count, args.producers) {
        let (ctx, queue_url, body) = (ctx.clone(), queue_url.to_owned(), body.to_owned());
        let raw_ids = args.raw_ids;
        // Calls in flight for this producer: `send_concurrency`, and no
        // more messages than `--in-flight`.
        let calls = ctx
            .config
            .send_concurrency
            .min(args.in_flight.div_ceil(MAX_ENTRIES))
            .max(1);
        tasks.spawn(async move {
            let slots = Arc::new(Semaphore::new(calls));
            let mut in_flight: JoinSet<CliResult> = JoinSet::new();
            let mut left = share;
            while left > 0 {
                let n = usize::try_from(left.min(MAX_ENTRIES as u64)).unwrap_or(MAX_ENTRIES);
                left -= n as u64;
                // Stamped before waiting for a free call, as the SDK
                // workload stamps a message before handing it over.
                let stamps: Vec<Option<String>> = (0..n)
                    .map(|_| stamp_from.map(|base| base.elapsed().as_nanos().to_string()))
                    .collect();
                let slot = slots.clone().acquire_owned().await?;
                let mut entries = Vec::with_capacity(n);
                for (i, stamp) in stamps.into_iter().enumerate() {
                    let mut attrs: Option<HashMap<String, MessageAttributeValue>> = None;
                    if raw_ids {
                        let id = attribute(mq::message::new_message_id())?;
                        attrs = Some(HashMap::from([(
                            mq::message::headers::MESSAGE_ID.to_owned(),
                            id,
                        )]));
                    }
                    if let Some(stamp) = stamp {
                        attrs
                            .get_or_insert_with(HashMap::new)
                            .insert(SENT_AT.to_owned(), attribute(stamp)?);
                    }
                    entries.push(
                        SendMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .message_body(body.clone())
                            .set_message_attributes(attrs)
                            .build()?,
                    );
                }
                let (ctx, queue_url) = (ctx.clone(), queue_url.clone());
                in_flight.spawn(async move {
                    let _slot = slot;
                    let _permit = ctx.sends.acquire().await?;
                    let out = ctx
                        .clients
                        .ops
                        .send_message_batch()
                        .queue_url(queue_url)
                        .set_entries(Some(entries))
                        .send()
                        .await
                        .map_err(aws_sdk_sqs::Error::from)?;
                    if let Some(failed) = out.failed().first() {
                        return Err(format!("SendMessageBatch entry failed: {failed:?}").into());
                    }
                    Ok(())
                });
                while let Some(done) = in_flight.try_join_next() {
                    done??;
                }
            }
            while let Some(done) = in_flight.join_next().await {
                done??;
            }
            Ok::<(), Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| format!("producer task: {e}"))??;
    }
    Ok(())
}

/// A received message: receipt handle and latency stamp.
type Got = Result<(String, Option<String>), String>;

/// Received and not yet processed: receipt handle -> when it becomes
/// visible again unless extended.
type Held = Arc<Mutex<HashMap<String, Instant>>>;

struct RawConsumer {
    rx: mpsc::UnboundedReceiver<Got>,
    /// Where the pollers hand over, until they start.
    tx: Option<mpsc::UnboundedSender<Got>>,
    /// One permit per delivery the consumer may still take (prefetch).
    permits: Arc<Semaphore>,
    held: Held,
    /// Long polls at once.
    receivers: usize,
    /// The pollers and the lease keeper, once started.
    tasks: Vec<JoinHandle<()>>,
}

impl RawConsumer {
    /// Starts the pollers when the consumer is first asked for messages, as
    /// `mq-sqs` does: SQS is pull-based, so a consumer opened before the
    /// publish phase takes nothing until its phase (reading ahead during the
    /// publish phase would move work from the consume phase into the
    /// publish phase of one side only).
    fn start(&mut self, ctx: &Arc<Ctx>, queue_url: &str) {
        let Some(tx) = self.tx.take() else {
            return;
        };
        for _ in 0..self.receivers {
            self.tasks.push(tokio::spawn(poller(
                ctx.clone(),
                queue_url.to_owned(),
                self.permits.clone(),
                self.held.clone(),
                tx.clone(),
            )));
        }
        self.tasks.push(tokio::spawn(keep_leases(
            ctx.clone(),
            queue_url.to_owned(),
            self.held.clone(),
        )));
    }
}

/// Extends the visibility of held messages past half of it, as `mq-sqs`
/// does for the deliveries a consumer holds (a message received ahead of
/// its phase must not come back to the queue meanwhile).
async fn keep_leases(ctx: Arc<Ctx>, queue_url: String, held: Held) {
    let vt = ctx.config.visibility_timeout;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = Instant::now();
        let due: Vec<String> = held
            .lock()
            .iter_mut()
            .filter(|(_, until)| **until <= now + vt / 2)
            .map(|(receipt, until)| {
                *until = now + vt;
                receipt.clone()
            })
            .collect();
        for chunk in due.chunks(MAX_ENTRIES) {
            let entries = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .visibility_timeout(secs(vt))
                        .build()
                        .ok()
                })
                .collect();
            let Ok(_permit) = ctx.others.acquire().await else {
                return;
            };
            // A message processed meanwhile fails its entry: nothing to do.
            let _ = ctx
                .clients
                .ops
                .change_message_visibility_batch()
                .queue_url(&queue_url)
                .set_entries(Some(entries))
                .send()
                .await;
        }
    }
}

/// Long polls `queue_url` while there is prefetch room.
async fn poller(
    ctx: Arc<Ctx>,
    queue_url: String,
    permits: Arc<Semaphore>,
    held: Held,
    tx: mpsc::UnboundedSender<Got>,
) {
    loop {
        let Ok(first) = permits.acquire().await else {
            return;
        };
        first.forget();
        let mut n = 1;
        while n < MAX_ENTRIES {
            match permits.try_acquire() {
                Ok(p) => {
                    p.forget();
                    n += 1;
                }
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let result = ctx
            .clients
            .receive
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(i32::try_from(n).unwrap_or(10))
            .wait_time_seconds(secs(ctx.config.wait))
            .visibility_timeout(secs(ctx.config.visibility_timeout))
            .message_attribute_names("All")
            .send()
            .await;
        match result {
            Ok(out) => {
                let messages = out.messages.unwrap_or_default();
                permits.add_permits(n.saturating_sub(messages.len()));
                for m in messages {
                    let stamp = m
                        .message_attributes()
                        .and_then(|a| a.get(SENT_AT))
                        .and_then(|v| v.string_value())
                        .map(str::to_owned);
                    let Some(receipt) = m.receipt_handle else {
                        permits.add_permits(1);
                        continue;
                    };
                    held.lock()
                        .insert(receipt.clone(), started + ctx.config.visibility_timeout);
                    if tx.send(Ok((receipt, stamp))).is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                permits.add_permits(n);
                let _ = tx.send(Err(aws_sdk_sqs::Error::from(e).to_string()));
                return;
            }
        }
    }
}

fn open_consumers(ctx: &Arc<Ctx>, args: &Args) -> Vec<RawConsumer> {
    let receivers = match ctx.config.receivers {
        0 if is_emulator(&ctx.config) => 1,
        0 => args.prefetch.div_ceil(MAX_ENTRIES).clamp(1, 4),
        n => n,
    };
    (0..args.consumers)
        .map(|_| {
            let (tx, rx) = mpsc::unbounded_channel();
            RawConsumer {
                rx,
                tx: Some(tx),
                permits: Arc::new(Semaphore::new(args.prefetch)),
                held: Held::default(),
                receivers,
                tasks: Vec::new(),
            }
        })
        .collect()
}

async fn delete(ctx: &Ctx, queue_url: &str, slots: &Semaphore, receipts: Vec<String>) -> CliResult {
    let _slot = slots.acquire().await?;
    let _permit = ctx.others.acquire().await?;
    let entries = receipts
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(r)
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let out = ctx
        .clients
        .ops
        .delete_message_batch()
        .queue_url(queue_url)
        .set_entries(Some(entries))
        .send()
        .await
        .map_err(aws_sdk_sqs::Error::from)?;
    if let Some(failed) = out.failed().first() {
        return Err(format!("DeleteMessageBatch entry failed: {failed:?}").into());
    }
    Ok(())
}

async fn consume(
    ctx: &Arc<Ctx>,
    queue_url: &str,
    consumers: Vec<RawConsumer>,
    count: u64,
    stamp_base: Option<Instant>,
) -> CliResult<Histogram<u64>> {
    let tally = Tally::new(count);
    let mut tasks = JoinSet::new();
    for mut consumer in consumers {
        let (ctx, queue_url, tally) = (ctx.clone(), queue_url.to_owned(), tally.clone());
        tasks.spawn(async move {
            consumer.start(&ctx, &queue_url);
            let RawConsumer {
                mut rx,
                permits,
                held,
                tasks: background,
                ..
            } = consumer;
            let mut local = new_histogram()?;
            let slots = Arc::new(Semaphore::new(SETTLE_CONCURRENCY));
            let mut deletes: JoinSet<CliResult> = JoinSet::new();
            let mut batch = Vec::with_capacity(RECEIVE_BATCH);
            while !tally.is_done() {
                let first = tokio::select! {
                    biased;
                    first = tokio::time::timeout(RECEIVE_WAIT, rx.recv()) => first,
                    () = tally.wait_done() => break,
                };
                match first {
                    Err(_) => continue,
                    Ok(Some(got)) => batch.push(got?),
                    Ok(None) => return Err("the pollers stopped".into()),
                }
                while batch.len() < RECEIVE_BATCH {
                    match rx.try_recv() {
                        Ok(got) => batch.push(got?),
                        Err(_) => break,
                    }
                }
                let now = stamp_base.map(|base| base.elapsed().as_nanos());
                let n = batch.len();
                let mut receipts = Vec::with_capacity(n);
                {
                    let mut held = held.lock();
                    for (receipt, _) in &batch {
                        held.remove(receipt);
                    }
                }
                for (receipt, stamp) in batch.drain(..) {
                    if let (Some(now), Some(sent)) = (now, stamp) {
                        record_latency(&mut local, now, sent.as_bytes());
                    }
                    receipts.push(receipt);
                }
                // Acked: the prefetch room comes back at once, the deletes
                // run in the background (as mq-sqs does).
                permits.add_permits(n);
                while !receipts.is_empty() {
                    let rest = receipts.split_off(receipts.len().min(MAX_ENTRIES));
                    let chunk = std::mem::replace(&mut receipts, rest);
                    let (ctx, queue_url, slots) = (ctx.clone(), queue_url.clone(), slots.clone());
                    deletes.spawn(async move { delete(&ctx, &queue_url, &slots, chunk).await });
                }
                while let Some(done) = deletes.try_join_next() {
                    done??;
                }
                tally.add(n as u64);
            }
            for t in background {
                t.abort();
            }
            while let Some(done) = deletes.join_next().await {
                done??;
            }
            Ok::<_, Error>(local)
        });
    }
    join_consumers(tasks, &tally, count).await
}

pub(crate) async fn run(args: &Args) -> CliResult<Results> {
    let config = config(&args.url)?;
    let ctx = Arc::new(Ctx {
        clients: SdkClients::build(&config).await?,
        sends: Arc::new(Semaphore::new(config.max_connections.max(1))),
        others: Arc::new(Semaphore::new(config.max_connections.max(1))),
        config,
    });
    let base = Instant::now();
    let body = String::from_utf8(payload(args.size).to_vec())?;

    let dest = create_queue(&ctx, &fresh_name("raw-")).await?;
    let consumers = open_consumers(&ctx, args);
    let started = PhaseClock::start();
    publish(&ctx, &dest, args, &body, None).await?;
    let publish_phase = started.phase(args.count, args.size);
    let started = PhaseClock::start();
    consume(&ctx, &dest, consumers, args.count, None).await?;
    let consume_phase = started.phase(args.count, args.size);

    let e2e_dest = create_queue(&ctx, &fresh_name("raw-e2e-")).await?;
    let consumers = open_consumers(&ctx, args);
    let started = PhaseClock::start();
    let receiving = consume(&ctx, &e2e_dest, consumers, args.count, Some(base));
    let sending = publish(&ctx, &e2e_dest, args, &body, Some(base));
    let (r, s) = tokio::join!(receiving, sending);
    let latency_us = r?;
    s?;
    let end_to_end = started.phase(args.count, args.size);
    let peak_rss_bytes = peak_rss();
    for url in [&dest, &e2e_dest] {
        ctx.clients
            .ops
            .delete_queue()
            .queue_url(url)
            .send()
            .await
            .map_err(aws_sdk_sqs::Error::from)?;
    }
    Ok(Results {
        label: format!(
            "raw (aws-sdk-sqs: SendMessageBatch x10, {} send calls/producer, {} per client, long poll {}s)",
            ctx.config.send_concurrency,
            ctx.config.max_connections,
            secs(ctx.config.wait)
        ),
        publish: publish_phase,
        consume: consume_phase,
        end_to_end,
        latency_us,
        peak_rss_bytes,
        consume_peak_rss_bytes: None,
    })
}

/// Deletes the queues of `destinations`.
pub(crate) async fn cleanup(url: &str, destinations: &[String]) -> CliResult {
    let config = config(url)?;
    let clients = SdkClients::build(&config).await?;
    for name in destinations {
        let out = clients
            .ops
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .map_err(aws_sdk_sqs::Error::from)?;
        if let Some(url) = out.queue_url() {
            clients
                .ops
                .delete_queue()
                .queue_url(url)
                .send()
                .await
                .map_err(aws_sdk_sqs::Error::from)?;
        }
    }
    Ok(())
}

/// This module as an entry of the bench's baseline list.
pub(crate) const BASELINE: super::Baseline = super::Baseline {
    backend: mq_sqs::DRIVER.name,
    run: |args| Box::pin(run(args)),
    ready: None,
    most_messages: None,
    cleanup: |url, destinations| Box::pin(cleanup(url, destinations)),
};
