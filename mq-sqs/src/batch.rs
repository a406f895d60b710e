//! Coalescing single operations into SQS batch calls of up to 10 entries.
//!
//! Each caller hands its entry (with its own reply channel) to a batching
//! task and awaits its own result. The task waits until a request slot is
//! free, takes the first entry, adds whatever else is already queued (or
//! arrives within the linger time) up to 10 entries and the byte limit, and
//! runs the batch call. While every slot is busy entries pile up, so batches
//! fill by themselves under load ("natural batching"), and a lone entry is
//! sent at once when the broker keeps up.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

/// The most entries in one SQS batch call.
pub(crate) const MAX_ENTRIES: usize = 10;

/// How a batching task groups entries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Entries per batch (at most [`MAX_ENTRIES`]).
    pub(crate) max_entries: usize,
    /// Sum of entry weights per batch; a heavier single entry goes alone.
    pub(crate) max_bytes: usize,
    /// How long to wait for more entries once the first is in hand.
    pub(crate) linger: Duration,
    /// Batch calls in flight at once.
    pub(crate) concurrency: usize,
}

/// Starts a batching task; returns where to send entries and the task, which
/// ends once every sender is dropped and the batches in flight are done.
pub(crate) fn spawn<T, W, F, Fut>(
    settings: Settings,
    weight: W,
    flush: F,
) -> (mpsc::UnboundedSender<T>, JoinHandle<()>)
where
    T: Send + 'static,
    W: Fn(&T) -> usize + Send + 'static,
    F: Fn(Vec<T>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(settings, rx, weight, flush));
    (tx, task)
}

async fn run<T, W, F, Fut>(
    settings: Settings,
    mut rx: mpsc::UnboundedReceiver<T>,
    weight: W,
    flush: F,
) where
    T: Send + 'static,
    W: Fn(&T) -> usize + Send + 'static,
    F: Fn(Vec<T>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let concurrency = settings.concurrency.max(1);
    let max_entries = settings.max_entries.clamp(1, MAX_ENTRIES);
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut carry: Option<T> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let first = match carry.take() {
            Some(entry) => entry,
            None => match rx.recv().await {
                Some(entry) => entry,
                None => break,
            },
        };
        let mut bytes = weight(&first);
        let mut batch = Vec::with_capacity(max_entries);
        batch.push(first);
        let deadline = mq_core::backend::time::tokio_instant_after(settings.linger);
        while batch.len() < max_entries {
            let next = match rx.try_recv() {
                Ok(entry) => Some(entry),
                Err(mpsc::error::TryRecvError::Empty) if !settings.linger.is_zero() => {
                    tokio::time::timeout_at(deadline, rx.recv())
                        .await
                        .ok()
                        .flatten()
                }
                Err(_) => None,
            };
            let Some(entry) = next else { break };
            let w = weight(&entry);
            if bytes + w > settings.max_bytes {
                carry = Some(entry);
                break;
            }
            bytes += w;
            batch.push(entry);
        }
        let call = flush(batch);
        tokio::spawn(async move {
            call.await;
            drop(slot);
        });
    }
    // Let the batches in flight finish before the task ends.
    let _ = slots.acquire_many(concurrency as u32).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn batches_fill_while_slots_are_busy_and_respect_limits() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let s = sizes.clone();
        let settings = Settings {
            max_entries: 10,
            max_bytes: 100,
            linger: Duration::ZERO,
            concurrency: 1,
        };
        let (tx, _task) = spawn(
            settings,
            |(w, _): &(usize, oneshot::Sender<()>)| *w,
            move |batch: Vec<(usize, oneshot::Sender<()>)>| {
                let s = s.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    s.lock().push(batch.len());
                    for (_, done) in batch {
                        let _ = done.send(());
                    }
                }
            },
        );
        let mut waits = Vec::new();
        for i in 0..25 {
            let (done, wait) = oneshot::channel();
            // Entry 12 weighs 90: it cannot share a batch with 2+ others of 10.
            let w = if i == 12 { 90 } else { 10 };
            tx.send((w, done)).expect("send");
            waits.push(wait);
        }
        for w in waits {
            w.await.expect("every entry flushed");
        }
        let sizes = sizes.lock().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 25, "{sizes:?}");
        assert!(sizes.iter().all(|&n| n <= 10), "{sizes:?}");
        assert!(sizes.len() <= 5, "entries were coalesced: {sizes:?}");
    }
}
