//! Regression tests of issue 14 against a real RabbitMQ (`MQ_TEST_RABBIT_URL`):
//! settles whose republish fails (defect 3), quorum delivery limits
//! (defect 5), a timestamp past `i64::MAX` (defect 6a) and queues deleted
//! behind `mq`'s back (defect 10). Each test uses its own queues and deletes
//! them at the end; without the URL each says why it skips.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{channel, cleanup, close_raw, next, raw, unique, url, with};
use mq_core::message::headers;
use mq_core::{ErrorKind, Message};
use mq_rabbit::lapin::options::{
    BasicGetOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use mq_rabbit::lapin::types::{AMQPValue, FieldTable};
use mq_rabbit::lapin::BasicProperties;

const WAIT: Duration = Duration::from_secs(5);

/// Declares `queue` the way another application would: durable, with an
/// argument `mq` does not use, so `mq`'s own declaration of it is refused
/// (`PRECONDITION_FAILED - inequivalent arg`).
async fn declare_foreign(url: &str, queue: &str) {
    let conn = raw(url).await;
    let ch = channel(&conn).await;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1000));
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await
    .expect("declare the foreign queue");
    close_raw(conn).await;
}

/// Receives until every id of `expected` came (acking each), for at most `wait`.
async fn drain_ids(
    consumer: &mut Box<dyn mq_core::Consumer>,
    expected: &BTreeSet<String>,
    wait: Duration,
) -> BTreeSet<String> {
    let deadline = Instant::now() + wait;
    let mut seen = BTreeSet::new();
    while !expected.is_subset(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(d) = next(consumer, left).await else {
            break;
        };
        seen.insert(d.id().to_owned());
        d.ack().await.expect("ack");
    }
    seen
}

/// Issue 14 defect 3, as reproduced: prefetch 2, the dead-letter queue
/// exists with other arguments, two `dead_letter` calls fail. Before the
/// fix both deliveries stayed unacked on the live channel and the consumer
/// received nothing more; now each goes back to the queue (nack, requeue)
/// and the error is still returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect3_failed_dead_letter_returns_the_delivery() {
    let Some(url) = url("defect3_failed_dead_letter_returns_the_delivery") else {
        return;
    };
    let q = unique("d3-dl");
    let dlq = format!("{q}-dlq");
    declare_foreign(&url, &dlq).await;
    let client = mq_rabbit::connect(&url).await.expect("connect");
    let producer = client.producer().await.expect("producer");
    let expected: BTreeSet<String> = (0..3).map(|i| format!("{q}-{i}")).collect();
    for id in &expected {
        producer
            .send(&q, Message::new("work").with_id(id.clone()))
            .await
            .expect("send");
    }
    let mut consumer = client
        .consumer(q.as_str())
        .prefetch(2)
        .await
        .expect("consumer");
    let first = next(&mut consumer, WAIT).await.expect("first delivery");
    let second = next(&mut consumer, WAIT).await.expect("second delivery");
    for d in [first, second] {
        let err = d
            .dead_letter("poison")
            .await
            .expect_err("the dead-letter queue refuses mq's declaration");
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    }
    let seen = drain_ids(&mut consumer, &expected, WAIT).await;
    assert_eq!(
        seen, expected,
        "after two failed dead-letters the consumer must still receive the third message \
         and the two returned ones"
    );
    consumer.close().await.expect("close");
    client.close().await.expect("close client");
    cleanup(&url, &[&q, &dlq], &[&q, &dlq]).await;
}

/// Defect 3, delayed-retry path: the retry queue cannot be declared, so
/// `nack_after` fails; the delivery must come back, not sit unacked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect3_failed_delayed_retry_returns_the_delivery() {
    let Some(url) = url("defect3_failed_delayed_retry_returns_the_delivery") else {
        return;
    };
    let q = unique("d3-retry");
    // A delay of 200 ms uses the retry queue `<q>.retry.200`.
    let retry = format!("{q}.retry.200");
    declare_foreign(&url, &retry).await;
    let client = mq_rabbit::connect(&url).await.expect("connect");
    let producer = client.producer().await.expect("producer");
    let id = format!("{q}-0");
    producer
        .send(&q, Message::new("work").with_id(id.clone()))
        .await
        .expect("send");
    let mut consumer = client
        .consumer(q.as_str())
        .prefetch(1)
        .await
        .expect("consumer");
    let d = next(&mut consumer, WAIT).await.expect("delivery");
    let err = d
        .nack_after(Duration::from_millis(200))
        .await
        .expect_err("the retry queue refuses mq's declaration");
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    let again = next(&mut consumer, WAIT)
        .await
        .expect("the delivery whose retry failed comes back");
    assert_eq!(again.id(), id);
    again.ack().await.expect("ack");
    consumer.close().await.expect("close");
    client.close().await.expect("close client");
    cleanup(&url, &[&q, &retry], &[&q]).await;
}

