use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::delivery::Received;
use crate::handler::{BoxHandler, HandlerError, Layer};
use crate::message::Message;

fn counting(calls: Arc<AtomicU32>, work: Duration) -> BoxHandler {
    Arc::new(move |_m: Received| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(work).await;
            Ok(())
        }
    })
}

fn msg(id: &str) -> Received {
    Received::new("jobs", Message::new("x").with_id(id), 1)
}

#[tokio::test]
async fn same_id_runs_once() {
    let calls = Arc::new(AtomicU32::new(0));
    let h = DedupLayer::new(MemoryDedupStore::new()).layer(counting(calls.clone(), Duration::ZERO));
    h.call(msg("a")).await.expect("first");
    h.call(msg("a")).await.expect("duplicate acked");
    h.call(msg("b")).await.expect("other id");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn groups_dedup_independently_and_key_fn_is_used() {
    let calls = Arc::new(AtomicU32::new(0));
    let h = DedupLayer::new(MemoryDedupStore::new()).layer(counting(calls.clone(), Duration::ZERO));
    h.call(msg("a").with_group(Some("g1"))).await.expect("g1");
    h.call(msg("a").with_group(Some("g2"))).await.expect("g2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let calls = Arc::new(AtomicU32::new(0));
    let by_payload = DedupLayer::new(MemoryDedupStore::new())
        .key_fn(|m| String::from_utf8_lossy(m.payload()).into_owned())
        .layer(counting(calls.clone(), Duration::ZERO));
    by_payload.call(msg("1")).await.expect("first");
    by_payload
        .call(msg("2"))
        .await
        .expect("same payload, other id");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_failed_attempt_releases_the_key() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let inner: BoxHandler = Arc::new(move |_m: Received| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                Err(HandlerError::transient("first try fails"))
            } else {
                Ok(())
            }
        }
    });
    let h = DedupLayer::new(MemoryDedupStore::new()).layer(inner);
    assert!(h.call(msg("a")).await.is_err());
    h.call(msg("a")).await.expect("retry runs at once");
    h.call(msg("a")).await.expect("then it is a duplicate");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn crash_mid_handler_lets_redelivery_run_after_lease_expiry() {
    let calls = Arc::new(AtomicU32::new(0));
    let store = MemoryDedupStore::new();
    let layer = DedupLayer::new(store).lease(Duration::from_millis(300));
    let slow = layer.layer(counting(calls.clone(), Duration::from_secs(3600)));
    // The "crash": the handler task dies mid-run, nothing is released.
    let crashed = tokio::spawn(slow.call(msg("a")));
    tokio::time::sleep(Duration::from_millis(50)).await;
    crashed.abort();
    let _ = crashed.await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let quick = layer.layer(counting(calls.clone(), Duration::ZERO));
    let err = quick.call(msg("a")).await.expect_err("lease still held");
    assert!(!err.is_permanent());
    let wait = err.requested_delay().expect("asks to come back later");
    assert!(wait <= Duration::from_millis(300), "{wait:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "not run while leased");

    tokio::time::sleep(wait + Duration::from_millis(50)).await;
    quick
        .call(msg("a"))
        .await
        .expect("runs after the lease expired");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    quick.call(msg("a")).await.expect("now a duplicate");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn lease_is_renewed_while_a_long_handler_runs() {
    let calls = Arc::new(AtomicU32::new(0));
    let layer = DedupLayer::new(MemoryDedupStore::new()).lease(Duration::from_millis(150));
    let long = layer.layer(counting(calls.clone(), Duration::from_millis(600)));
    let running = tokio::spawn(long.call(msg("a")));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let dup = layer.layer(counting(calls.clone(), Duration::ZERO));
    assert!(
        dup.call(msg("a")).await.is_err(),
        "a duplicate during a long run must wait, not run"
    );
    running.await.expect("join").expect("long run succeeds");
    dup.call(msg("a"))
        .await
        .expect("duplicate after completion is acked");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn done_markers_expire_after_ttl() {
    let store = MemoryDedupStore::new();
    let calls = Arc::new(AtomicU32::new(0));
    let h = DedupLayer::new(store)
        .ttl(Duration::from_millis(100))
        .layer(counting(calls.clone(), Duration::ZERO));
    h.call(msg("a")).await.expect("first");
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.call(msg("a")).await.expect("after ttl");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A store whose renewals fail (a Redis that stopped answering renewals).
#[derive(Debug)]
struct RenewFails(MemoryDedupStore);

#[async_trait::async_trait]
impl DedupStore for RenewFails {
    async fn claim(&self, key: &str, lease: Duration) -> crate::Result<Claim> {
        self.0.claim(key, lease).await
    }
    async fn renew(&self, _: &str, _: LeaseToken, _: Duration) -> crate::Result<bool> {
        Err(crate::Error::new(
            crate::ErrorKind::Timeout,
            "renew timed out",
        ))
    }
    async fn complete(&self, key: &str, token: LeaseToken, ttl: Duration) -> crate::Result<bool> {
        self.0.complete(key, token, ttl).await
    }
    async fn release(&self, key: &str, token: LeaseToken) -> crate::Result<()> {
        self.0.release(key, token).await
    }
}

#[tokio::test]
async fn dedup_complete_is_fenced_to_the_current_lease_owner() {
    let store = MemoryDedupStore::new();
    let lease = Duration::from_millis(50);
    let Claim::Acquired(old) = store.claim("k", lease).await.expect("claim") else {
        panic!("first claim acquires");
    };
    tokio::time::sleep(lease * 2).await;
    let Claim::Acquired(new) = store.claim("k", lease * 40).await.expect("claim") else {
        panic!("an expired lease can be claimed again");
    };
    assert!(
        !store
            .complete("k", old, Duration::from_secs(60))
            .await
            .expect("complete"),
        "the old owner must not complete a key leased to someone else"
    );
    assert!(matches!(
        store.claim("k", lease).await,
        Ok(Claim::InProgress(_))
    ));
    assert!(store
        .complete("k", new, Duration::from_secs(60))
        .await
        .expect("complete"));
    assert!(
        !store
            .complete("k", old, Duration::from_secs(60))
            .await
            .expect("complete"),
        "done already"
    );
    // Expired and unclaimed: the last owner may still complete.
    let Claim::Acquired(late) = store.claim("k2", lease).await.expect("claim") else {
        panic!("claim");
    };
    tokio::time::sleep(lease * 2).await;
    assert!(store
        .complete("k2", late, Duration::from_secs(60))
        .await
        .expect("complete"));
}

#[tokio::test]
async fn dedup_lease_lost_does_not_mark_the_new_owners_key_done() {
    let calls = Arc::new(AtomicU32::new(0));
    let store = MemoryDedupStore::new();
    let lease = Duration::from_millis(60);
    // A: renewals fail, so its lease runs out while it works for 400 ms.
    let a_layer = DedupLayer::with_store(Arc::new(RenewFails(store.clone()))).lease(lease);
    let a = tokio::spawn(
        a_layer
            .layer(counting(calls.clone(), Duration::from_millis(400)))
            .call(msg("a")),
    );
    // B and C reach the same store with working renewals.
    let layer = DedupLayer::new(store).lease(lease);
    tokio::time::sleep(Duration::from_millis(150)).await;
    // B takes the key over and fails after A has finished.
    let c = calls.clone();
    let failing: BoxHandler = Arc::new(move |_m: Received| {
        let c = c.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(400)).await;
            Err(HandlerError::transient("B fails"))
        }
    });
    let b = tokio::spawn(layer.layer(failing).call(msg("a")));
    a.await.expect("join").expect("A's handler succeeded");
    assert!(b.await.expect("join").is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // B's failure must leave the key runnable: A's late complete did not
    // mark it done over B's lease.
    layer
        .layer(counting(calls.clone(), Duration::ZERO))
        .call(msg("a"))
        .await
        .expect("C runs");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "C must run, not be suppressed"
    );
}

#[tokio::test]
async fn dedup_lease_and_ttl_of_duration_max_do_not_panic() {
    let calls = Arc::new(AtomicU32::new(0));
    let h = DedupLayer::new(MemoryDedupStore::new())
        .lease(Duration::MAX)
        .ttl(Duration::MAX)
        .layer(counting(calls.clone(), Duration::ZERO));
    h.call(msg("a")).await.expect("first");
    h.call(msg("a")).await.expect("duplicate");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
