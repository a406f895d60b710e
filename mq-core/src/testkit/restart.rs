//! Broker restart mid-stream.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::support::*;
use super::{Ctx, Outcome, Verdict};
use crate::check;
use crate::message::Message;
use crate::producer::Producer;

/// Runs the restart command in a shell, failing the scenario if it fails.
async fn restart_broker(command: String) -> Outcome {
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .output()
    })
    .await
    .map_err(|e| Verdict::Fail(format!("restart task: {e}")))?
    .map_err(|e| Verdict::Fail(format!("cannot run the restart command: {e}")))?;
    check!(
        output.status.success(),
        "restart command failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Sends `message`, retrying while the broker is away; returns whether the
/// broker confirmed it within `patience`.
async fn send_until_confirmed<P: Producer + ?Sized>(
    producer: &P,
    dest: &str,
    message: Message,
    patience: Duration,
) -> bool {
    let deadline = Instant::now() + patience;
    loop {
        match producer.send(dest, message.clone()).await {
            Ok(()) => return true,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "send during restart failed; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(_) => return false,
        }
    }
}

/// Scenario 16: The broker restarts mid-stream (`MQ_TEST_<BACKEND>_RESTART`):
/// producers and consumers recover; on a broker that keeps its data, every
/// confirmed message is delivered.
pub async fn broker_restart_recovers(ctx: Ctx) -> Outcome {
    let Some(command) = ctx.target().restart_command.clone() else {
        return Err(Verdict::Skip(format!(
            "no restart command for {} (MQ_TEST_<BACKEND>_RESTART)",
            ctx.target().backend
        )));
    };
    let persistent = ctx.caps().persistent;
    let dest = ctx.unique("restart");
    let producer = ctx.client().producer().await?;
    let mut consumer = ctx.client().consumer(&dest).prefetch(20).await?;
    let received = Arc::new(Mutex::new(HashSet::<String>::new()));

    // Consume continuously through the restart.
    let r = received.clone();
    let consuming = tokio::spawn(async move {
        loop {
            match consumer.receive_batch(20, Duration::from_millis(500)).await {
                Ok(batch) => {
                    for d in batch {
                        let text = d.text().unwrap_or("").to_owned();
                        // Ack may fail across the restart; the message then comes back.
                        if d.ack().await.is_ok() {
                            r.lock().insert(text);
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "receive during restart failed");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    });

    let mut confirmed = Vec::new();
    for i in 0..50 {
        let text = format!("before-{i}");
        if send_until_confirmed(&*producer, &dest, Message::new(text.clone()), ARRIVAL).await {
            confirmed.push(text);
        }
    }
    restart_broker(command).await?;
    let mut after = Vec::new();
    for i in 0..50 {
        let text = format!("after-{i}");
        check!(
            send_until_confirmed(&*producer, &dest, Message::new(text.clone()), ARRIVAL * 2).await,
            "the producer did not recover after the restart (send {i})"
        );
        after.push(text);
    }
    let must_arrive: Vec<String> = if persistent {
        confirmed.iter().chain(after.iter()).cloned().collect()
    } else {
        after.clone()
    };
    let all = eventually(ARRIVAL * 2, || {
        let got = received.lock();
        must_arrive.iter().all(|m| got.contains(m))
    })
    .await;
    consuming.abort();
    let got = received.lock().clone();
    let missing: Vec<&String> = must_arrive.iter().filter(|m| !got.contains(*m)).collect();
    check!(
        all,
        "{} confirmed messages never arrived after the restart (persistent: {persistent}), e.g. {:?}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    Ok(())
}