/// Defect 3: dead letters go to the consumer's dead-letter destination
/// (`ConsumerOptions::dead_letter`), not a name mq-rabbit computes itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect3_dead_letter_goes_to_the_consumer_destination() {
    let Some(url) = url("defect3_dead_letter_goes_to_the_consumer_destination") else {
        return;
    };
    let q = unique("d3-dest");
    let custom = format!("{q}-parked");
    let client = mq_rabbit::connect(&url).await.expect("connect");
    let producer = client.producer().await.expect("producer");
    let id = format!("{q}-0");
    producer
        .send(&q, Message::new("work").with_id(id.clone()))
        .await
        .expect("send");
    let mut consumer = client
        .consumer(q.as_str())
        .dead_letter(custom.clone())
        .await
        .expect("consumer");
    let d = next(&mut consumer, WAIT).await.expect("delivery");
    d.dead_letter("parked by the test")
        .await
        .expect("dead-letter");
    let mut parked = client
        .consumer(custom.as_str())
        .await
        .expect("dlq consumer");
    let dead = next(&mut parked, WAIT)
        .await
        .expect("the dead letter is in the consumer's destination");
    assert_eq!(dead.id(), id);
    assert_eq!(
        dead.headers().get(headers::DEAD_LETTER_REASON),
        Some("parked by the test")
    );
    dead.ack().await.expect("ack");
    client.close().await.expect("close client");
    let default_dlq = format!("{q}-dlq");
    cleanup(
        &url,
        &[&q, &custom, &default_dlq],
        &[&q, &custom, &default_dlq],
    )
    .await;
}

/// Defect 3/4: a dead-letter copy is cut to fit `max_message_size` (the
/// reason shrinks, `mq-truncated` says by how much), never refused for size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect3_dead_letter_copy_is_cut_to_fit() {
    let Some(url) = url("defect3_dead_letter_copy_is_cut_to_fit") else {
        return;
    };
    let q = unique("d3-fit");
    let dlq = format!("{q}-dlq");
    let limit = 2048;
    let client = mq_rabbit::connect(&with(&url, &format!("max_message_size={limit}")))
        .await
        .expect("connect");
    let producer = client.producer().await.expect("producer");
    let payload = vec![b'p'; 1024];
    producer
        .send(&q, Message::new(payload.clone()).with_id(format!("{q}-0")))
        .await
        .expect("send");
    let mut consumer = client.consumer(q.as_str()).await.expect("consumer");
    let d = next(&mut consumer, WAIT).await.expect("delivery");
    d.dead_letter("r".repeat(4000))
        .await
        .expect("a dead letter is cut to fit, not refused");
    let mut dead_letters = client.consumer(dlq.as_str()).await.expect("dlq consumer");
    let dead = next(&mut dead_letters, WAIT).await.expect("dead letter");
    assert_eq!(dead.payload().as_ref(), payload.as_slice());
    assert!(
        dead.headers().get(headers::TRUNCATED).is_some(),
        "mq-truncated must say the reason was cut: {:?}",
        dead.headers()
    );
    assert!(
        dead.to_message().encoded_len() <= limit,
        "{} > {limit}",
        dead.to_message().encoded_len()
    );
    dead.ack().await.expect("ack");
    client.close().await.expect("close client");
    cleanup(&url, &[&q, &dlq], &[&q, &dlq]).await;
}

/// Issue 14 defect 5: a quorum queue declared by mq dead-letters a message
/// that exceeds its delivery limit into `<queue>-dlq`, with a reason,
/// instead of dropping it (RabbitMQ 4 has a default limit of 20; the test
/// sets an explicit `x-delivery-limit` through `delivery_limit=2`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect5_quorum_delivery_limit_dead_letters() {
    let Some(url) = url("defect5_quorum_delivery_limit_dead_letters") else {
        return;
    };
    let q = unique("d5-quorum");
    let dlq = format!("{q}-dlq");
    let client = mq_rabbit::connect(&with(&url, "queue_type=quorum&delivery_limit=2"))
        .await
        .expect("connect");
    let producer = client.producer().await.expect("producer");
    let id = format!("{q}-0");
    producer
        .send(&q, Message::new("poison").with_id(id.clone()))
        .await
        .expect("send");
    let mut consumer = client.consumer(q.as_str()).await.expect("consumer");
    let mut deliveries = 0;
    while let Some(d) = next(&mut consumer, Duration::from_secs(3)).await {
        deliveries += 1;
        assert!(deliveries <= 3, "delivered past the limit of 2 returns");
        d.nack()
            .await
            .expect("nack (basic.nack requeue on quorum queues)");
    }
    assert_eq!(
        deliveries, 3,
        "first delivery + 2 returns allowed by the limit"
    );
    let mut dead_letters = client.consumer(dlq.as_str()).await.expect("dlq consumer");
    let dead = next(&mut dead_letters, WAIT)
        .await
        .expect("the message past the delivery limit is in <queue>-dlq, not dropped");
    assert_eq!(dead.id(), id);
    let reason = dead
        .headers()
        .get(headers::DEAD_LETTER_REASON)
        .unwrap_or_default()
        .to_owned();
    assert!(reason.contains("delivery limit"), "reason: {reason:?}");
    assert_eq!(
        dead.headers().get(headers::ORIGINAL_SOURCE),
        Some(q.as_str())
    );
    dead.ack().await.expect("ack");
    client.close().await.expect("close client");
    cleanup(&url, &[&q, &dlq], &[&q, &dlq]).await;
}

