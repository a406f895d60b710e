//! Kafka baseline: the bench workload written directly against rdkafka,
//! with the settings `mq-kafka` uses for the same URL.
//!
//! The settings come from `KafkaConfig::from_url`, turned into librdkafka
//! options by the same `KafkaConfig::producer_config`, `consumer_config`
//! and `admin_config` that `mq-kafka` uses:
//!
//! | setting | mq-kafka | this baseline |
//! |---|---|---|
//! | every client | `bootstrap.servers`, `client.id`, security options, `message.max.bytes`, `log_level=3`, `statistics.interval.ms` (for health), `rdkafka.*` pass-through last | the same |
//! | producer | one `FutureProducer` per client: `acks=all`, `enable.idempotence=true`, `linger.ms=5`, `message.timeout.ms=30000` (`send_timeout`), `batch.size`/`compression.type` if set | the same; one producer shared by the `--producers` tasks, each keeping `--in-flight` delivery futures outstanding (`send_result`, no timer per message) |
//! | record | value, header `mq-message-id` (a UUIDv7), no key | value only (plus the latency header in the end-to-end phase), no key; with `--raw-ids` also the `mq-message-id` header (a UUIDv7) |
//! | topic | created with `partitions` and `replication` when `auto_create_topics=true` | always created with `partitions` and `replication` |
//! | `kafka+mock://` | librdkafka's mock cluster in the process, topics created through it (no Admin API there) | the same: a cluster of the same URL (the SDK's is gone by then, so a fresh one), topics created through it |
//! | consumer | a `BaseConsumer` per consumer polled on its own thread in group `mq-<topic>`, subscribed to the topic and its retry topic; `enable.auto.commit=false`, `enable.auto.offset.store=false`, `auto.offset.reset=earliest`, `session.timeout.ms=10000`, `heartbeat.interval.ms=1000`, `enable.partition.eof=false`, `topic.metadata.refresh.interval.ms=10000`; polls never block: with nothing queued the thread waits up to 20 ms on a doorbell that librdkafka rings when something arrives (and `close` when the consumer stops) | the same settings and thread, subscribed to the topic only; in place, 20 ms polls (the thread sees the end of the phase after its last ack); with `--raw-owned`, the same doorbell, also rung by the task when the phase is done (a blocking poll would see the end only when it times out) |
//! | prefetch | at most `--prefetch` deliveries handed out unsettled, and a read-ahead of twice the prefetch (at least 500) behind them; when that is full the thread stops taking records (librdkafka's bounded fetch queue holds what it fetches) and pauses the partitions only after half the session timeout | before the phase, the same read-ahead taken, then no poll until the phase starts; in the phase each record is acked as it is polled, so librdkafka's own fetch queue (`queued.min.messages`, `queued.max.messages.kbytes`, defaults) is the only read-ahead |
//! | ack | offset marked done; the lowest unsettled offset per partition committed (async) every `commit_interval` (200 ms) and on close (sync) | the next offset per partition committed (async) every `commit_interval` and at the end (sync) |
//! | where records are processed | the application's task, owning each delivery (it may hold it, move it and settle it out of order) | on the polling thread, in place (the record is never copied); with `--raw-owned` each record is copied out (`detach`) and sent on in bursts of up to 256 (what librdkafka has queued) to a task of the runtime over a channel bounded by `--prefetch` records, which acks each (its partition's next offset, one lock per burst), as an application processing records off the polling thread must |
//!
//! Both the SDK run and the baseline wait until their consumer group is
//! ready before they start a phase ([`sdk_ready`], [`raw_ready`]: a probe
//! record to every partition, round after round, until one round reached
//! every consumer): a group join takes seconds on some brokers and would
//! otherwise land in one phase or another.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use hdrhistogram::Histogram;
use mq_kafka::{KafkaConfig, MockCluster};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::oneshot;

use super::super::{
    fresh_name, join_consumers, new_histogram, payload, peak_rss, record_latency, shares, Args,
    PhaseClock, Results, Tally, SENT_AT,
};
use crate::CliResult;

