//! The Redis dedup store against a real Redis (`MQ_TEST_REDIS_URL`),
//! shared by two "processes" (two independent store connections).
#![cfg(feature = "redis")]

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mq::middleware::dedup::{Claim, DedupStore};
use mq::middleware::DedupLayer;
use mq::{CancellationToken, Message, Producer, Received, RedisDedupStore, Worker};

fn redis_url() -> Option<String> {
    let url = std::env::var("MQ_TEST_REDIS_URL").ok();
    if url.is_none() {
        let _ = writeln!(
            std::io::stderr(),
            "redis dedup: skipped (MQ_TEST_REDIS_URL is not set; start Redis with scripts/brokers.sh)"
        );
    }
    url
}

fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn two_processes_share_claims_leases_and_done_markers() {
    let Some(url) = redis_url() else { return };
    let a = RedisDedupStore::connect(&url).await.expect("connect a");
    let b = RedisDedupStore::connect(&url).await.expect("connect b");
    let key = unique("job");
    let lease = Duration::from_millis(400);

    let Claim::Acquired(token) = a.claim(&key, lease).await.expect("claim a") else {
        panic!("a fresh key must be claimable");
    };
    match b.claim(&key, lease).await.expect("claim b") {
        Claim::InProgress(left) => assert!(left <= lease, "{left:?}"),
        other => panic!("b must see a's lease, got {other:?}"),
    }
    assert!(a.renew(&key, token, lease).await.expect("renew"));
    assert!(a
        .complete(&key, token, Duration::from_secs(60))
        .await
        .expect("complete"));
    assert_eq!(
        b.claim(&key, lease).await.expect("claim after done"),
        Claim::Done
    );

    // A crashed holder: its lease simply expires, then the key is claimable.
    let crashed = unique("crashed");
    assert!(matches!(
        a.claim(&crashed, lease).await.expect("claim"),
        Claim::Acquired(_)
    ));
    assert!(matches!(
        b.claim(&crashed, lease).await.expect("claim"),
        Claim::InProgress(_)
    ));
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let Claim::Acquired(b_token) = b.claim(&crashed, lease).await.expect("claim") else {
        panic!("the expired lease must be claimable");
    };
    // The old holder can no longer release or renew what is b's now.
    let released = unique("released");
    let Claim::Acquired(t) = a.claim(&released, lease).await.expect("claim") else {
        panic!("claimable");
    };
    a.release(&released, t).await.expect("release");
    assert!(matches!(
        b.claim(&released, lease).await.expect("claim"),
        Claim::Acquired(_)
    ));
    assert!(!a
        .renew(&crashed, t, lease)
        .await
        .expect("renew someone else's"));
    assert!(b.renew(&crashed, b_token, lease).await.expect("renew own"));
    assert!(format!("{a:?}").contains("RedisDedupStore"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_with_one_redis_store_run_a_duplicate_once() {
    let Some(url) = redis_url() else { return };
    let client = mq::connect(&format!("memory://{}", unique("redis-dedup")))
        .await
        .expect("connect");
    let queue = unique("emails");
    let producer = client.producer().await.expect("producer");
    for _ in 0..4 {
        producer
            .send(
                &queue,
                Message::new("welcome").with_id(unique("dup-id").as_str()),
            )
            .await
            .expect("send");
    }
    let id = unique("same-email");
    for _ in 0..3 {
        producer
            .send(&queue, Message::new("hi").with_id(id.as_str()))
            .await
            .expect("send");
    }
    let runs = Arc::new(AtomicU32::new(0));
    let token = CancellationToken::new();
    let mut workers = Vec::new();
    for _ in 0..2 {
        let store = RedisDedupStore::connect(&url).await.expect("store");
        let r = runs.clone();
        let handler = move |_m: Received| {
            let runs = r.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(())
            }
        };
        let consumer = client.consumer(&queue).await.expect("consumer");
        workers.push(tokio::spawn(
            Worker::new(consumer, handler)
                .layer(DedupLayer::new(store).lease(Duration::from_secs(5)))
                .run(token.clone()),
        ));
    }
    let mut acked = 0;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if runs.load(Ordering::SeqCst) >= 5 {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel();
    for w in workers {
        acked += w.await.expect("join").expect("worker").acked;
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        5,
        "4 distinct emails + 1 for the triplicated id"
    );
    assert!(acked >= 5, "acked {acked}");
}

#[tokio::test]
async fn dedup_complete_is_fenced_to_the_current_lease_owner_in_redis() {
    let Some(url) = redis_url() else { return };
    let a = RedisDedupStore::connect(&url).await.expect("connect a");
    let b = RedisDedupStore::connect(&url).await.expect("connect b");
    let key = unique("fenced");
    let lease = Duration::from_millis(100);
    let Claim::Acquired(old) = a.claim(&key, lease).await.expect("claim a") else {
        panic!("a fresh key must be claimable");
    };
    tokio::time::sleep(lease * 3).await;
    let Claim::Acquired(new) = b
        .claim(&key, Duration::from_secs(30))
        .await
        .expect("claim b")
    else {
        panic!("an expired lease can be claimed again");
    };
    assert!(
        !a.complete(&key, old, Duration::from_secs(60))
            .await
            .expect("complete a"),
        "a lost its lease: its complete must not mark b's key done"
    );
    assert!(matches!(
        a.claim(&key, lease).await,
        Ok(Claim::InProgress(_))
    ));
    assert!(b
        .complete(&key, new, Duration::MAX)
        .await
        .expect("complete b"));
    assert_eq!(a.claim(&key, lease).await.expect("claim"), Claim::Done);
}
