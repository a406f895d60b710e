//! Helpers the scenarios share: bounded waits, collecting deliveries,
//! counting layers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::consumer::Consumer;
use crate::delivery::{Delivery, Received};
use crate::error::Result;
use crate::handler::{BoxHandler, Layer};
use crate::message::Message;
use crate::producer::Producer;

use super::{Outcome, Verdict};

/// How long scenarios wait for a message that must arrive. Generous: a
/// Kafka group join or an SQS visibility timeout takes seconds.
pub const ARRIVAL: Duration = Duration::from_secs(60);

/// The next delivery within `wait`, or `None`.
pub async fn receive_within<C: Consumer + ?Sized>(
    consumer: &mut C,
    wait: Duration,
) -> Result<Option<Delivery>> {
    match tokio::time::timeout(wait, consumer.receive()).await {
        Ok(d) => d.map(Some),
        Err(_) => Ok(None),
    }
}

/// The next delivery, failing the scenario if none arrives within [`ARRIVAL`].
pub async fn receive_one<C: Consumer + ?Sized>(
    consumer: &mut C,
    what: &str,
) -> Result<Delivery, Verdict> {
    receive_within(consumer, ARRIVAL)
        .await?
        .ok_or_else(|| Verdict::Fail(format!("{what}: nothing arrived within {ARRIVAL:?}")))
}

/// Fails the scenario if a delivery arrives within `wait`.
pub async fn expect_nothing<C: Consumer + ?Sized>(
    consumer: &mut C,
    wait: Duration,
    what: &str,
) -> Outcome {
    if let Some(d) = receive_within(consumer, wait).await? {
        let id = d.id().to_owned();
        drop(d);
        return Err(Verdict::Fail(format!(
            "{what}: unexpected delivery {id} within {wait:?}"
        )));
    }
    Ok(())
}

/// Receives and acks until `n` distinct message ids arrived (or [`ARRIVAL`]
/// passes without progress). Returns the messages in arrival order, first
/// copy of each, and the number of duplicates.
pub async fn collect_acked<C: Consumer + ?Sized>(
    consumer: &mut C,
    n: usize,
) -> Result<(Vec<Received>, usize), Verdict> {
    let mut seen = HashMap::new();
    let mut order = Vec::new();
    let mut duplicates = 0;
    while seen.len() < n {
        let batch = consumer.receive_batch(100, ARRIVAL).await?;
        if batch.is_empty() {
            return Err(Verdict::Fail(format!(
                "only {} of {n} messages arrived (no progress for {ARRIVAL:?})",
                seen.len()
            )));
        }
        for d in batch {
            let r = d.received().clone();
            d.ack().await?;
            if seen.insert(r.id().to_owned(), ()).is_some() {
                duplicates += 1;
            } else {
                order.push(r);
            }
        }
    }
    Ok((order, duplicates))
}

/// Sends `messages` to `destination` with all of them in flight, failing on
/// the first error.
pub async fn send_all<P: Producer + ?Sized>(
    producer: &P,
    destination: &str,
    messages: Vec<Message>,
) -> Outcome {
    let report = producer.send_batch(destination, messages).await;
    if let Some((i, id, e)) = report.failures().next() {
        return Err(Verdict::Fail(format!(
            "send of message {i} ({id}) failed: {e}"
        )));
    }
    Ok(())
}

/// `n` small messages whose payloads are `prefix-0`, `prefix-1`, ...
pub fn numbered(prefix: &str, n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| Message::new(format!("{prefix}-{i}")))
        .collect()
}

/// Polls `cond` every 20 ms until it holds or `wait` passes.
pub async fn eventually(wait: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An outermost layer that records every message's outcome, including
/// duplicates that inner layers ack without running the handler.
#[derive(Debug, Clone, Default)]
pub struct Outcomes {
    ok: Arc<AtomicU32>,
    failed: Arc<AtomicU32>,
}

impl Outcomes {
    /// Messages whose handling succeeded (acked).
    pub fn ok(&self) -> u32 {
        self.ok.load(Ordering::SeqCst)
    }

    /// Messages whose handling failed (nacked or dead-lettered).
    pub fn failed(&self) -> u32 {
        self.failed.load(Ordering::SeqCst)
    }
}

impl Layer for Outcomes {
    fn layer(&self, inner: BoxHandler) -> BoxHandler {
        let me = self.clone();
        Arc::new(move |m: Received| {
            let (inner, me) = (inner.clone(), me.clone());
            async move {
                let result = inner.call(m).await;
                let counter = if result.is_ok() { &me.ok } else { &me.failed };
                counter.fetch_add(1, Ordering::SeqCst);
                result
            }
        })
    }
}

/// Ids and attempts seen by a handler, shared with the scenario.
#[derive(Debug, Clone, Default)]
pub struct Seen(Arc<Mutex<Vec<(String, u32)>>>);

impl Seen {
    /// Records a message.
    pub fn record(&self, m: &Received) {
        self.0.lock().push((m.id().to_owned(), m.attempt()));
    }

    /// Everything recorded so far.
    pub fn all(&self) -> Vec<(String, u32)> {
        self.0.lock().clone()
    }

    /// The attempts recorded for `id`.
    pub fn attempts(&self, id: &str) -> Vec<u32> {
        self.0
            .lock()
            .iter()
            .filter(|(i, _)| i == id)
            .map(|(_, a)| *a)
            .collect()
    }

    /// How many were recorded.
    pub fn len(&self) -> usize {
        self.0.lock().len()
    }

    /// Whether none were recorded.
    pub fn is_empty(&self) -> bool {
        self.0.lock().is_empty()
    }
}
