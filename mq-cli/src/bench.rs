//! `mq bench`: throughput and latency through the SDK, and optionally the
//! same workload through the raw client in the same run.
//!
//! Three phases on fresh destinations:
//! 1. publish: `--producers` tasks each keep up to `--in-flight` confirmed
//!    sends outstanding until `--count` messages are confirmed;
//! 2. consume: `--consumers` tasks receive in batches and ack every message
//!    until all `--count` arrived;
//! 3. end-to-end: producers and consumers at once, each message stamped
//!    with its send time; latency percentiles from the receive side.
//!
//! Consumers are opened before the phase they serve (as an application's
//! would be), so a push-based client may hold up to its prefetch when the
//! phase starts. A phase ends when the last message was received and every
//! consumer was closed (which waits for its acks where the backend queues
//! them); consumers waiting for more are woken at once when the total is in.
//!
//! `--baseline` runs the same phases with the raw client (see
//! [`baseline`]); `--baseline-only` runs only that, so that each side's
//! peak RSS can be measured in its own process.

mod baseline;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mq::{Client, Consumer, DynConsumer, Message, ProducerExt};
use serde_json::json;

use crate::output::progress;
use crate::CliResult;

/// Arguments of `mq bench`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Broker URL. For memory://, give a capacity of at least --count:
    /// memory://bench?capacity=1000000.
    url: String,
    /// Messages per phase [default: 100000; for kafka+mock://, at most
    /// what its partitions keep (5 MiB each)].
    #[arg(long = "count")]
    count_given: Option<u64>,
    /// `--count`, or its default for the URL (set by `run`).
    #[arg(skip)]
    count: u64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Concurrent producer tasks.
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Concurrent consumer tasks (one consumer each, same group).
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Unconfirmed sends per producer.
    #[arg(long, default_value_t = 1000)]
    in_flight: usize,
    /// Unsettled deliveries per consumer.
    #[arg(long, default_value_t = 1000)]
    prefetch: usize,
    /// Also run the workload with the raw client and print SDK/raw ratios.
    #[arg(long)]
    baseline: bool,
    /// Run only the raw-client workload (no SDK client is created).
    #[arg(long, conflicts_with = "baseline")]
    baseline_only: bool,
    /// With --baseline: run SDK and raw this many times, interleaved
    /// (SDK raw SDK raw ...), and report the median SDK/raw ratio of the
    /// pairs with its spread, so that a noisy machine cannot decide it.
    #[arg(long, default_value_t = 1, requires = "baseline")]
    pairs: u32,
    /// With --pairs: run this many pairs first and discard them (default:
    /// 1 when --pairs is 2 or more). The first run of a process pays for
    /// fresh memory (page faults, allocator growth) and cold caches, and it
    /// is always the SDK's: without a warm-up the first pair is biased
    /// against it.
    #[arg(long, requires = "baseline")]
    warmup: Option<u32>,
    /// The raw client stamps every message with a fresh id, as the SDK
    /// does (a UUIDv7: Kafka header and SQS attribute `mq-message-id`,
    /// RabbitMQ's `message_id` property), so the pairs compare the client
    /// path alone, without the cost of the SDK's message id on the wire.
    #[arg(long)]
    raw_ids: bool,
    /// Kafka: the raw consumer copies each record out of librdkafka
    /// (`detach`) and hands it to a task of the runtime, which acks it (the
    /// next offset of its partition, committed by the polling thread), as
    /// an application must to process records off the polling thread. An
    /// SDK delivery is such an owned record (the handler may hold it, move
    /// it to another task and settle it out of order); without this flag
    /// the raw consumer acks each record in place on its polling thread.
    #[arg(long)]
    raw_owned: bool,
}

/// One measured phase.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Phase {
    pub(crate) messages: u64,
    pub(crate) bytes: u64,
    pub(crate) elapsed: Duration,
    /// CPU time of the whole process during the phase (every thread: the
    /// client's, the application's and, for `memory://` and
    /// `kafka+mock://`, the broker's), if the platform reports it. Less
    /// noisy than a rate on a shared machine, and what a user pays for.
    pub(crate) cpu: Option<Duration>,
}

impl Phase {
    pub(crate) fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Microseconds of CPU per message.
    fn cpu_us_per_msg(&self) -> Option<f64> {
        Some(self.cpu?.as_secs_f64() * 1e6 / (self.messages.max(1) as f64))
    }
}

/// When a phase started, by the wall clock and by the process's CPU clock.
pub(crate) struct PhaseClock {
    wall: Instant,
    cpu: Option<cpu_time::ProcessTime>,
}