/// The settings `url` gives, and for `kafka+mock://` the in-process
/// cluster it names (joined if the SDK's client has it open, else started
/// afresh); keep the cluster while using the settings.
async fn open(url: &str) -> CliResult<(KafkaConfig, Option<MockCluster>)> {
    if mq_kafka::is_mock_url(url) {
        let (cluster, config) = MockCluster::open(url).await?;
        return Ok((config, Some(cluster)));
    }
    Ok((KafkaConfig::from_url(url)?, None))
}

/// How long one poll waits (`mq-kafka` polls every 20 ms too).
const POLL: Duration = Duration::from_millis(20);

/// How long to wait for the consumers to join their group.
const JOIN_WAIT: Duration = Duration::from_secs(60);

fn admin(config: &KafkaConfig) -> CliResult<AdminClient<DefaultClientContext>> {
    Ok(config.admin_config().create()?)
}

fn admin_options(config: &KafkaConfig) -> AdminOptions {
    AdminOptions::new()
        .operation_timeout(Some(config.send_timeout))
        .request_timeout(Some(config.send_timeout))
}

async fn create_topic(
    admin: &AdminClient<DefaultClientContext>,
    mock: Option<&MockCluster>,
    config: &KafkaConfig,
    topic: &str,
) -> CliResult {
    if let Some(mock) = mock {
        // The mock broker has no Admin CreateTopics (as mq-kafka does).
        let replication = i32::from(config.replication);
        return Ok(mock
            .create_topic(topic, config.partitions, replication)
            .await?);
    }
    let new = NewTopic::new(
        topic,
        config.partitions,
        TopicReplication::Fixed(i32::from(config.replication)),
    );
    for r in admin.create_topics([&new], &admin_options(config)).await? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(format!("cannot create topic {topic}: {code}").into()),
        }
    }
    Ok(())
}

/// A consumer thread waiting for its phase to start.
struct RawConsumer {
    go: std::sync::mpsc::Sender<()>,
    done: oneshot::Receiver<CliResult<Histogram<u64>>>,
    /// Probe records seen (and acked) before the phase.
    probes: Arc<AtomicUsize>,
}

/// What a consumer thread does in its phase.
struct Job {
    topic: String,
    prefetch: usize,
    commit_interval: Duration,
    tally: Arc<Tally>,
    stamp_base: Option<Instant>,
    probes: Arc<AtomicUsize>,
    /// `--raw-owned`: where the records go instead of being acked in place.
    owned: Option<Owned>,
}

/// `--raw-owned`: the polling thread's side of an application task that
/// processes owned records.
struct Owned {
    /// Bursts of detached records to the task, at most a prefetch of
    /// records in all: a full channel stops the polling thread, as a full
    /// read-ahead stops mq-kafka's.
    records: tokio::sync::mpsc::Sender<Vec<OwnedMessage>>,
    /// The next offset to commit per partition, as the task acked them.
    acked: Arc<parking_lot::Mutex<HashMap<i32, i64>>>,
    /// The task's latency histogram, when it ends.
    task: tokio::task::JoinHandle<CliResult<Histogram<u64>>>,
    runtime: tokio::runtime::Handle,
    /// What the polling thread waits on while librdkafka's queue is empty:
    /// rung by librdkafka when something arrives and by the task when the
    /// phase is done, as mq-kafka's poll thread waits (a blocking poll
    /// would notice the end of the phase only when it times out).
    doorbell: std::sync::mpsc::Receiver<()>,
}

/// A doorbell: a ring is kept until the next wait, rings in between count
/// once (`try_send` into a channel of one).
type Bell = std::sync::mpsc::SyncSender<()>;

/// `--raw-owned`: records the polling thread detaches before it sends them
/// on together (what librdkafka has queued, up to this many), so the
/// channel costs one hand-over per burst, not per record (mq-kafka's poll
/// thread hands over bursts of the same size).
const OWNED_BURST: usize = 256;

