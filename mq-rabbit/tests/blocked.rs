//! Issue 14 defect 7: a broker that blocks publishers (`connection.blocked`,
//! a memory alarm) made sends wait forever. This test raises the alarm on
//! the shared test broker with `rabbitmqctl set_vm_memory_high_watermark 0`
//! for a few seconds, so it restores the watermark in a guard (also on
//! panic) and should run alone:
//!
//! ```text
//! cargo test -p mq-rabbit --test blocked -- --test-threads=1
//! ```

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{cleanup, unique, url, with};
use mq_core::{ErrorKind, Message};

fn brokers_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/brokers.sh")
}

fn rabbitmqctl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("bash")
        .arg(brokers_script())
        .arg("rabbitmqctl")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run rabbitmqctl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "rabbitmqctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Puts the memory watermark back when dropped, whatever happened.
struct RestoreWatermark(String);

impl Drop for RestoreWatermark {
    fn drop(&mut self) {
        for _ in 0..5 {
            match rabbitmqctl(&["set_vm_memory_high_watermark", &self.0]) {
                Ok(_) => {
                    eprintln!("memory watermark restored to {}", self.0);
                    return;
                }
                Err(e) => eprintln!("{e}; trying again"),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!(
            "COULD NOT RESTORE the RabbitMQ memory watermark; run: \
             scripts/brokers.sh rabbitmqctl set_vm_memory_high_watermark {}",
            self.0
        );
    }
}

/// The watermark in force now (a fraction such as `0.4`), to restore later.
fn current_watermark() -> String {
    let raw = rabbitmqctl(&["eval", "vm_memory_monitor:get_vm_memory_high_watermark()."])
        .unwrap_or_default();
    match raw.parse::<f64>() {
        Ok(f) if f > 0.0 && f < 1.0 => raw,
        // An absolute watermark ({absolute, N}) or no answer: the default.
        _ => "0.4".to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect7_blocked_broker_send_times_out() {
    let Some(url) = url("defect7_blocked_broker_send_times_out") else {
        return;
    };
    if rabbitmqctl(&["version"]).is_err() {
        eprintln!("SKIPPED defect7_blocked_broker_send_times_out: rabbitmqctl is not available");
        return;
    }
    let q = unique("d7-blocked");
    let fresh = unique("d7-fresh");
    let timeout = Duration::from_secs(2);
    let client = mq_rabbit::connect(&with(&url, "operation_timeout=2s"))
        .await
        .expect("connect");
    let producer = client.producer().await.expect("producer");
    producer
        .send(&q, Message::new("before"))
        .await
        .expect("a send before the alarm");
    assert!(!client.health().blocked);

    let (blocked_send, fresh_send, health) = {
        let _restore = RestoreWatermark(current_watermark());
        rabbitmqctl(&["set_vm_memory_high_watermark", "0"]).expect("raise the memory alarm");
        let started = Instant::now();
        // A destination already declared: the publish is never confirmed.
        // (The outer timeout keeps a regression from hanging with the alarm on.)
        let blocked_send = tokio::time::timeout(
            timeout + Duration::from_secs(3),
            producer.send(&q, Message::new("blocked")),
        )
        .await;
        let took = started.elapsed();
        let blocked_send = blocked_send.unwrap_or_else(|_| {
            panic!("the send must end near operation_timeout, still waiting after {took:?}")
        });
        // A new destination: the declaration itself never gets an answer.
        let fresh_send = tokio::time::timeout(
            timeout + Duration::from_secs(3),
            producer.send(&fresh, Message::new("fresh")),
        )
        .await
        .expect("a declaration must end near operation_timeout");
        (blocked_send, fresh_send, client.health())
        // `_restore` puts the watermark back here.
    };

    let err = blocked_send.expect_err("a blocked broker does not confirm");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.is_retryable(), "{err}");
    let err = fresh_send.expect_err("a blocked broker does not answer declarations");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(health.blocked, "health must report the block: {health:?}");
    assert!(
        health
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("blocked")),
        "{health:?}"
    );

    // Unblocked again: health says so and sends work.
    let deadline = Instant::now() + Duration::from_secs(15);
    while client.health().blocked && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!client.health().blocked, "{:?}", client.health());
    producer
        .send(&q, Message::new("after"))
        .await
        .expect("a send after the alarm cleared");
    client.close().await.expect("close");
    cleanup(&url, &[&q, &fresh], &[&q, &fresh]).await;
}