impl PhaseClock {
    pub(crate) fn start() -> Self {
        PhaseClock {
            wall: Instant::now(),
            cpu: cpu_time::ProcessTime::try_now().ok(),
        }
    }

    /// The phase that started here and ends now, `messages` of `size` bytes.
    pub(crate) fn phase(&self, messages: u64, size: usize) -> Phase {
        Phase {
            messages,
            bytes: messages.saturating_mul(size as u64),
            elapsed: self.wall.elapsed(),
            cpu: self.cpu.and_then(|c| c.try_elapsed().ok()),
        }
    }
}

/// What one run (SDK or raw) measured.
#[derive(Debug, Clone)]
pub(crate) struct Results {
    pub(crate) label: String,
    pub(crate) publish: Phase,
    pub(crate) consume: Phase,
    pub(crate) end_to_end: Phase,
    pub(crate) latency_us: Histogram<u64>,
    pub(crate) peak_rss_bytes: Option<u64>,
    /// The peak during the consume phase alone (SDK runs): what holding a
    /// queue's worth of deliveries costs, without the publish phase's.
    pub(crate) consume_peak_rss_bytes: Option<u64>,
}

impl Results {
    /// Send + receive + ack, phases 1 and 2 together.
    fn send_receive_ack(&self) -> f64 {
        let total = self.publish.elapsed + self.consume.elapsed;
        self.publish.messages as f64 / total.as_secs_f64().max(1e-9)
    }

    /// CPU microseconds per message of send + receive + ack.
    fn send_receive_ack_cpu(&self) -> Option<f64> {
        let cpu = self.publish.cpu? + self.consume.cpu?;
        Some(cpu.as_secs_f64() * 1e6 / (self.publish.messages.max(1) as f64))
    }

    fn to_json(&self) -> serde_json::Value {
        let phase = |p: &Phase| json!({"messages": p.messages, "seconds": p.elapsed.as_secs_f64(), "msg_per_s": p.rate(), "mb_per_s": p.mb_per_s(), "cpu_us_per_msg": p.cpu_us_per_msg()});
        json!({
            "label": self.label,
            "publish": phase(&self.publish),
            "consume": phase(&self.consume),
            "end_to_end": phase(&self.end_to_end),
            "send_receive_ack_msg_per_s": self.send_receive_ack(),
            "send_receive_ack_cpu_us_per_msg": self.send_receive_ack_cpu(),
            "latency_us": {"p50": self.latency_us.value_at_quantile(0.5), "p99": self.latency_us.value_at_quantile(0.99), "p999": self.latency_us.value_at_quantile(0.999)},
            "peak_rss_bytes": self.peak_rss_bytes,
            "consume_peak_rss_bytes": self.consume_peak_rss_bytes,
        })
    }

    fn print(&self) {
        println!("{}", self.label);
        for (name, p) in [
            ("publish", &self.publish),
            ("consume+ack", &self.consume),
            ("end-to-end", &self.end_to_end),
        ] {
            println!(
                "  {name:<12} {:>10.0} msg/s {:>9.2} MB/s  ({} msgs in {:.2}s){}",
                p.rate(),
                p.mb_per_s(),
                p.messages,
                p.elapsed.as_secs_f64(),
                cpu_note(p.cpu_us_per_msg())
            );
        }
        println!(
            "  {:<12} {:>10.0} msg/s{}",
            "send+recv+ack",
            self.send_receive_ack(),
            cpu_note(self.send_receive_ack_cpu())
        );
        println!(
            "  latency      p50 {} us, p99 {} us, p99.9 {} us",
            self.latency_us.value_at_quantile(0.5),
            self.latency_us.value_at_quantile(0.99),
            self.latency_us.value_at_quantile(0.999)
        );
        if let Some(rss) = self.peak_rss_bytes {
            let consume = self
                .consume_peak_rss_bytes
                .map(|c| format!(" (consume phase {:.1} MiB)", c as f64 / 1048576.0))
                .unwrap_or_default();
            println!("  peak RSS     {:.1} MiB{consume}", rss as f64 / 1048576.0);
        }
    }
}

/// ", 1.23 us CPU/msg" when the CPU time is known.
fn cpu_note(us: Option<f64>) -> String {
    us.map(|us| format!(", {us:.2} us CPU/msg"))
        .unwrap_or_default()
}

/// Messages per phase without `--count`.
const DEFAULT_COUNT: u64 = 100_000;