impl Owned {
    /// Starts the task; `consumer` rings the polling thread's doorbell.
    fn start(
        consumer: &mut BaseConsumer,
        prefetch: usize,
        tally: &Arc<Tally>,
        stamp_base: Option<Instant>,
    ) -> Self {
        let bursts = prefetch.div_ceil(OWNED_BURST).max(1);
        let (records, received) = tokio::sync::mpsc::channel(bursts);
        let acked = Arc::new(parking_lot::Mutex::new(HashMap::new()));
        let (bell, doorbell) = std::sync::mpsc::sync_channel(1);
        let ring = bell.clone();
        consumer.set_nonempty_callback(move || {
            let _ = ring.try_send(());
        });
        let task = tokio::spawn(process_owned(
            received,
            acked.clone(),
            tally.clone(),
            stamp_base,
            bell,
        ));
        Owned {
            records,
            acked,
            task,
            runtime: tokio::runtime::Handle::current(),
            doorbell,
        }
    }
}

/// `--raw-owned`: the application task. Acks every record of each burst
/// the polling thread sent (its partition's next offset, under one lock
/// per burst); rings the polling thread's doorbell when the phase is done.
async fn process_owned(
    mut records: tokio::sync::mpsc::Receiver<Vec<OwnedMessage>>,
    acked: Arc<parking_lot::Mutex<HashMap<i32, i64>>>,
    tally: Arc<Tally>,
    stamp_base: Option<Instant>,
    bell: Bell,
) -> CliResult<Histogram<u64>> {
    let mut latency = new_histogram()?;
    while let Some(burst) = records.recv().await {
        let now = stamp_base.map(|base| base.elapsed().as_nanos());
        {
            let mut acked = acked.lock();
            for m in &burst {
                if let (Some(now), Some(sent)) = (now, stamp_of(m)) {
                    record_latency(&mut latency, now, &sent);
                }
                acked.insert(m.partition(), m.offset() + 1);
            }
        }
        tally.add(burst.len() as u64);
        if tally.is_done() {
            let _ = bell.try_send(());
        }
    }
    Ok(latency)
}

/// A record taken before the phase started: (partition, offset, stamp).
type Early = (i32, i64, Option<Vec<u8>>);

fn stamp_of<M: Message>(m: &M) -> Option<Vec<u8>> {
    let headers = m.headers()?;
    headers
        .iter()
        .find(|h| h.key == SENT_AT)
        .and_then(|h| h.value.map(<[u8]>::to_vec))
}

/// Offsets and latency of what one consumer thread acked.
struct Acked {
    topic: String,
    tally: Arc<Tally>,
    stamp_base: Option<Instant>,
    latency: Histogram<u64>,
    /// The next offset to commit, per partition.
    next: HashMap<i32, i64>,
    committed: HashMap<i32, i64>,
}

impl Acked {
    fn ack(&mut self, partition: i32, offset: i64, stamp: Option<&[u8]>) {
        if let (Some(base), Some(sent)) = (self.stamp_base, stamp) {
            record_latency(&mut self.latency, base.elapsed().as_nanos(), sent);
        }
        self.next.insert(partition, offset + 1);
        self.tally.add(1);
    }

    fn commit<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        mode: CommitMode,
    ) -> CliResult {
        let mut tpl = TopicPartitionList::new();
        for (&p, &o) in &self.next {
            if self.committed.get(&p) != Some(&o) {
                tpl.add_partition_offset(&self.topic, p, Offset::Offset(o))?;
                self.committed.insert(p, o);
            }
        }
        if tpl.count() > 0 {
            consumer.commit(&tpl, mode)?;
        }
        Ok(())
    }
}

