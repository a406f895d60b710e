//! Fault behaviour against librdkafka's mock cluster (no external broker):
//! a broker going down and coming back, injected request errors, and a
//! partition leader change. In every case each send that `mq` reported as
//! acknowledged is consumed afterwards: nothing acknowledged is lost.
//!
//! The mock cluster listens on 127.0.0.1 only.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{mock_config, receive_within, wait_until, Cluster};

use mq_core::backend::Backend;
use mq_core::{Consumer, ConsumerOptions, ErrorKind, Message, Producer, SendNow};
use mq_kafka::KafkaBackend;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

fn cluster(brokers: i32, topic: &str, partitions: i32) -> Cluster {
    let c = MockCluster::new(brokers).expect("mock cluster");
    c.create_topic(topic, partitions, brokers)
        .expect("create topic");
    c
}

fn backend(c: &Cluster, extra: &str) -> KafkaBackend {
    KafkaBackend::new(mock_config(c, "60s", extra)).expect("backend")
}

/// Sends `n` messages, 25 at a time every 20 ms, so that a fault injected
/// meanwhile hits sends in flight (every other one through `send_now`); returns the ids the producer reported
/// acknowledged and the number of failed sends.
fn send_all(
    backend: &KafkaBackend,
    topic: &str,
    n: usize,
) -> tokio::task::JoinHandle<(Vec<String>, usize)> {
    let producer = backend.kafka_producer();
    let topic = topic.to_owned();
    tokio::spawn(async move {
        let mut waves = Vec::new();
        for wave in 0..n.div_ceil(25) {
            let sends = (wave * 25..((wave + 1) * 25).min(n)).map(|i| {
                let producer = producer.clone();
                let topic = topic.clone();
                async move {
                    let m = Message::new(format!("m-{i}")).with_key(format!("k{}", i % 7));
                    let id = m.id().to_owned();
                    // Both ways a record goes out: the fast path a client's
                    // producer takes (`send_now`, the delivery report
                    // awaited) and the waiting one (`send`).
                    let sent = if i % 2 == 0 {
                        producer.send_now(&topic, m).finish(&producer, &topic).await
                    } else {
                        producer.send(&topic, m).await
                    };
                    sent.map(|()| id)
                }
            });
            waves.push(tokio::spawn(futures::future::join_all(sends)));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut acked = Vec::new();
        let mut failed = 0;
        for w in waves {
            for r in w.await.expect("wave") {
                match r {
                    Ok(id) => acked.push(id),
                    Err(_) => failed += 1,
                }
            }
        }
        (acked, failed)
    })
}

/// Consumes until every id in `expected` arrived (acking all), within `wait`.
async fn consume_all(backend: &KafkaBackend, topic: &str, expected: &[String], wait: Duration) {
    let mut consumer = backend
        .kafka_consumer(ConsumerOptions::new(topic).prefetch(500))
        .await
        .expect("consumer");
    let mut missing: HashSet<&str> = expected.iter().map(String::as_str).collect();
    wait_until(wait, Duration::ZERO, async || {
        if missing.is_empty() {
            return Ok(());
        }
        for d in consumer
            .receive_batch(500, Duration::from_millis(500))
            .await
            .expect("receive")
        {
            missing.remove(d.id());
            d.ack().await.expect("ack");
        }
        Err(format!(
            "{} acknowledged messages never arrived, e.g. {:?}",
            missing.len(),
            missing.iter().take(3).collect::<Vec<_>>()
        ))
    })
    .await;
    consumer.close().await.expect("close");
}

/// `send_now` hands a record to librdkafka only when it can at once: a
/// full librdkafka queue gives the message back, `send` then waits for
/// room, and every record arrives. A closed producer refuses at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_send_queue_hands_the_message_back_and_loses_nothing() {
    let topic = "queue-full";
    let c = cluster(1, topic, 1);
    // One record in librdkafka's queue at a time, held there for a second.
    let b = backend(
        &c,
        "&rdkafka.queue.buffering.max.messages=1&rdkafka.linger.ms=1000",
    );
    let producer = b.kafka_producer();
    let first = Message::new("first");
    let mut ids = vec![first.id().to_owned()];
    // The topic is unknown before the first send: that one waits.
    assert!(matches!(
        producer.send_now(topic, first.clone()),
        SendNow::Later(_)
    ));
    producer.send(topic, first).await.expect("first send");

    let (second, third) = (Message::new("second"), Message::new("third"));
    ids.extend([second.id().to_owned(), third.id().to_owned()]);
    // librdkafka counts the first record until its report is served, a
    // moment after the send returned: room comes back soon after.
    let mut second = Some(second);
    let mut tries = 0;
    let sending = loop {
        match producer.send_now(topic, second.take().expect("message")) {
            SendNow::Started(sending) => break sending,
            SendNow::Later(m) if tries < 100 => {
                second = Some(m);
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => panic!("a known topic with room is sent at once"),
        }
    };
    let SendNow::Later(third) = producer.send_now(topic, third) else {
        panic!("a full queue hands the message back");
    };
    let started = Instant::now();
    let (a, b3) = tokio::join!(sending, producer.send(topic, third));
    a.expect("second send");
    b3.expect("third send waited for room");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the third waited"
    );

    producer.close().await.expect("close");
    match producer.send_now(topic, Message::new("late")) {
        SendNow::Done(Err(e)) => assert_eq!(e.kind(), ErrorKind::Closed, "{e}"),
        _ => panic!("a closed producer refuses at once"),
    }
    consume_all(&b, topic, &ids, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_then_up_loses_nothing_acknowledged() {
    let topic = "down-up";
    let c = cluster(1, topic, 2);
    let b = backend(&c, "");
    // Warm up: the producer knows the cluster before the outage.
    b.kafka_producer()
        .send(topic, Message::new("warm-up"))
        .await
        .expect("warm-up send");
    let sending = send_all(&b, topic, 2_000);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(b.health().connected, "{:?}", b.health());
    c.broker_down(1).expect("down");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = b.health();
    c.broker_up(1).expect("up");
    let (acked, failed) = sending.await.expect("send task");
    eprintln!("down/up: {} acknowledged, {failed} failed", acked.len());
    assert_eq!(failed, 0, "sends are retried across a short outage");
    // Health: librdkafka's AllBrokersDown, then deliveries again.
    let after = b.health();
    eprintln!("health during the outage: {during:?}; after: {after:?}");
    assert!(!during.connected, "{during:?}");
    assert!(during.last_error.is_some(), "{during:?}");
    assert!(after.connected && after.reconnects >= 1, "{after:?}");
    consume_all(&b, topic, &acked, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_survives_a_broker_outage_and_redelivers_unsettled() {
    let topic = "consumer-outage";
    let c = cluster(1, topic, 1);
    let b = backend(&c, "");
    let (first, failed) = send_all(&b, topic, 100).await.expect("send");
    assert_eq!(failed, 0);
    let mut consumer = b
        .kafka_consumer(ConsumerOptions::new(topic).prefetch(20))
        .await
        .expect("consumer");
    // Take some, leave the first one unsettled, ack the rest.
    let batch = consumer
        .receive_batch(10, Duration::from_secs(30))
        .await
        .expect("receive");
    assert!(!batch.is_empty());
    let mut batch = batch.into_iter();
    let held = batch.next().expect("one");
    for d in batch {
        d.ack().await.expect("ack");
    }
    c.broker_down(1).expect("down");
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.broker_up(1).expect("up");
    let (second, failed) = send_all(&b, topic, 100).await.expect("send after outage");
    assert_eq!(failed, 0);
    // The held delivery goes back at close and arrives again (attempt 2).
    let held_id = held.id().to_owned();
    consumer.close().await.expect("close");
    drop(held);
    let mut all: Vec<String> = second;
    all.push(held_id);
    consume_all(&b, topic, &all, Duration::from_secs(60)).await;
    let _ = first;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_produce_errors_are_retried_without_loss_or_duplicates() {
    let topic = "errors";
    let c = cluster(1, topic, 1);
    let b = backend(&c, "");
    b.kafka_producer()
        .send(topic, Message::new("warm-up"))
        .await
        .expect("warm-up send");
    c.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT,
        ],
    );
    let (acked, failed) = send_all(&b, topic, 300).await.expect("send");
    assert_eq!(failed, 0, "retriable errors are retried");
    let mut expected = acked.clone();
    expected.sort();
    // Everything arrives, and the idempotent producer wrote no duplicates.
    let mut consumer = b
        .kafka_consumer(ConsumerOptions::new(topic).prefetch(500))
        .await
        .expect("consumer");
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < acked.len() + 1 && Instant::now() < deadline {
        for d in consumer
            .receive_batch(500, Duration::from_millis(500))
            .await
            .expect("receive")
        {
            seen.push(d.id().to_owned());
            d.ack().await.expect("ack");
        }
    }
    // Nothing more: no duplicates behind.
    let extra = consumer
        .receive_batch(500, Duration::from_secs(1))
        .await
        .expect("receive");
    assert!(extra.is_empty(), "{} duplicates", extra.len());
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "duplicates delivered");
    for id in &acked {
        assert!(unique.contains(id), "acknowledged {id} lost");
    }
    consumer.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_change_loses_nothing_acknowledged() {
    let topic = "leader";
    let c = cluster(3, topic, 2);
    let b = backend(&c, "");
    c.partition_leader(topic, 0, Some(1)).expect("leader 1");
    c.partition_leader(topic, 1, Some(1)).expect("leader 1");
    b.kafka_producer()
        .send(topic, Message::new("warm-up"))
        .await
        .expect("warm-up send");
    let sending = send_all(&b, topic, 1_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.partition_leader(topic, 0, Some(2)).expect("leader 2");
    c.partition_leader(topic, 1, Some(3)).expect("leader 3");
    let (acked, failed) = sending.await.expect("send task");
    assert_eq!(failed, 0, "sends follow the new leader");
    consume_all(&b, topic, &acked, Duration::from_secs(60)).await;
    b.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_and_dead_letter_through_mock_topics() {
    let topic = "settle";
    let c = cluster(1, topic, 1);
    let b = backend(&c, "");
    b.kafka_producer()
        .send(topic, Message::new("x").with_header("h", "v"))
        .await
        .expect("send");
    let mut consumer = b
        .kafka_consumer(ConsumerOptions::new(topic))
        .await
        .expect("consumer");
    let d = consumer.receive().await.expect("first");
    assert_eq!(d.attempt(), 1);
    d.nack().await.expect("nack");
    let d = consumer.receive().await.expect("retry");
    assert_eq!(d.attempt(), 2);
    assert_eq!(d.source(), topic);
    assert_eq!(d.headers().get("h"), Some("v"));
    d.dead_letter("broken").await.expect("dead letter");
    consumer.close().await.expect("close");
    let mut dlq = b
        .kafka_consumer(ConsumerOptions::new(b.dead_letter_destination(topic)))
        .await
        .expect("dlq consumer");
    let d = dlq.receive().await.expect("dead letter arrives");
    assert_eq!(d.headers().get("mq-dead-letter-reason"), Some("broken"));
    assert_eq!(d.headers().get("mq-original-source"), Some(topic));
    d.ack().await.expect("ack");
    dlq.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_mode_redelivers_in_place() {
    let topic = "ordered";
    let c = cluster(1, topic, 1);
    let b = backend(&c, "&ordered=true");
    let producer = b.kafka_producer();
    for name in ["a", "b", "c"] {
        producer
            .send(topic, Message::new(name).with_key("k"))
            .await
            .expect("send");
    }
    let mut consumer = b
        .kafka_consumer(ConsumerOptions::new(topic))
        .await
        .expect("consumer");
    let first = consumer.receive().await.expect("a");
    assert_eq!((first.text().expect("text"), first.attempt()), ("a", 1));
    first.nack().await.expect("nack");
    let again = consumer.receive().await.expect("a again");
    assert_eq!(
        (again.text().expect("text"), again.attempt()),
        ("a", 2),
        "redelivered in place, before b"
    );
    let nacked_at = Instant::now();
    again
        .nack_after(Duration::from_secs(1))
        .await
        .expect("nack after");
    let third = consumer.receive().await.expect("a a third time");
    assert!(
        nacked_at.elapsed() >= Duration::from_millis(900),
        "waited the delay"
    );
    assert_eq!((third.text().expect("text"), third.attempt()), ("a", 3));
    third.ack().await.expect("ack");
    let mut rest = Vec::new();
    while rest.len() < 2 {
        let d = consumer.receive().await.expect("rest");
        rest.push(d.text().expect("text").to_owned());
        d.ack().await.expect("ack");
    }
    assert_eq!(rest, ["b", "c"], "order kept");
    consumer.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_prefetch_pauses_and_resumes() {
    let topic = "prefetch";
    let c = cluster(1, topic, 2);
    let b = backend(
        &c,
        &std::env::var("MQ_KAFKA_TEST_EXTRA").unwrap_or_default(),
    );
    let (acked, failed) = send_all(&b, topic, 300).await.expect("send");
    assert_eq!(failed, 0);
    let mut consumer = b
        .kafka_consumer(ConsumerOptions::new(topic).prefetch(5))
        .await
        .expect("consumer");
    let mut missing: HashSet<String> = acked.into_iter().collect();
    wait_until(Duration::from_secs(60), Duration::ZERO, async || {
        if missing.is_empty() {
            return Ok(());
        }
        let batch = consumer
            .receive_batch(5, Duration::from_millis(500))
            .await
            .expect("receive");
        // Hold the batch a little so the prefetch fills and the partitions pause.
        tokio::time::sleep(Duration::from_millis(30)).await;
        for d in batch {
            missing.remove(d.id());
            d.ack().await.expect("ack");
        }
        Err(format!("{} never arrived", missing.len()))
    })
    .await;
    consumer.close().await.expect("close");
}

/// One member of the group in `rebalance_with_held_deliveries_*`: receives
/// until `stop`, holds every delivery whose offset is a multiple of 10 for
/// `HOLD` (so deliveries are held across rebalances, and the copy fetched
/// again after a rebalance is held too), acks everything else at once.
/// Counts every id it receives in `seen`.
async fn rebalancing_member(
    backend: KafkaBackend,
    topic: &'static str,
    group: &'static str,
    stop: tokio::sync::watch::Receiver<bool>,
    seen: std::sync::Arc<tally::Seen>,
) {
    const HOLD: Duration = Duration::from_secs(3);
    let mut consumer = backend
        .kafka_consumer(ConsumerOptions::new(topic).group(group).prefetch(1_000))
        .await
        .expect("consumer");
    let mut held: std::collections::VecDeque<(Instant, mq_core::Delivery)> = Default::default();
    while !*stop.borrow() {
        let batch = consumer
            .receive_batch(200, Duration::from_millis(100))
            .await
            .expect("receive");
        for d in batch {
            seen.add(d.id());
            let offset = d
                .metadata::<mq_kafka::KafkaMetadata>()
                .expect("metadata")
                .offset;
            if offset % 10 == 0 {
                held.push_back((Instant::now(), d));
            } else {
                d.ack().await.expect("ack");
            }
        }
        while held.front().is_some_and(|(t, _)| t.elapsed() >= HOLD) {
            if let Some((_, d)) = held.pop_front() {
                d.ack().await.expect("ack a held delivery");
            }
        }
    }
    for (_, d) in held {
        d.ack().await.expect("ack");
    }
    consumer.close().await.expect("close");
}

/// Ids received and how often (a tiny mutex-protected map).
mod tally {
    use std::collections::HashMap;
    use std::sync::Mutex;

    #[derive(Default)]
    pub(crate) struct Seen(Mutex<HashMap<String, u32>>);

    impl Seen {
        pub(crate) fn add(&self, id: &str) {
            let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
            *m.entry(id.to_owned()).or_default() += 1;
        }

        /// (distinct ids, deliveries beyond the first of each id).
        pub(crate) fn counts(&self, ids: &[String]) -> (usize, usize, usize) {
            let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let missing = ids.iter().filter(|id| !m.contains_key(*id)).count();
            let duplicates = m.values().map(|n| (*n as usize).saturating_sub(1)).sum();
            (m.len(), missing, duplicates)
        }
    }
}

/// Defect 1 of issue 14 (rebalance): two consumers of one group join and
/// leave repeatedly while 5,000 records flow, and deliveries are held
/// across the rebalances (a partition revoked and handed back to the same
/// member while its old deliveries are still out). At the end the group's
/// commits have reached the end of every partition (source and retry
/// topic), every record arrived at least once, and the duplicates are
/// counted and bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_with_held_deliveries_keeps_committing() {
    use std::sync::Arc;
    const TOTAL: usize = 5_000;
    let topic = "rebalance";
    let group = "rebalance-group";
    let c = cluster(1, topic, 4);
    // A short session: the mock cluster's coordinator waits the session
    // timeout minus 1 s for members to rejoin before it rebalances.
    let mut config = mock_config(&c, "60s", "");
    config.session_timeout = Duration::from_secs(2);
    config.heartbeat = Duration::from_millis(200);
    let b = KafkaBackend::new(config).expect("backend");
    let seen = Arc::new(tally::Seen::default());
    let (stop_a, stop_rx_a) = tokio::sync::watch::channel(false);
    // Member A stays, leaving and rejoining once mid-way.
    let member_a = {
        let (b, seen) = (b.clone(), seen.clone());
        tokio::spawn(async move {
            let (stop1, rx1) = tokio::sync::watch::channel(false);
            let first = tokio::spawn(rebalancing_member(
                b.clone(),
                topic,
                group,
                rx1,
                seen.clone(),
            ));
            tokio::time::sleep(Duration::from_secs(6)).await;
            let _ = stop1.send(true);
            first.await.expect("member a, first life");
            rebalancing_member(b, topic, group, stop_rx_a, seen).await;
        })
    };
    // The records flow for about 10 s.
    let sending = {
        let producer = b.kafka_producer();
        tokio::spawn(async move {
            let mut ids = Vec::with_capacity(TOTAL);
            for wave in 0..TOTAL / 25 {
                let sends = (wave * 25..(wave + 1) * 25).map(|i| {
                    let producer = producer.clone();
                    async move {
                        let m = Message::new(format!("r-{i}")).with_key(format!("k{i}"));
                        let id = m.id().to_owned();
                        producer.send(topic, m).await.map(|()| id)
                    }
                });
                for r in futures::future::join_all(sends).await {
                    ids.push(r.expect("send"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ids
        })
    };
    // Member B joins and leaves, again and again: while the records flow,
    // and once more after the last was sent, while A still holds some.
    let b_cycle = |pause: Duration, stay: Duration| {
        let (b, seen) = (b.clone(), seen.clone());
        async move {
            tokio::time::sleep(pause).await;
            let (stop_b, rx_b) = tokio::sync::watch::channel(false);
            let member_b = tokio::spawn(rebalancing_member(b, topic, group, rx_b, seen));
            tokio::time::sleep(stay).await;
            let _ = stop_b.send(true);
            member_b.await.expect("member b");
        }
    };
    for _ in 0..3 {
        b_cycle(Duration::from_millis(1_500), Duration::from_millis(2_500)).await;
    }
    let ids = sending.await.expect("sender");
    b_cycle(Duration::from_millis(200), Duration::from_secs(2)).await;
    // A alone now: everything arrives and the commits reach the end.
    let mut last = None;
    wait_until(
        Duration::from_secs(90),
        Duration::from_millis(500),
        async || {
            let (_, missing, _) = seen.counts(&ids);
            if missing == 0 {
                let stats = b.stats(topic, Some(group)).await.expect("stats");
                let done = stats.depth == Some(0) && stats.delayed.unwrap_or(0) == 0;
                last = Some(stats);
                if done {
                    return Ok(());
                }
            }
            Err(format!(
                "{missing} of {TOTAL} never arrived or commits stopped: {last:?}"
            ))
        },
    )
    .await;
    let _ = stop_a.send(true);
    member_a.await.expect("member a");
    let (distinct, missing, duplicates) = seen.counts(&ids);
    eprintln!(
        "rebalance: {TOTAL} sent, {distinct} distinct received, {missing} missing, \
         {duplicates} duplicates; final stats {last:?}"
    );
    assert_eq!(missing, 0);
    // Each rebalance redelivers what lies past the commit point (about
    // HOLD's worth of records here); a runaway redelivery would exceed this.
    assert!(
        duplicates < 2 * TOTAL,
        "{duplicates} duplicates: a redelivery loop"
    );
}

/// librdkafka keeps an application's pause of a partition across a revoke
/// and a later assignment of the same partition to the same member. A
/// consumer whose read-ahead stayed full long enough to pause its
/// partitions, that loses them in a rebalance and gets them back, must
/// fetch from them again once the application catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_paused_for_backpressure_flow_again_after_a_rebalance() {
    const TOTAL: usize = 2_000;
    let topic = "paused-rebalance";
    let group = "paused-rebalance-group";
    let c = cluster(1, topic, 2);
    // A 4 s session: the read-ahead pauses after 2 s full, and the mock
    // coordinator rebalances 3 s after a member joins or leaves. (With 2 s
    // the first join never completes: the mock's initial rebalance delay is
    // 3 s, longer than the session.)
    let mut config = mock_config(&c, "60s", "");
    config.session_timeout = Duration::from_secs(4);
    config.heartbeat = Duration::from_millis(300);
    let b = KafkaBackend::new(config).expect("backend");
    let (acked, failed) = send_all(&b, topic, TOTAL).await.expect("send");
    assert_eq!(failed, 0);
    let mut seen: HashSet<String> = HashSet::new();
    let mut a = b
        .kafka_consumer(ConsumerOptions::new(topic).group(group).prefetch(5))
        .await
        .expect("consumer a");
    // A holds its prefetch: its read-ahead fills, stays full and pauses.
    let mut held = Vec::new();
    while held.len() < 5 {
        let d = receive_within(&mut a, Duration::from_secs(20), "a's prefetch").await;
        seen.insert(d.id().to_owned());
        held.push(d);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // B joins (both partitions are revoked from A, one comes back), takes
    // what it is given for a while, and leaves (A gets both back).
    let mut b_member = b
        .kafka_consumer(ConsumerOptions::new(topic).group(group).prefetch(500))
        .await
        .expect("consumer b");
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        for d in b_member
            .receive_batch(100, Duration::from_millis(200))
            .await
            .expect("b receives")
        {
            seen.insert(d.id().to_owned());
            d.ack().await.expect("b acks");
        }
    }
    b_member.close().await.expect("b closes");
    // A's held deliveries belong to the next owner now (settling them may
    // fail); A catches up and must get every record B did not take.
    for d in held {
        let _ = d.ack().await;
    }
    wait_until(Duration::from_secs(30), Duration::ZERO, async || {
        for d in a
            .receive_batch(200, Duration::from_millis(200))
            .await
            .expect("a receives")
        {
            seen.insert(d.id().to_owned());
            d.ack().await.expect("a acks");
        }
        let missing = acked.iter().filter(|id| !seen.contains(*id)).count();
        if missing == 0 {
            Ok(())
        } else {
            Err(format!(
                "{missing} of {TOTAL} never arrived after the rebalance"
            ))
        }
    })
    .await;
    a.close().await.expect("a closes");
}