/// `--count`, checked against what the broker keeps of one destination
/// (`kafka+mock://` deletes the oldest records beyond its retention, read
/// or not, and the run would stall until it gives up); without `--count`,
/// [`DEFAULT_COUNT`] or that most, whichever is fewer.
async fn message_count(args: &Args) -> CliResult<u64> {
    let most = baseline::most_messages(args).await?;
    match (args.count_given, most) {
        (Some(count), Some(most)) if count > most => Err(format!(
            "--count {count} is more than this broker keeps of one destination: about \
             {most} messages of {} bytes (kafka+mock:// keeps 5 MiB per partition and \
             deletes the oldest records beyond, read or not); use --count {most} or \
             fewer, or more partitions",
            args.size
        )
        .into()),
        (Some(count), _) => Ok(count),
        (None, Some(most)) if most < DEFAULT_COUNT => {
            eprintln!(
                "--count {most}: the most messages of {} bytes this broker keeps of one \
                 destination (kafka+mock:// keeps 5 MiB per partition)",
                args.size
            );
            Ok(most)
        }
        (None, _) => Ok(DEFAULT_COUNT),
    }
}

pub(crate) async fn run(mut args: Args, json_out: bool) -> CliResult {
    args.count = message_count(&args).await?;
    if args.count == 0 || args.producers == 0 || args.consumers == 0 {
        return Err("--count, --producers and --consumers must be at least 1".into());
    }
    if args.in_flight == 0 || args.prefetch == 0 {
        return Err("--in-flight and --prefetch must be at least 1".into());
    }
    for _ in 0..warmup_pairs(&args) {
        one_pair(&args).await?;
    }
    let mut pairs = Vec::new();
    for _ in 0..args.pairs.max(1) {
        pairs.push(one_pair(&args).await?);
    }
    if pairs.len() > 1 {
        return report_pairs(&args, &pairs, json_out);
    }
    let Some((sdk, raw)) = pairs.pop() else {
        return Ok(());
    };
    if json_out {
        println!(
            "{}",
            json!({"sdk": sdk.as_ref().map(Results::to_json), "raw": raw.as_ref().map(Results::to_json), "args": args_json(&args)})
        );
        return Ok(());
    }
    print_header(&args);
    if let Some(sdk) = &sdk {
        sdk.print();
    }
    if let Some(raw) = &raw {
        raw.print();
    }
    if let (Some(sdk), Some(raw)) = (sdk, raw) {
        println!("SDK / raw");
        for (name, ratio) in PhaseName::ALL
            .iter()
            .map(|p| (p.label(), p.ratio(&sdk, &raw)))
        {
            println!("  {name:<14} {:>6.1}%", 100.0 * ratio);
        }
        let cpu: Vec<_> = PhaseName::ALL
            .iter()
            .filter_map(|p| Some((p.label(), p.cpu_ratio(&sdk, &raw)?)))
            .collect();
        if !cpu.is_empty() {
            println!("raw CPU per message / SDK CPU per message");
            for (name, ratio) in cpu {
                println!("  {name:<14} {:>6.1}%", 100.0 * ratio);
            }
        }
    }
    Ok(())
}

/// One SDK run and one raw run (each when asked for), in that order.
/// Pairs run and discarded before the measured ones.
fn warmup_pairs(args: &Args) -> u32 {
    args.warmup.unwrap_or(if args.pairs > 1 { 1 } else { 0 })
}

async fn one_pair(args: &Args) -> CliResult<(Option<Results>, Option<Results>)> {
    let sdk = if args.baseline_only {
        None
    } else {
        let client = mq::connect(&args.url).await?;
        if client.backend_name() == "memory"
            && (client.capabilities().max_batch as u64) < args.count
        {
            return Err(format!(
                "the memory broker holds {} messages per queue, fewer than --count {}; \
                 use a URL like memory://bench?capacity={}",
                client.capabilities().max_batch,
                args.count,
                args.count
            )
            .into());
        }
        reset_peak_rss();
        let (sdk, destinations) = sdk_workload(&client, args).await?;
        drop(client);
        // The SDK run's destinations hold nothing any more; delete them so
        // that repeated runs do not pile up queues and topics on the broker.
        baseline::cleanup(&args.url, &destinations).await;
        Some(sdk)
    };
    let raw = if args.baseline || args.baseline_only {
        reset_peak_rss();
        Some(baseline::run(args).await?)
    } else {
        None
    };
    Ok((sdk, raw))
}

fn args_json(args: &Args) -> serde_json::Value {
    json!({
        "url": mq::url::redact_str(&args.url), "count": args.count, "size": args.size,
        "producers": args.producers, "consumers": args.consumers,
        "in_flight": args.in_flight, "prefetch": args.prefetch, "pairs": args.pairs, "warmup_pairs": warmup_pairs(args),
        "raw_ids": args.raw_ids, "raw_owned": args.raw_owned})
}