fn consumer_thread(
    consumer: BaseConsumer,
    go: std::sync::mpsc::Receiver<()>,
    job: Job,
) -> CliResult<Histogram<u64>> {
    let mut acked = Acked {
        topic: job.topic,
        tally: job.tally,
        stamp_base: job.stamp_base,
        latency: new_histogram()?,
        next: HashMap::new(),
        committed: HashMap::new(),
    };
    // Before the phase: join the group and take up to the prefetch.
    let mut early: Vec<Early> = Vec::new();
    loop {
        match go.try_recv() {
            Ok(()) => break,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => return Ok(acked.latency),
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
        }
        if early.len() >= read_ahead(job.prefetch) {
            // The read-ahead is full: stop polling until the phase starts,
            // as mq-kafka does (it pauses its partitions only once the
            // application stays behind for half the session timeout, far
            // longer than a publish phase). librdkafka's bounded fetch queue
            // holds what it fetches meanwhile, on both sides.
            if go.recv().is_err() {
                return Ok(acked.latency);
            }
            break;
        }
        if let Some(m) = consumer.poll(POLL) {
            let m = m?;
            let probe = m
                .headers()
                .is_some_and(|h| h.iter().any(|h| h.key == PROBE));
            if probe {
                acked.next.insert(m.partition(), m.offset() + 1);
                job.probes.fetch_add(1, Ordering::AcqRel);
            } else {
                early.push((m.partition(), m.offset(), stamp_of(&m)));
            }
        }
    }
    for (p, o, stamp) in early.drain(..) {
        acked.ack(p, o, stamp.as_deref());
    }
    if let Some(owned) = job.owned {
        return owned_phase(consumer, acked, owned, job.commit_interval);
    }
    let mut last_commit = Instant::now();
    while !acked.tally.is_done() {
        if let Some(m) = consumer.poll(POLL) {
            let m = m?;
            let stamp = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == SENT_AT))
                .and_then(|h| h.value);
            acked.ack(m.partition(), m.offset(), stamp);
        }
        if last_commit.elapsed() >= job.commit_interval {
            last_commit = Instant::now();
            acked.commit(&consumer, CommitMode::Async)?;
        }
    }
    acked.commit(&consumer, CommitMode::Sync)?;
    consumer.unsubscribe();
    drop(consumer);
    Ok(acked.latency)
}

/// `--raw-owned`, in the phase: polls, detaches each record and sends it
/// to the application task; commits what the task acked. With nothing
/// queued it waits on the doorbell (see [`Owned::doorbell`]).
fn owned_phase(
    consumer: BaseConsumer,
    mut acked: Acked,
    owned: Owned,
    commit_interval: Duration,
) -> CliResult<Histogram<u64>> {
    let Owned {
        records,
        acked: from_task,
        task,
        runtime,
        doorbell,
    } = owned;
    let take_acks = |acked: &mut Acked| {
        for (&p, &o) in from_task.lock().iter() {
            acked.next.insert(p, o);
        }
    };
    let mut last_commit = Instant::now();
    while !acked.tally.is_done() {
        let mut burst = Vec::with_capacity(OWNED_BURST);
        while burst.len() < OWNED_BURST {
            match consumer.poll(Duration::ZERO) {
                Some(m) => burst.push(m?.detach()),
                None => break,
            }
        }
        if burst.is_empty() {
            let _ = doorbell.recv_timeout(POLL);
        }
        // Waits while the task has a prefetch of records to process.
        if !burst.is_empty() && records.blocking_send(burst).is_err() {
            break;
        }
        if last_commit.elapsed() >= commit_interval {
            last_commit = Instant::now();
            take_acks(&mut acked);
            acked.commit(&consumer, CommitMode::Async)?;
        }
    }
    drop(records);
    let latency = runtime
        .block_on(task)
        .map_err(|e| format!("the application task failed: {e}"))??;
    take_acks(&mut acked);
    acked.commit(&consumer, CommitMode::Sync)?;
    consumer.unsubscribe();
    drop(consumer);
    let mut all = acked.latency;
    all.add(&latency)
        .map_err(|e| format!("latency histogram: {e}"))?;
    Ok(all)
}

/// Records a consumer takes before its phase: what mq-kafka's read-ahead
/// holds for a consumer that has not called `receive` yet (twice the
/// prefetch, at least 500).
fn read_ahead(prefetch: usize) -> usize {
    prefetch.saturating_mul(2).max(500)
}

