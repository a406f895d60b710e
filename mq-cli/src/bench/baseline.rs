//! The same workload through the raw client, for the SDK/raw ratio.
//!
//! Each baseline runs the three phases of the SDK workload (publish,
//! consume+ack, end-to-end) on fresh destinations of its own, with the
//! client settings the backend crate uses, read from the same URL:
//!
//! | scheme | baseline | module |
//! |---|---|---|
//! | `memory://` | a bare bounded `tokio::sync::mpsc` channel | here |
//! | `amqp://`, `amqps://` | lapin, publisher confirms, `basic.qos` prefetch, manual acks | [`rabbit`] |
//! | `kafka://`, `kafka+mock://` | rdkafka, the same producer and consumer settings | [`kafka`] |
//! | `sqs://`, `sqs+http://`, `sqs+https://` | aws-sdk-sqs, `SendMessageBatch`, long polls, `DeleteMessageBatch` | [`sqs`] |
//!
//! memory:// compares against a bare bounded `tokio::sync::mpsc` channel of
//! `(payload, timestamp)` pairs with the same producer count and capacity
//! `--count`; its single receiver drains with `recv_many` (an mpsc channel
//! has one receiver, so `--consumers` does not apply to it).

#[cfg(feature = "kafka")]
mod kafka;
#[cfg(feature = "rabbit")]
mod rabbit;
#[cfg(feature = "sqs")]
mod sqs;

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{new_histogram, payload, shares, Args, PhaseClock, Results};
use crate::CliResult;

/// A future of the baselines (boxed: they are kept as function pointers).
pub(crate) type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Waits until the SDK's consumers of a destination are ready.
pub(crate) type ReadyFn =
    for<'a> fn(&'a str, &'a str, &'a mut [mq::DynConsumer]) -> Boxed<'a, CliResult>;

/// The most messages a destination keeps (see [`Baseline::most_messages`]).
pub(crate) type MostFn = for<'a> fn(&'a Args) -> Boxed<'a, CliResult<Option<u64>>>;

/// One backend's raw-client baseline, found by the driver's name: adding a
/// backend's baseline is a module with a `BASELINE` and one line in
/// [`BASELINES`].
pub(crate) struct Baseline {
    /// The driver's name (`mq::drivers()`), e.g. `"rabbitmq"`.
    pub(crate) backend: &'static str,
    /// Runs the three phases through the raw client.
    pub(crate) run: for<'a> fn(&'a Args) -> Boxed<'a, CliResult<Results>>,
    /// Waits until the SDK's consumers are ready (Kafka: the group joined).
    pub(crate) ready: Option<ReadyFn>,
    /// The most messages one phase may send to a destination before the
    /// broker deletes ones not yet consumed (`kafka+mock://`'s retention);
    /// `None` when there is no such limit.
    pub(crate) most_messages: Option<MostFn>,
    /// Deletes the bench's destinations.
    pub(crate) cleanup: for<'a> fn(&'a str, &'a [String]) -> Boxed<'a, CliResult>,
}

/// The baselines this build has.
const BASELINES: &[Baseline] = &[
    #[cfg(feature = "rabbit")]
    rabbit::BASELINE,
    #[cfg(feature = "kafka")]
    kafka::BASELINE,
    #[cfg(feature = "sqs")]
    sqs::BASELINE,
];

/// The name of the driver serving `url`'s scheme (`mq::drivers()`).
fn backend_of(url: &str) -> Option<&'static str> {
    let scheme = url.split("://").next().unwrap_or("");
    mq::drivers()
        .find(|d| d.schemes.contains(&scheme))
        .map(|d| d.name)
}

/// The raw-client baseline for `url`'s backend, if this build has one.
fn baseline_of(url: &str) -> Option<&'static Baseline> {
    let backend = backend_of(url)?;
    BASELINES.iter().find(|b| b.backend == backend)
}

pub(crate) async fn run(args: &Args) -> CliResult<Results> {
    if backend_of(&args.url) == Some(mq::memory::DRIVER.name) {
        return memory(args).await;
    }
    match baseline_of(&args.url) {
        Some(baseline) => (baseline.run)(args).await,
        None => Err(format!(
            "no raw-client baseline for `{}://` in this build",
            args.url.split("://").next().unwrap_or("")
        )
        .into()),
    }
}