fn print_header(args: &Args) {
    println!(
        "{} messages of {} bytes, {} producer(s) x {} in flight, {} consumer(s) x prefetch {}",
        args.count, args.size, args.producers, args.in_flight, args.consumers, args.prefetch
    );
    if args.raw_ids && (args.baseline || args.baseline_only) {
        println!("the raw client gives every message an id, as the SDK does (--raw-ids)");
    }
    if args.raw_owned && (args.baseline || args.baseline_only) {
        println!(
            "the raw Kafka consumer hands owned records to a task, which acks them (--raw-owned)"
        );
    }
}

/// The phases an SDK/raw ratio is reported for.
#[derive(Debug, Clone, Copy)]
enum PhaseName {
    Publish,
    Consume,
    EndToEnd,
    SendReceiveAck,
}

impl PhaseName {
    const ALL: [PhaseName; 4] = [
        PhaseName::Publish,
        PhaseName::Consume,
        PhaseName::EndToEnd,
        PhaseName::SendReceiveAck,
    ];

    fn label(self) -> &'static str {
        match self {
            PhaseName::Publish => "publish",
            PhaseName::Consume => "consume+ack",
            PhaseName::EndToEnd => "end-to-end",
            PhaseName::SendReceiveAck => "send+recv+ack",
        }
    }

    fn rate(self, r: &Results) -> f64 {
        match self {
            PhaseName::Publish => r.publish.rate(),
            PhaseName::Consume => r.consume.rate(),
            PhaseName::EndToEnd => r.end_to_end.rate(),
            PhaseName::SendReceiveAck => r.send_receive_ack(),
        }
    }

    /// SDK rate over raw rate.
    fn ratio(self, sdk: &Results, raw: &Results) -> f64 {
        self.rate(sdk) / self.rate(raw).max(1e-9)
    }

    /// CPU microseconds per message of the whole process.
    fn cpu(self, r: &Results) -> Option<f64> {
        match self {
            PhaseName::Publish => r.publish.cpu_us_per_msg(),
            PhaseName::Consume => r.consume.cpu_us_per_msg(),
            PhaseName::EndToEnd => r.end_to_end.cpu_us_per_msg(),
            PhaseName::SendReceiveAck => r.send_receive_ack_cpu(),
        }
    }

    /// Raw CPU per message over SDK CPU per message: like the rate ratio,
    /// 100% is parity and less means the SDK costs more.
    fn cpu_ratio(self, sdk: &Results, raw: &Results) -> Option<f64> {
        Some(self.cpu(raw)? / self.cpu(sdk)?.max(1e-9))
    }
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Prints (or writes as JSON) each pair's ratios and, per phase, the median
/// ratio with its spread (lowest and highest pair) and the median rates.
fn report_pairs(
    args: &Args,
    pairs: &[(Option<Results>, Option<Results>)],
    json_out: bool,
) -> CliResult {
    let both: Vec<(&Results, &Results)> = pairs
        .iter()
        .filter_map(|(s, r)| Some((s.as_ref()?, r.as_ref()?)))
        .collect();
    let mut summary = Vec::new();
    let mut cpu_summary = Vec::new();
    for phase in PhaseName::ALL {
        let mut ratios: Vec<f64> = both.iter().map(|(s, r)| phase.ratio(s, r)).collect();
        let mut sdk: Vec<f64> = both.iter().map(|(s, _)| phase.rate(s)).collect();
        let mut raw: Vec<f64> = both.iter().map(|(_, r)| phase.rate(r)).collect();
        let (low, high) = ratios
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), r| {
                (l.min(*r), h.max(*r))
            });
        summary.push((
            phase,
            median(&mut ratios),
            low,
            high,
            median(&mut sdk),
            median(&mut raw),
        ));
        cpu_summary.push(CpuSummary::of(phase, &both));
    }
    if json_out {
        let phases: serde_json::Map<String, serde_json::Value> = summary
            .iter()
            .zip(&cpu_summary)
            .map(|((p, med, low, high, sdk, raw), cpu)| {
                (
                    p.label().to_owned(),
                    json!({"median_ratio": med, "min_ratio": low, "max_ratio": high,
                    "median_sdk_msg_per_s": sdk, "median_raw_msg_per_s": raw,
                    "median_cpu_ratio": cpu.as_ref().map(|c| c.ratio),
                    "median_sdk_cpu_us_per_msg": cpu.as_ref().map(|c| c.sdk_us),
                    "median_raw_cpu_us_per_msg": cpu.as_ref().map(|c| c.raw_us)}),
                )
            })
            .collect();
        let runs: Vec<_> = both
            .iter()
            .map(|(s, r)| json!({"sdk": s.to_json(), "raw": r.to_json()}))
            .collect();
        println!(
            "{}",
            json!({"args": args_json(args), "pairs": runs, "summary": phases})
        );
        return Ok(());
    }
    print_header(args);
    println!(
        "{} interleaved pairs (SDK, raw, SDK, raw, ...) after {} warm-up pair(s), not counted",
        both.len(),
        warmup_pairs(args)
    );
    for (i, (s, r)) in both.iter().enumerate() {
        let ratios: Vec<String> = PhaseName::ALL
            .iter()
            .map(|p| format!("{} {:.1}%", p.label(), 100.0 * p.ratio(s, r)))
            .collect();
        println!("  pair {}: {}", i + 1, ratios.join(", "));
    }
    println!(
        "{:<14} {:>14} {:>14} {:>8} {:>16}",
        "SDK / raw", "SDK msg/s", "raw msg/s", "median", "spread"
    );
    for (phase, med, low, high, sdk, raw) in summary {
        println!(
            "  {:<12} {:>14.0} {:>14.0} {:>7.1}% {:>7.1}-{:.1}%",
            phase.label(),
            sdk,
            raw,
            100.0 * med,
            100.0 * low,
            100.0 * high
        );
    }
    if cpu_summary.iter().any(Option::is_some) {
        println!(
            "{:<14} {:>14} {:>14} {:>8} {:>16}",
            "CPU per msg", "SDK us", "raw us", "raw/SDK", "spread"
        );
        for (phase, cpu) in PhaseName::ALL.iter().zip(&cpu_summary) {
            if let Some(c) = cpu {
                println!(
                    "  {:<12} {:>14.2} {:>14.2} {:>7.1}% {:>7.1}-{:.1}%",
                    phase.label(),
                    c.sdk_us,
                    c.raw_us,
                    100.0 * c.ratio,
                    100.0 * c.low,
                    100.0 * c.high
                );
            }
        }
    }
    Ok(())
}

