//! Batch workers, responders and codecs on `memory://`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mq::rpc::responder;
use mq::{
    headers, CancellationToken, Consumer, HandlerError, Message, Producer, Received, Requester,
    Worker,
};

fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

async fn client() -> mq::Client {
    mq::connect(&format!("memory://{}", unique("patterns")))
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_worker_settles_each_message_by_its_own_result() {
    let client = client().await;
    let queue = unique("rows");
    let producer = client.producer().await.expect("producer");
    for i in 0..25 {
        producer
            .send(&queue, Message::new(format!("{i}")))
            .await
            .expect("send");
    }
    let batches = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let b = batches.clone();
    let handler = move |batch: Vec<Received>| {
        let batches = b.clone();
        async move {
            batches.lock().push(batch.len());
            Ok(batch
                .iter()
                .map(|m| match (m.text()?, m.attempt()) {
                    ("7", _) => Err(HandlerError::permanent("row 7 is invalid")),
                    ("3", 1) => Err(HandlerError::transient("row 3 hit a lock")),
                    _ => Ok(()),
                })
                .collect())
        }
    };
    let consumer = client
        .consumer(&queue)
        .prefetch(10)
        .await
        .expect("consumer");
    let token = CancellationToken::new();
    let worker = tokio::spawn(
        Worker::batch(consumer, handler)
            .batch_size(10)
            .batch_wait(Duration::from_millis(100))
            .run(token.clone()),
    );
    let mut dlq = client
        .consumer(client.dead_letter_destination(&queue))
        .await
        .expect("dlq");
    let dead = tokio::time::timeout(Duration::from_secs(10), dlq.receive())
        .await
        .expect("a dead letter")
        .expect("receive");
    assert_eq!(dead.text().expect("utf8"), "7");
    assert_eq!(
        dead.headers().get(headers::DEAD_LETTER_REASON),
        Some("row 7 is invalid")
    );
    for _ in 0..200 {
        if batches.lock().iter().sum::<usize>() >= 26 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    token.cancel();
    let report = worker.await.expect("join").expect("worker");
    assert_eq!(report.received, 26, "25 messages, row 3 twice");
    assert_eq!(report.acked, 24);
    assert_eq!(report.nacked, 1);
    assert_eq!(report.dead_lettered, 1);
    assert!(
        batches.lock().iter().all(|&n| n <= 10),
        "batches bounded by batch_size: {:?}",
        batches.lock()
    );
    assert!(
        batches.lock().iter().any(|&n| n > 1),
        "messages arrive in batches"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responder_answers_requests_from_the_worker() {
    let client = client().await;
    let service = unique("prices");
    let producer = client.producer().await.expect("producer");
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let handler = responder(producer, move |req: Received| {
        c.fetch_add(1, Ordering::SeqCst);
        async move { Ok(Message::new(format!("price of {} is 42", req.text()?))) }
    });
    let consumer = client.consumer(&service).await.expect("consumer");
    let token = CancellationToken::new();
    let worker = tokio::spawn(
        Worker::new(consumer, handler)
            .concurrency(4)
            .run(token.clone()),
    );
    let requester = Requester::new(&client).await.expect("requester");
    let reply = requester
        .request(&service, Message::new("widget"), Duration::from_secs(5))
        .await
        .expect("reply");
    assert_eq!(reply.text().expect("utf8"), "price of widget is 42");
    // A message that asks for no reply is dead-lettered, not answered into the void.
    client
        .producer()
        .await
        .expect("producer")
        .send(&service, Message::new("no reply-to"))
        .await
        .expect("send");
    let mut dlq = client
        .consumer(client.dead_letter_destination(&service))
        .await
        .expect("dlq");
    let dead = tokio::time::timeout(Duration::from_secs(5), dlq.receive())
        .await
        .expect("dead letter")
        .expect("receive");
    assert!(dead
        .headers()
        .get(headers::DEAD_LETTER_REASON)
        .unwrap_or("")
        .contains("reply-to"));
    token.cancel();
    worker.await.expect("join").expect("worker");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
