use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::delivery::Received;
use crate::handler::{BoxHandler, HandlerError, Layer};
use crate::message::Message;

#[test]
fn exponential_schedule_grows_and_caps() {
    let p = RetryPolicy::exponential(Duration::from_millis(100))
        .factor_and_max(2.0, Duration::from_millis(500))
        .without_jitter();
    let delays: Vec<u128> = (1..=6).map(|n| p.delay(n).as_millis()).collect();
    assert_eq!(delays, [100, 200, 400, 500, 500, 500]);
    let p = RetryPolicy::exponential(Duration::from_millis(40)).without_jitter();
    assert_eq!(p.delay(2), Duration::from_millis(80), "no f32 noise");
    assert_eq!(
        RetryPolicy::fixed(Duration::from_secs(2)).delay(7),
        Duration::from_secs(2)
    );
    assert_eq!(RetryPolicy::immediate().delay(3), Duration::ZERO);
}

#[test]
fn jitter_stays_within_one_extra_delay() {
    let p = RetryPolicy::exponential(Duration::from_millis(100));
    for _ in 0..100 {
        let d = p.delay(2).as_millis();
        assert!(
            (200..=400).contains(&d),
            "jittered delay {d}ms out of range"
        );
    }
}

/// A handler that fails transiently `fail_first` times, counting calls.
fn flaky(fail_first: u32, calls: Arc<AtomicU32>) -> BoxHandler {
    Arc::new(move |_m: Received| {
        let calls = calls.clone();
        async move {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            if n <= fail_first {
                Err(HandlerError::transient(format!("failure {n}")))
            } else {
                Ok(())
            }
        }
    })
}

fn msg(attempt: u32) -> Received {
    Received::new("jobs", Message::new("x"), attempt)
}

#[tokio::test(start_paused = true)]
async fn in_process_attempts_retry_with_backoff_then_succeed() {
    let calls = Arc::new(AtomicU32::new(0));
    let policy = RetryPolicy::fixed(Duration::from_secs(1))
        .in_process_attempts(3)
        .max_attempts(10);
    let h = RetryLayer::new(policy).layer(flaky(2, calls.clone()));
    let start = tokio::time::Instant::now();
    h.call(msg(1)).await.expect("third run succeeds");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(start.elapsed(), Duration::from_secs(2), "two 1s backoffs");
}

#[tokio::test]
async fn after_in_process_attempts_the_broker_redelivers_with_backoff() {
    let calls = Arc::new(AtomicU32::new(0));
    let policy = RetryPolicy::exponential(Duration::from_millis(100))
        .without_jitter()
        .max_attempts(5);
    let h = RetryLayer::new(policy).layer(flaky(u32::MAX, calls.clone()));
    // Broker attempt 2 is the second failure overall: delay 200ms.
    let err = h.call(msg(2)).await.expect_err("fails");
    assert!(!err.is_permanent());
    assert_eq!(err.requested_delay(), Some(Duration::from_millis(200)));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn exhausted_attempts_become_permanent_with_reason() {
    let calls = Arc::new(AtomicU32::new(0));
    let policy = RetryPolicy::immediate().max_attempts(3);
    let h = RetryLayer::new(policy).layer(flaky(u32::MAX, calls.clone()));
    let err = h.call(msg(3)).await.expect_err("fails");
    assert!(err.is_permanent());
    assert_eq!(err.to_string(), "gave up after 3 attempts: failure 1");
}

#[tokio::test]
async fn permanent_errors_skip_retries() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let inner: BoxHandler = Arc::new(move |_m: Received| {
        c.fetch_add(1, Ordering::SeqCst);
        async { Err(HandlerError::permanent("invalid order")) }
    });
    let h = RetryLayer::new(RetryPolicy::immediate().in_process_attempts(5)).layer(inner);
    let err = h.call(msg(1)).await.expect_err("fails");
    assert!(err.is_permanent());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn requested_delay_overrides_policy() {
    let inner: BoxHandler = Arc::new(|_m: Received| async {
        Err(HandlerError::transient("rate limited").retry_after(Duration::from_secs(42)))
    });
    let h = RetryLayer::new(RetryPolicy::fixed(Duration::from_secs(1))).layer(inner);
    let err = h.call(msg(1)).await.expect_err("fails");
    assert_eq!(err.requested_delay(), Some(Duration::from_secs(42)));
}

#[tokio::test]
async fn messages_older_than_max_elapsed_are_dead_lettered() {
    let inner: BoxHandler = Arc::new(|_m: Received| async { Err(HandlerError::transient("down")) });
    let h = RetryLayer::new(
        RetryPolicy::immediate()
            .max_attempts(100)
            .max_elapsed(Duration::from_secs(60)),
    )
    .layer(inner);
    let old = msg(1).with_timestamp(Some(
        std::time::SystemTime::now() - Duration::from_secs(120),
    ));
    let err = h.call(old).await.expect_err("fails");
    assert!(err.is_permanent(), "{err}");
    let fresh = msg(1).with_timestamp(Some(std::time::SystemTime::now()));
    assert!(!h.call(fresh).await.expect_err("fails").is_permanent());
}
