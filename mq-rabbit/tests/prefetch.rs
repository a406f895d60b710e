//! Which prefetch a consumer gets (`MQ_TEST_RABBIT_URL`): the one the
//! application sets, else the URL's `prefetch` option. An application that
//! sets exactly the core default (100) still gets 100, not the URL's value
//! (the old check compared against the default constant and lost that).

mod common;

use std::time::Duration;

use common::{cleanup, next, unique, url, with};
use mq_core::{Consumer, Message, Producer};

/// How many deliveries `consumer` hands out without any being settled.
async fn held(consumer: &mut Box<dyn Consumer>) -> usize {
    let mut held = Vec::new();
    while let Some(d) = next(consumer, Duration::from_millis(700)).await {
        held.push(d);
    }
    let n = held.len();
    for d in held {
        d.ack().await.expect("ack");
    }
    n
}

#[tokio::test]
async fn the_applications_prefetch_wins_over_the_urls_even_when_it_is_the_default() {
    let Some(base) = url("prefetch") else { return };
    let client = mq_rabbit::connect(&with(&base, "prefetch=3"))
        .await
        .expect("connect");
    let queue = unique("prefetch");
    let producer = client.producer().await.expect("producer");
    // Declared (and bound) before the sends: subscribe first.
    let mut by_url = client.consumer(&queue).await.expect("consumer");
    let messages = (0..10).map(|i| Message::new(format!("m{i}"))).collect();
    producer
        .send_batch(&queue, messages)
        .await
        .into_result()
        .expect("send");
    assert_eq!(held(&mut by_url).await, 3, "the URL's prefetch=3 applies");
    by_url.close().await.expect("close");

    let mut explicit = client
        .consumer(&queue)
        .prefetch(100)
        .await
        .expect("consumer");
    assert_eq!(
        held(&mut explicit).await,
        7,
        "prefetch(100) set by the application holds all 7 left"
    );
    explicit.close().await.expect("close");
    cleanup(&base, &[&queue, &format!("{queue}-dlq")], &[]).await;
}