/// Issue 14 defect 6a: a `timestamp` property above `i64::MAX` seconds
/// (pika's `timestamp=2**64-1`) panicked in the decoder inside `receive()`.
/// Now the message is received with no timestamp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect6a_timestamp_u64_max_does_not_panic() {
    let Some(url) = url("defect6a_timestamp_u64_max_does_not_panic") else {
        return;
    };
    let q = unique("d6a-ts");
    let client = mq_rabbit::connect(&url).await.expect("connect");
    // Declares the queue.
    let mut consumer = client.consumer(q.as_str()).await.expect("consumer");
    let conn = raw(&url).await;
    let ch = channel(&conn).await;
    ch.basic_publish(
        "".into(),
        q.as_str().into(),
        BasicPublishOptions::default(),
        b"from the future",
        BasicProperties::default()
            .with_timestamp(u64::MAX)
            .with_message_id("ts-max".into()),
    )
    .await
    .expect("publish")
    .await
    .expect("publish done");
    let d = next(&mut consumer, WAIT).await.expect("delivery");
    assert_eq!(d.id(), "ts-max");
    assert_eq!(d.timestamp(), None);
    assert_eq!(d.payload().as_ref(), b"from the future");
    d.ack().await.expect("ack");
    close_raw(conn).await;
    client.close().await.expect("close client");
    cleanup(&url, &[&q], &[&q]).await;
}

/// Issue 14 defect 10: the declaration cache was never invalidated, so a
/// queue deleted outside mq made every later send fail (`NotFound`,
/// unroutable) until a reconnect. Now the returned publish forgets the
/// declaration, declares again and the send is retried once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect10_deleted_queue_is_declared_again() {
    let Some(url) = url("defect10_deleted_queue_is_declared_again") else {
        return;
    };
    let q = unique("d10-queue");
    let client = mq_rabbit::connect(&url).await.expect("connect");
    let producer = client.producer().await.expect("producer");
    producer
        .send(&q, Message::new("before").with_id("before"))
        .await
        .expect("first send declares");
    let conn = raw(&url).await;
    channel(&conn)
        .await
        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete the queue outside mq");
    producer
        .send(&q, Message::new("after").with_id("after"))
        .await
        .expect("a send after the queue was deleted declares it again");
    let got = channel(&conn)
        .await
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
        .expect("the message is in the queue declared again");
    assert_eq!(
        got.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("after")
    );
    close_raw(conn).await;
    client.close().await.expect("close client");
    cleanup(&url, &[&q], &[&q]).await;
}

/// Defect 10, exchange variant: the destination's exchange and queue were
/// both deleted; the publish fails with a channel error 404 (no exchange),
/// the declaration is forgotten and the send retried once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect10_deleted_exchange_is_declared_again() {
    let Some(url) = url("defect10_deleted_exchange_is_declared_again") else {
        return;
    };
    let q = unique("d10-exchange");
    let client = mq_rabbit::connect(&url).await.expect("connect");
    let producer = client.producer().await.expect("producer");
    producer
        .send(&q, Message::new("before").with_id("before"))
        .await
        .expect("first send declares");
    cleanup(&url, &[&q], &[&q]).await;
    producer
        .send(&q, Message::new("after").with_id("after"))
        .await
        .expect("a send after the exchange was deleted declares it again");
    let conn = raw(&url).await;
    let got = channel(&conn)
        .await
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
        .expect("the message is in the queue declared again");
    assert_eq!(
        got.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("after")
    );
    close_raw(conn).await;
    client.close().await.expect("close client");
    cleanup(&url, &[&q], &[&q]).await;
}