/// Per phase, over the pairs: the median CPU per message of each side and
/// the median raw/SDK ratio with its spread.
struct CpuSummary {
    sdk_us: f64,
    raw_us: f64,
    ratio: f64,
    low: f64,
    high: f64,
}

impl CpuSummary {
    /// `None` unless every pair has both sides' CPU time.
    fn of(phase: PhaseName, pairs: &[(&Results, &Results)]) -> Option<Self> {
        let mut sdk = Vec::new();
        let mut raw = Vec::new();
        let mut ratios = Vec::new();
        for (s, r) in pairs {
            sdk.push(phase.cpu(s)?);
            raw.push(phase.cpu(r)?);
            ratios.push(phase.cpu_ratio(s, r)?);
        }
        let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let high = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(CpuSummary {
            sdk_us: median(&mut sdk),
            raw_us: median(&mut raw),
            ratio: median(&mut ratios),
            low,
            high,
        })
    }
}

/// The payload every message carries.
pub(crate) fn payload(size: usize) -> bytes::Bytes {
    bytes::Bytes::from(
        (0..size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// Splits `total` into `parts` nearly equal shares.
pub(crate) fn shares(total: u64, parts: usize) -> Vec<u64> {
    let parts = parts.max(1) as u64;
    (0..parts)
        .map(|i| total / parts + u64::from(i < total % parts))
        .collect()
}

/// The header carrying a message's send time for latency: nanoseconds
/// since the start of the run, in decimal.
pub(crate) const SENT_AT: &str = "bench-sent-ns";

/// A fresh destination name (valid on every backend: letters, digits, `-`).
pub(crate) fn fresh_name(what: &str) -> String {
    format!("mq-bench-{what}{}", uuid::Uuid::now_v7().simple())
}

/// Records the latency of a message stamped `sent` (ns since `base`) and
/// received at `now_ns`.
pub(crate) fn record_latency(histogram: &mut Histogram<u64>, now_ns: u128, sent: &[u8]) {
    let Some(sent) = std::str::from_utf8(sent)
        .ok()
        .and_then(|s| s.parse::<u128>().ok())
    else {
        return;
    };
    let us = now_ns.saturating_sub(sent) / 1000;
    let _ = histogram.record(u64::try_from(us).unwrap_or(u64::MAX));
}

/// Counts what the consumers of one phase received, and tells them all
/// when the total is in (so none sits out its receive timeout).
#[derive(Debug)]
pub(crate) struct Tally {
    received: AtomicU64,
    count: u64,
    done: tokio::sync::watch::Sender<bool>,
}

impl Tally {
    pub(crate) fn new(count: u64) -> Arc<Self> {
        Arc::new(Tally {
            received: AtomicU64::new(0),
            count,
            done: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Adds `n` received messages; true once the total is in.
    pub(crate) fn add(&self, n: u64) -> bool {
        let total = self.received.fetch_add(n, Ordering::Relaxed) + n;
        if total >= self.count {
            self.done.send_replace(true);
            return true;
        }
        false
    }

    pub(crate) fn is_done(&self) -> bool {
        self.received.load(Ordering::Relaxed) >= self.count
    }

    pub(crate) fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Resolves once the total is in.
    pub(crate) async fn wait_done(&self) {
        let mut rx = self.done.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }
}

/// How long a consume phase may go without a single message before the
/// bench gives up: a broker that dropped messages (`kafka+mock://` past its
/// retention of 5 MiB per partition) or a stalled consumer would otherwise
/// keep it waiting for ever. A slow broker that still delivers is waited for.
const STALL: Duration = Duration::from_secs(60);

/// Waits for the consumer tasks of a phase, as long as messages keep
/// arriving (see [`STALL`]).
pub(crate) async fn join_consumers(
    tasks: tokio::task::JoinSet<CliResult<Histogram<u64>>>,
    tally: &Tally,
    count: u64,
) -> CliResult<Histogram<u64>> {
    join_consumers_within(tasks, tally, count, STALL).await
}

async fn join_consumers_within(
    mut tasks: tokio::task::JoinSet<CliResult<Histogram<u64>>>,
    tally: &Tally,
    count: u64,
    stall: Duration,
) -> CliResult<Histogram<u64>> {
    let all = async {
        let mut latency = new_histogram()?;
        while let Some(done) = tasks.join_next().await {
            let local = done.map_err(|e| format!("consumer task: {e}"))??;
            let _ = latency.add(&local);
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(latency)
    };
    tokio::pin!(all);
    let check = (stall / 10).max(Duration::from_millis(10));
    let (mut seen, mut since) = (tally.received(), Instant::now());
    loop {
        tokio::select! {
            r = &mut all => return r,
            () = tokio::time::sleep(check) => {
                let now = tally.received();
                if now != seen {
                    (seen, since) = (now, Instant::now());
                } else if since.elapsed() >= stall {
                    return Err(format!(
                        "no message arrived for {stall:?}: {now} of {count} consumed (did the \
                         broker drop messages? kafka+mock:// keeps at most 5 MiB per \
                         partition: use more partitions or fewer messages)"
                    )
                    .into());
                }
            }
        }
    }
}

/// Runs the SDK workload; returns its results and the destinations it used.
async fn sdk_workload(client: &Client, args: &Args) -> CliResult<(Results, Vec<String>)> {
    let base = Instant::now();
    let body = payload(args.size);
    let dest = fresh_name("");
    let mut consumers = open_consumers(client, &dest, args).await?;
    baseline::ready(&args.url, &dest, &mut consumers).await?;

    let bar = progress(args.count, "publish");
    let started = PhaseClock::start();
    publish(client, &dest, args, &body, None, &bar).await?;
    let publish_phase = started.phase(args.count, args.size);
    bar.finish_and_clear();

    // The peak so far, then the consume phase's own.
    let publish_peak = peak_rss();
    reset_peak_rss();
    let bar = progress(args.count, "consume");
    let started = PhaseClock::start();
    consume(consumers, args.count, None, &bar).await?;
    let consume_phase = started.phase(args.count, args.size);
    let consume_peak = peak_rss();
    bar.finish_and_clear();

    let e2e_dest = fresh_name("e2e-");
    let mut consumers = open_consumers(client, &e2e_dest, args).await?;
    baseline::ready(&args.url, &e2e_dest, &mut consumers).await?;
    let bar = progress(args.count, "end-to-end");
    let started = PhaseClock::start();
    let receiving = consume(consumers, args.count, Some(base), &bar);
    let sending = publish(client, &e2e_dest, args, &body, Some(base), &bar);
    let (r, s) = tokio::join!(receiving, sending);
    let latency_us = r?;
    s?;
    let e2e = started.phase(args.count, args.size);
    bar.finish_and_clear();
    let results = Results {
        label: format!("SDK ({})", client.backend_name()),
        publish: publish_phase,
        consume: consume_phase,
        end_to_end: e2e,
        latency_us,
        peak_rss_bytes: peak_rss().max(publish_peak),
        consume_peak_rss_bytes: consume_peak,
    };
    Ok((results, vec![dest, e2e_dest]))
}

async fn open_consumers(client: &Client, dest: &str, args: &Args) -> CliResult<Vec<DynConsumer>> {
    let mut consumers = Vec::with_capacity(args.consumers);
    for _ in 0..args.consumers {
        consumers.push(client.consumer(dest).prefetch(args.prefetch).await?);
    }
    Ok(consumers)
}

async fn publish(
    client: &Client,
    dest: &str,
    args: &Args,
    body: &bytes::Bytes,
    stamp_from: Option<Instant>,
    bar: &indicatif::ProgressBar,
) -> CliResult {
    let mut tasks = tokio::task::JoinSet::new();
    for share in shares(args.count, args.producers) {
        let producer = client.producer().await?;
        let (dest, body, bar) = (dest.to_owned(), body.clone(), bar.clone());
        let in_flight = args.in_flight;
        tasks.spawn(async move {
            let mut pipeline = producer.pipeline(in_flight);
            let mut sent = 0u64;
            for _ in 0..share {
                let mut m = Message::new(body.clone());
                if let Some(base) = stamp_from {
                    m = m.with_header(SENT_AT, base.elapsed().as_nanos().to_string());
                }
                pipeline.send(dest.as_str(), m).await;
                sent += 1;
                if sent % 1024 == 0 {
                    bar.inc(1024);
                }
            }
            bar.inc(sent % 1024);
            pipeline.finish().await.into_result().map(|_| ())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| format!("producer task: {e}"))??;
    }
    Ok(())
}

/// Most deliveries taken (and then acked one by one) per receive call.
pub(crate) const RECEIVE_BATCH: usize = 1000;

/// How long a receive call waits for its first delivery.
pub(crate) const RECEIVE_WAIT: Duration = Duration::from_millis(200);

/// Receives and acks `count` messages; with `stamp_base`, returns the
/// latency histogram of the stamped ones.
async fn consume(
    consumers: Vec<DynConsumer>,
    count: u64,
    stamp_base: Option<Instant>,
    bar: &indicatif::ProgressBar,
) -> CliResult<Histogram<u64>> {
    let tally = Tally::new(count);
    let mut tasks = tokio::task::JoinSet::new();
    for mut consumer in consumers {
        let (tally, bar) = (tally.clone(), bar.clone());
        tasks.spawn(async move {
            let mut local = new_histogram()?;
            while !tally.is_done() {
                // Receiving is cancel-safe: a batch cut off by the end of
                // the phase loses nothing.
                let batch = tokio::select! {
                    biased;
                    batch = consumer.receive_batch(RECEIVE_BATCH, RECEIVE_WAIT) => batch?,
                    () = tally.wait_done() => break,
                };
                let now = stamp_base.map(|base| base.elapsed().as_nanos());
                let n = batch.len() as u64;
                for d in batch {
                    if let (Some(now), Some(sent)) = (now, d.headers().get(SENT_AT)) {
                        record_latency(&mut local, now, sent.as_bytes());
                    }
                    d.ack().await?;
                }
                tally.add(n);
                bar.inc(n);
            }
            consumer.close().await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(local)
        });
    }
    join_consumers(tasks, &tally, count).await
}

pub(crate) fn new_histogram() -> CliResult<Histogram<u64>> {
    Histogram::new(3).map_err(|e| format!("histogram: {e}").into())
}

/// Peak resident set size of this process (Linux `VmHWM`).
pub(crate) fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the peak RSS counter so each run reports its own peak (Linux).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(line: &[&str]) -> Args {
        use clap::Parser;
        let argv = ["bench", "memory://"].iter().chain(line);
        Cli::try_parse_from(argv).expect("arguments").args
    }

    /// `kafka+mock://` deletes the oldest records beyond 5 MiB per
    /// partition: without `--count` the bench sends at most what the
    /// partitions keep, and a larger `--count` is refused before any run.
    #[cfg(feature = "kafka")]
    #[tokio::test]
    async fn the_count_fits_what_kafka_mock_keeps() {
        async fn count(url: &str, line: &[&str]) -> CliResult<u64> {
            use clap::Parser;
            let argv = ["bench", url].into_iter().chain(line.iter().copied());
            message_count(&Cli::try_parse_from(argv).expect("arguments").args).await
        }
        let p4 = "kafka+mock://bench-count?partitions=4";
        let most = count(p4, &[]).await.expect("a count");
        assert!((50_000..DEFAULT_COUNT).contains(&most), "{most}");
        assert_eq!(count(p4, &["--count", "1000"]).await.expect("fits"), 1000);
        let refused = count(p4, &["--count", "100000"])
            .await
            .expect_err("too many");
        assert!(refused
            .to_string()
            .contains(&format!("--count {most} or fewer")));
        // Larger records: fewer of them.
        let big = count(p4, &["--size", "1000"]).await.expect("a count");
        assert!(big < most / 4, "{big} of 1000 bytes against {most} of 100");
        let p32 = "kafka+mock://bench-count?partitions=32";
        assert_eq!(count(p32, &[]).await.expect("a count"), DEFAULT_COUNT);
        assert_eq!(
            count("memory://", &[]).await.expect("a count"),
            DEFAULT_COUNT
        );
    }

    /// Several pairs get one warm-up pair unless told otherwise; a single
    /// run (the CI smoke run) gets none.
    #[test]
    fn warm_up_pairs_come_with_pairs() {
        assert_eq!(warmup_pairs(&args(&["--baseline"])), 0);
        assert_eq!(warmup_pairs(&args(&["--baseline", "--pairs", "3"])), 1);
        assert_eq!(
            warmup_pairs(&args(&["--baseline", "--pairs", "3", "--warmup", "0"])),
            0
        );
        assert_eq!(warmup_pairs(&args(&["--baseline", "--warmup", "2"])), 2);
    }

    /// A phase that keeps a core busy reports about that much CPU time.
    #[test]
    fn a_phase_reports_the_cpu_time_it_used() {
        let clock = PhaseClock::start();
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let phase = clock.phase(1000, 10);
        let cpu = phase.cpu.expect("Linux reports process CPU time");
        assert!(cpu >= Duration::from_millis(40), "{cpu:?}");
        let per_msg = phase.cpu_us_per_msg().expect("cpu known");
        assert!((40.0..1_000.0).contains(&per_msg), "{per_msg}");
    }

    /// The CPU ratio reads like the rate ratio: an SDK that needs twice the
    /// raw client's CPU per message is at 50%.
    #[test]
    fn the_cpu_ratio_is_raw_over_sdk() {
        let phase = |cpu_ms: u64| Phase {
            messages: 1000,
            bytes: 0,
            elapsed: Duration::from_secs(1),
            cpu: Some(Duration::from_millis(cpu_ms)),
        };
        let results = |cpu_ms: u64| Results {
            label: String::new(),
            publish: phase(cpu_ms),
            consume: phase(cpu_ms),
            end_to_end: phase(cpu_ms),
            latency_us: new_histogram().expect("histogram"),
            peak_rss_bytes: None,
            consume_peak_rss_bytes: None,
        };
        let (sdk, raw) = (results(2), results(1));
        let ratio = PhaseName::Consume
            .cpu_ratio(&sdk, &raw)
            .expect("both known");
        assert!((ratio - 0.5).abs() < 1e-9, "{ratio}");
        let summary = CpuSummary::of(PhaseName::SendReceiveAck, &[(&sdk, &raw)]).expect("known");
        assert!((summary.sdk_us - 4.0).abs() < 1e-9, "{}", summary.sdk_us);
        assert!((summary.raw_us - 2.0).abs() < 1e-9, "{}", summary.raw_us);
    }

    #[tokio::test]
    async fn a_consume_phase_without_progress_fails_instead_of_waiting_for_ever() {
        let tally = Tally::new(10);
        let mut tasks = tokio::task::JoinSet::new();
        let t = tally.clone();
        tasks.spawn(async move {
            t.add(3);
            std::future::pending::<()>().await;
            new_histogram()
        });
        let started = Instant::now();
        let r = join_consumers_within(tasks, &tally, 10, Duration::from_millis(200)).await;
        let e = r.expect_err("a stalled phase is an error").to_string();
        assert!(e.contains("3 of 10"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_slow_phase_that_keeps_delivering_is_waited_for() {
        let tally = Tally::new(4);
        let mut tasks = tokio::task::JoinSet::new();
        let t = tally.clone();
        tasks.spawn(async move {
            // The phase takes longer than the stall window, each message
            // comes within it.
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                t.add(1);
            }
            new_histogram()
        });
        join_consumers_within(tasks, &tally, 4, Duration::from_secs(1))
            .await
            .expect("progress keeps the phase alive");
        assert!(tally.is_done());
    }

    #[test]
    fn median_of_odd_even_and_unsorted_pairs() {
        assert_eq!(median(&mut [0.9, 0.7, 1.1]), 0.9);
        assert_eq!(median(&mut [1.0, 0.5, 0.75, 0.25]), 0.625);
        assert!(median(&mut []).is_nan());
    }
}