/// Waits until the SDK's `consumers` of `destination` are ready to receive
/// where joining takes time (a Kafka consumer group), so that no phase
/// measures it; the baselines do the same for theirs.
pub(crate) async fn ready(
    url: &str,
    destination: &str,
    consumers: &mut [mq::DynConsumer],
) -> CliResult {
    match baseline_of(url).and_then(|b| b.ready) {
        Some(ready) => ready(url, destination, consumers).await,
        None => Ok(()),
    }
}

/// The most messages a phase may send to one destination of `args.url`
/// without losing any to the broker's retention, if it has such a limit.
pub(crate) async fn most_messages(args: &Args) -> CliResult<Option<u64>> {
    match baseline_of(&args.url).and_then(|b| b.most_messages) {
        Some(most) => most(args).await,
        None => Ok(None),
    }
}

/// Deletes the bench's `destinations` (and what the SDK made for them, such
/// as Kafka retry topics) from the broker `url` names. Failures are only
/// reported: the measurement is done by then.
pub(crate) async fn cleanup(url: &str, destinations: &[String]) {
    let Some(baseline) = baseline_of(url) else {
        return;
    };
    if let Err(e) = (baseline.cleanup)(url, destinations).await {
        eprintln!("warning: could not delete the bench destinations {destinations:?}: {e}");
    }
}

async fn channel_publish(
    tx: &mpsc::Sender<(Bytes, u128)>,
    args: &Args,
    body: &Bytes,
    base: Option<Instant>,
) -> CliResult {
    let mut tasks = tokio::task::JoinSet::new();
    for share in shares(args.count, args.producers) {
        let (tx, body) = (tx.clone(), body.clone());
        tasks.spawn(async move {
            for _ in 0..share {
                let stamp = base.map_or(0, |b| b.elapsed().as_nanos());
                tx.send((body.clone(), stamp))
                    .await
                    .map_err(|_| "channel closed")?;
            }
            Ok::<(), &'static str>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| format!("producer task: {e}"))??;
    }
    Ok(())
}

async fn memory(args: &Args) -> CliResult<Results> {
    let body = payload(args.size);
    let capacity = usize::try_from(args.count).unwrap_or(usize::MAX);
    let (tx, mut rx) = mpsc::channel::<(Bytes, u128)>(capacity);

    let started = PhaseClock::start();
    channel_publish(&tx, args, &body, None).await?;
    let publish = started.phase(args.count, args.size);

    let started = PhaseClock::start();
    let mut buf = Vec::with_capacity(1000);
    let mut got = 0u64;
    while got < args.count {
        buf.clear();
        if rx.recv_many(&mut buf, 1000).await == 0 {
            return Err("channel closed early".into());
        }
        got += buf.len() as u64;
    }
    let consume = started.phase(args.count, args.size);

    let base = Instant::now();
    let mut latency = new_histogram()?;
    let started = PhaseClock::start();
    let receiving = async {
        let mut got = 0u64;
        let mut buf = Vec::with_capacity(1000);
        while got < args.count {
            buf.clear();
            if rx.recv_many(&mut buf, 1000).await == 0 {
                return Err::<(), Box<dyn std::error::Error + Send + Sync>>(
                    "channel closed early".into(),
                );
            }
            let now = base.elapsed().as_nanos();
            for (_, sent) in &buf {
                let us = now.saturating_sub(*sent) / 1000;
                let _ = latency.record(u64::try_from(us).unwrap_or(u64::MAX));
            }
            got += buf.len() as u64;
        }
        Ok(())
    };
    let (r, s) = tokio::join!(receiving, channel_publish(&tx, args, &body, Some(base)));
    r?;
    s?;
    let end_to_end = started.phase(args.count, args.size);
    Ok(Results {
        label: "raw (tokio mpsc channel)".to_owned(),
        publish,
        consume,
        end_to_end,
        latency_us: latency,
        peak_rss_bytes: super::peak_rss(),
        consume_peak_rss_bytes: None,
    })
}
