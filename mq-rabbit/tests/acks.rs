//! Acks sent together (`acks.rs`) against a real broker
//! (`MQ_TEST_RABBIT_URL`): what the broker holds afterwards is read with a
//! plain lapin channel (`queue.declare` passive counts the ready messages;
//! an unacked delivery is counted again once its channel closes).

mod common;

use std::time::Duration;

use common::{channel, cleanup, close_raw, next, raw, unique, url};
use mq_core::{Consumer, Delivery, Message, Producer};
use mq_rabbit::lapin::options::QueueDeclareOptions;
use mq_rabbit::lapin::types::FieldTable;

/// Messages ready in `queue`, as the broker counts them.
async fn ready(url: &str, queue: &str) -> u32 {
    let conn = raw(url).await;
    let ch = channel(&conn).await;
    let declared = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
    close_raw(conn).await;
    declared.message_count()
}

async fn send(producer: &dyn Producer, queue: &str, n: usize) {
    let messages = (0..n).map(|i| Message::new(format!("m{i}"))).collect();
    producer
        .send_batch(queue, messages)
        .await
        .into_result()
        .expect("send");
}

async fn take(consumer: &mut Box<dyn Consumer>, n: usize) -> Vec<Delivery> {
    let mut out = Vec::new();
    while out.len() < n {
        match next(consumer, Duration::from_secs(10)).await {
            Some(d) => out.push(d),
            None => panic!("only {} of {n} deliveries arrived", out.len()),
        }
    }
    out
}

/// Every ack of a consumer that settles in order reaches the broker, and
/// `close` sends the queued ones before it closes the channel: nothing
/// comes back.
#[tokio::test]
async fn acks_in_order_all_reach_the_broker_before_close() {
    let Some(base) = url("acks_in_order") else {
        return;
    };
    let client = mq_rabbit::connect(&base).await.expect("connect");
    let queue = unique("acks-order");
    let producer = client.producer().await.expect("producer");
    let mut consumer = client
        .consumer(&queue)
        .prefetch(100)
        .await
        .expect("consumer");
    send(producer.as_ref(), &queue, 500).await;
    // Batches as they come (at most the prefetch of 100 out at once).
    let mut settled = 0;
    while settled < 500 {
        let batch = consumer
            .receive_batch(100, Duration::from_secs(10))
            .await
            .expect("receive");
        assert!(!batch.is_empty(), "stalled after {settled}");
        settled += batch.len();
        for d in batch {
            d.ack().await.expect("ack");
        }
    }
    // Closed right after the last ack: the acks still queued go first.
    consumer.close().await.expect("close");
    assert_eq!(
        ready(&base, &queue).await,
        0,
        "no acked message was requeued"
    );
    cleanup(&base, &[&queue, &format!("{queue}-dlq")], &[]).await;
}

/// A held delivery stops the `multiple` run, but the acks settled after it
/// go out on their own: the broker frees their prefetch slots and sends
/// more, and only the held one comes back when the consumer closes.
#[tokio::test]
async fn a_held_delivery_does_not_hold_back_the_acks_behind_it() {
    let Some(base) = url("acks_held") else {
        return;
    };
    let client = mq_rabbit::connect(&base).await.expect("connect");
    let queue = unique("acks-held");
    let producer = client.producer().await.expect("producer");
    let mut consumer = client
        .consumer(&queue)
        .prefetch(10)
        .await
        .expect("consumer");
    send(producer.as_ref(), &queue, 20).await;
    let mut first = take(&mut consumer, 10).await;
    let held = first.remove(0);
    for d in first {
        d.ack().await.expect("ack");
    }
    // The prefetch window is full of unacked deliveries unless those 9
    // acks reached the broker.
    let more = take(&mut consumer, 9).await;
    assert!(
        next(&mut consumer, Duration::from_millis(500))
            .await
            .is_none(),
        "the held delivery keeps one slot"
    );
    for d in more {
        d.ack().await.expect("ack");
    }
    // Room again: the last of the 20.
    for d in take(&mut consumer, 1).await {
        d.ack().await.expect("ack");
    }
    let held_id = held.id().to_owned();
    drop(held); // returned to the broker (basic.nack requeue)
    let again = next(&mut consumer, Duration::from_secs(10))
        .await
        .expect("the dropped delivery comes back");
    assert_eq!(again.id(), held_id);
    again.ack().await.expect("ack");
    consumer.close().await.expect("close");
    assert_eq!(ready(&base, &queue).await, 0, "all 20 settled, none twice");
    cleanup(&base, &[&queue, &format!("{queue}-dlq")], &[]).await;
}

/// Acks, nacks and dead letters mixed on one channel: the acks around a
/// nacked delivery still leave together, and the broker never sees an ack
/// for a tag it does not hold (it would close the channel and redeliver).
#[tokio::test]
async fn acks_around_nacks_and_dead_letters_settle_each_message_once() {
    let Some(base) = url("acks_mixed") else {
        return;
    };
    let client = mq_rabbit::connect(&base).await.expect("connect");
    let queue = unique("acks-mixed");
    let dlq = format!("{queue}-dlq");
    let producer = client.producer().await.expect("producer");
    let mut consumer = client
        .consumer(&queue)
        .prefetch(50)
        .await
        .expect("consumer");
    let mut dead = client.consumer(&dlq).await.expect("dlq consumer");
    send(producer.as_ref(), &queue, 60).await;
    let (mut acked, mut nacked, mut dead_lettered) = (0, 0, 0);
    let mut retried = std::collections::HashSet::new();
    while acked + dead_lettered < 60 {
        let d = next(&mut consumer, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("stalled at {acked} acked, {dead_lettered} dead"));
        let i: usize = std::str::from_utf8(d.payload())
            .expect("utf8")
            .trim_start_matches('m')
            .parse()
            .expect("number");
        if i % 7 == 3 {
            d.dead_letter("test").await.expect("dead letter");
            dead_lettered += 1;
        } else if i % 5 == 1 && retried.insert(i) {
            d.nack().await.expect("nack");
            nacked += 1;
        } else {
            d.ack().await.expect("ack");
            acked += 1;
        }
    }
    assert!(nacked > 0 && dead_lettered > 0);
    for d in take(&mut dead, dead_lettered).await {
        d.ack().await.expect("ack dead letter");
    }
    consumer.close().await.expect("close");
    dead.close().await.expect("close");
    assert!(
        next(
            &mut client.consumer(&queue).await.expect("consumer"),
            Duration::from_millis(500)
        )
        .await
        .is_none(),
        "every message settled exactly once"
    );
    assert_eq!(ready(&base, &queue).await, 0);
    cleanup(&base, &[&queue, &dlq], &[]).await;
}