fn open_consumers(
    config: &KafkaConfig,
    topic: &str,
    args: &Args,
    tally: &Arc<Tally>,
    stamp_base: Option<Instant>,
) -> CliResult<Vec<RawConsumer>> {
    let group = config
        .group
        .clone()
        .unwrap_or_else(|| mq_kafka::default_group(topic));
    let mut out = Vec::with_capacity(args.consumers);
    for i in 0..args.consumers {
        let mut consumer: BaseConsumer = config.consumer_config(&group).create()?;
        consumer.subscribe(&[topic])?;
        let (go_tx, go_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let probes = Arc::new(AtomicUsize::new(0));
        let owned = args
            .raw_owned
            .then(|| Owned::start(&mut consumer, args.prefetch, tally, stamp_base));
        let job = Job {
            probes: probes.clone(),
            topic: topic.to_owned(),
            prefetch: args.prefetch,
            commit_interval: config.commit_interval,
            tally: tally.clone(),
            stamp_base,
            owned,
        };
        std::thread::Builder::new()
            .name(format!("bench-raw-kafka-{i}"))
            .spawn(move || {
                let _ = done_tx.send(consumer_thread(consumer, go_rx, job));
            })?;
        out.push(RawConsumer {
            go: go_tx,
            done: done_rx,
            probes,
        });
    }
    Ok(out)
}

/// The header of the probe records that show a consumer group is ready.
const PROBE: &str = "bench-probe";

/// How long to wait for one round of probes.
const PROBE_ROUND: Duration = Duration::from_secs(2);

/// A plain (not idempotent) producer for the probe records, apart from
/// the measured producers.
fn probe_producer(config: &KafkaConfig) -> CliResult<FutureProducer> {
    let mut c = config.producer_config();
    c.set("enable.idempotence", "false");
    c.set("message.timeout.ms", "10000");
    Ok(c.create()?)
}

/// Sends one probe record to every partition of `topic`.
async fn send_probes(producer: &FutureProducer, topic: &str, partitions: i32) -> CliResult {
    let mut reports = Vec::new();
    for p in 0..partitions {
        let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(topic)
            .partition(p)
            .payload(&b"probe"[..])
            .headers(OwnedHeaders::new().insert(Header {
                key: PROBE,
                value: Some(b"1"),
            }));
        reports.push(producer.send_result(record).map_err(|(e, _)| e)?);
    }
    for r in reports {
        delivered(r.await)?;
    }
    Ok(())
}

/// Whether a round of probes shows a ready group: every partition's probe
/// arrived, and every consumer got one when there are no more consumers
/// than partitions (so no member is still joining).
fn round_complete(per_consumer: &[usize], partitions: i32) -> bool {
    let total: usize = per_consumer.iter().sum();
    let each = per_consumer.len() > usize::try_from(partitions).unwrap_or(0)
        || per_consumer.iter().all(|&n| n > 0);
    total >= usize::try_from(partitions).unwrap_or(0) && each
}

/// Waits until the SDK's `consumers` of `topic` form a ready group: sends
/// probe records to every partition, round after round, until one round
/// reaches every consumer ([`round_complete`]); the consumers ack the
/// probes. A consumer-group join takes seconds on some brokers, and would
/// otherwise be measured by whichever phase it overlaps. The baseline's
/// consumers go through the same rounds ([`raw_ready`]).
pub(crate) async fn sdk_ready(
    url: &str,
    topic: &str,
    consumers: &mut [mq::DynConsumer],
) -> CliResult {
    let (config, _mock) = open(url).await?;
    let producer = probe_producer(&config)?;
    let deadline = Instant::now() + JOIN_WAIT;
    while Instant::now() < deadline {
        send_probes(&producer, topic, config.partitions).await?;
        let mut got = vec![0usize; consumers.len()];
        let round_end = Instant::now() + PROBE_ROUND;
        while Instant::now() < round_end {
            for (i, c) in consumers.iter_mut().enumerate() {
                for d in c.receive_batch(100, Duration::from_millis(10)).await? {
                    if d.headers().get(PROBE).is_some() {
                        got[i] += 1;
                    }
                    d.ack().await?;
                }
            }
            if round_complete(&got, config.partitions) {
                return Ok(());
            }
        }
    }
    eprintln!(
        "warning: the consumers of {topic} did not all get a probe within {JOIN_WAIT:?}; going on"
    );
    Ok(())
}

/// [`sdk_ready`] for the baseline's consumer threads, which ack probes
/// before their phase starts and count them in `probes`.
async fn raw_ready(
    producer: &FutureProducer,
    config: &KafkaConfig,
    topic: &str,
    consumers: &[RawConsumer],
) -> CliResult {
    let deadline = Instant::now() + JOIN_WAIT;
    while Instant::now() < deadline {
        let before: Vec<usize> = consumers
            .iter()
            .map(|c| c.probes.load(Ordering::Acquire))
            .collect();
        send_probes(producer, topic, config.partitions).await?;
        let round_end = Instant::now() + PROBE_ROUND;
        while Instant::now() < round_end {
            let got: Vec<usize> = consumers
                .iter()
                .zip(&before)
                .map(|(c, b)| c.probes.load(Ordering::Acquire) - b)
                .collect();
            if round_complete(&got, config.partitions) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    eprintln!(
        "warning: the consumers of {topic} did not all get a probe within {JOIN_WAIT:?}; going on"
    );
    Ok(())
}

async fn consume(
    consumers: Vec<RawConsumer>,
    tally: Arc<Tally>,
    count: u64,
) -> CliResult<Histogram<u64>> {
    let mut tasks = tokio::task::JoinSet::new();
    for c in consumers {
        let _ = c.go.send(());
        tasks.spawn(async move {
            c.done
                .await
                .map_err(|_| "the consumer thread died".to_owned())?
        });
    }
    join_consumers(tasks, &tally, count).await
}

fn delivered(d: <DeliveryFuture as std::future::Future>::Output) -> CliResult {
    match d {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(e.into()),
        Err(_) => Err("the producer dropped a delivery report".into()),
    }
}

async fn publish(
    producer: &FutureProducer,
    topic: &str,
    args: &Args,
    body: &bytes::Bytes,
    stamp_from: Option<Instant>,
) -> CliResult {
    let mut tasks = tokio::task::JoinSet::new();
    for share in shares(args.count, args.producers) {
        let (producer, body, topic) = (producer.clone(), body.clone(), topic.to_owned());
        let (in_flight, raw_ids) = (args.in_flight, args.raw_ids);
        tasks.spawn(async move {
            let mut window: FuturesUnordered<DeliveryFuture> = FuturesUnordered::new();
            for _ in 0..share {
                // Stamped before waiting for room in the window, as the SDK
                // workload stamps a message before handing it to its pipeline.
                let stamp = stamp_from.map(|base| base.elapsed().as_nanos().to_string());
                while window.len() >= in_flight {
                    if let Some(d) = window.next().await {
                        delivered(d)?;
                    }
                }
                let id = raw_ids.then(mq::message::new_message_id);
                let mut record: FutureRecord<'_, (), [u8]> =
                    FutureRecord::to(&topic).payload(&body[..]);
                let mut headers = None;
                if let Some(id) = &id {
                    headers = Some(OwnedHeaders::new().insert(Header {
                        key: mq::message::headers::MESSAGE_ID,
                        value: Some(id.as_bytes()),
                    }));
                }
                if let Some(stamp) = &stamp {
                    headers = Some(headers.unwrap_or_default().insert(Header {
                        key: SENT_AT,
                        value: Some(stamp.as_bytes()),
                    }));
                }
                if let Some(headers) = headers {
                    record = record.headers(headers);
                }
                loop {
                    match producer.send_result(record) {
                        Ok(future) => {
                            window.push(future);
                            break;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                            // librdkafka's queue is full: wait for a report.
                            record = r;
                            match window.next().await {
                                Some(d) => delivered(d)?,
                                None => tokio::time::sleep(Duration::from_millis(1)).await,
                            }
                        }
                        Err((e, _)) => return Err(e.into()),
                    }
                }
            }
            while let Some(d) = window.next().await {
                delivered(d)?;
            }
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| format!("producer task: {e}"))??;
    }
    Ok(())
}

pub(crate) async fn run(args: &Args) -> CliResult<Results> {
    let (config, mock) = open(&args.url).await?;
    let base = Instant::now();
    let body = payload(args.size);
    let admin = admin(&config)?;
    let producer: FutureProducer = config.producer_config().create()?;
    let probes = probe_producer(&config)?;

    let dest = fresh_name("raw-");
    create_topic(&admin, mock.as_ref(), &config, &dest).await?;
    let tally = Tally::new(args.count);
    let consumers = open_consumers(&config, &dest, args, &tally, None)?;
    raw_ready(&probes, &config, &dest, &consumers).await?;
    let started = PhaseClock::start();
    publish(&producer, &dest, args, &body, None).await?;
    let publish_phase = started.phase(args.count, args.size);
    let started = PhaseClock::start();
    consume(consumers, tally, args.count).await?;
    let consume_phase = started.phase(args.count, args.size);

    let e2e_dest = fresh_name("raw-e2e-");
    create_topic(&admin, mock.as_ref(), &config, &e2e_dest).await?;
    let tally = Tally::new(args.count);
    let consumers = open_consumers(&config, &e2e_dest, args, &tally, Some(base))?;
    raw_ready(&probes, &config, &e2e_dest, &consumers).await?;
    let started = PhaseClock::start();
    let receiving = consume(consumers, tally, args.count);
    let sending = publish(&producer, &e2e_dest, args, &body, Some(base));
    let (r, s) = tokio::join!(receiving, sending);
    let latency_us = r?;
    s?;
    let end_to_end = started.phase(args.count, args.size);
    let peak_rss_bytes = peak_rss();
    drop(producer);
    if mock.is_none() {
        let names = [dest.as_str(), e2e_dest.as_str()];
        admin.delete_topics(&names, &admin_options(&config)).await?;
    }
    Ok(Results {
        label: format!(
            "raw (rdkafka: acks={} idempotence={} linger={:?}, {} partition(s), BaseConsumer thread per consumer{})",
            config.acks,
            config.idempotence,
            config.linger,
            config.partitions,
            if args.raw_owned {
                ", records detached and acked by a task"
            } else {
                ""
            }
        ),
        publish: publish_phase,
        consume: consume_phase,
        end_to_end,
        latency_us,
        peak_rss_bytes,
        consume_peak_rss_bytes: None,
    })
}

/// Deletes the topics of `destinations` and the retry topics the SDK's
/// consumers made for them.
pub(crate) async fn cleanup(url: &str, destinations: &[String]) -> CliResult {
    if mq_kafka::is_mock_url(url) {
        // The SDK's in-process cluster went with its client, topics and all.
        return Ok(());
    }
    let config = KafkaConfig::from_url(url)?;
    let admin = admin(&config)?;
    let mut names = Vec::new();
    for dest in destinations {
        let group = config
            .group
            .clone()
            .unwrap_or_else(|| mq_kafka::default_group(dest));
        names.push(dest.clone());
        names.push(mq_kafka::retry_topic(dest, &group));
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    for r in admin.delete_topics(&names, &admin_options(&config)).await? {
        if let Err((topic, code)) = r {
            if code != RDKafkaErrorCode::UnknownTopicOrPartition {
                return Err(format!("cannot delete topic {topic}: {code}").into());
            }
        }
    }
    Ok(())
}

/// Bytes a bench record takes in a record batch beyond its payload, with
/// room to spare: the record's own fields, the `mq-message-id` header and
/// the end-to-end phase's time stamp header (about 90), and its share of
/// the batch's header.
const RECORD_BYTES: u64 = 160;

/// `kafka+mock://` only: the most records of `--size` bytes one topic
/// keeps, nine tenths of the mock cluster's retention
/// ([`mq_kafka::MOCK_PARTITION_BYTES`] per partition). Beyond that it
/// deletes the oldest records before the consume phase reads them, and the
/// run would stall until it gives up.
async fn most_messages(args: &Args) -> CliResult<Option<u64>> {
    if !mq_kafka::is_mock_url(&args.url) {
        return Ok(None);
    }
    let (config, _mock) = open(&args.url).await?;
    let record = u64::try_from(args.size)
        .unwrap_or(u64::MAX)
        .saturating_add(RECORD_BYTES);
    let per_partition = mq_kafka::MOCK_PARTITION_BYTES / 10 * 9 / record;
    let partitions = u64::try_from(config.partitions).unwrap_or(1);
    Ok(Some(per_partition.saturating_mul(partitions)))
}

/// This module as an entry of the bench's baseline list.
pub(crate) const BASELINE: super::Baseline = super::Baseline {
    backend: mq_kafka::DRIVER.name,
    run: |args| Box::pin(run(args)),
    ready: Some(|url, topic, consumers| Box::pin(sdk_ready(url, topic, consumers))),
    most_messages: Some(|args| Box::pin(most_messages(args))),
    cleanup: |url, destinations| Box::pin(cleanup(url, destinations)),
};
