//! Sending: every `send` is coalesced with concurrent ones into
//! `SendMessageBatch` calls of up to 10 messages (see [`crate::batch`]);
//! `send_batch` chunks its messages into batch calls directly. Each message
//! gets its own outcome: a batch call can answer HTTP 200 and still list
//! failed entries.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use futures::StreamExt;
use mq_core::{BatchReport, Error, ErrorKind, Message, Producer, Result};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::batch::{self, MAX_ENTRIES};
use crate::codec::{self, Wire};
use crate::error;
use crate::topology::{Budget, QueueInfo, Queues, RESERVED_FOR_ATTRIBUTES};
use crate::BACKEND;

/// The most bytes (bodies and attributes) one `SendMessageBatch` carries.
pub(crate) const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Sends to SQS. Cheap to clone; clones share the batching tasks, and
/// `close` on one closes them all.
#[derive(Clone)]
pub struct SqsProducer {
    inner: Arc<ProducerInner>,
}

struct ProducerInner {
    queues: Arc<Queues>,
    batchers: Mutex<HashMap<String, Batcher>>,
    closed: AtomicBool,
}

/// The batching task of one destination and where to hand it messages.
type Batcher = (mpsc::UnboundedSender<Pending>, JoinHandle<()>);

/// A message waiting for its batch, and where its outcome goes.
struct Pending {
    wire: Wire,
    reply: oneshot::Sender<Result<()>>,
}

impl fmt::Debug for SqsProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsProducer")
            .field("destinations", &self.inner.batchers.lock().len())
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl SqsProducer {
    pub(crate) fn new(queues: Arc<Queues>) -> Self {
        SqsProducer {
            inner: Arc::new(ProducerInner {
                queues,
                batchers: Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
            }),
        }
    }

    fn check_open(&self, destination: &str) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(error::closed("the producer", "send", destination));
        }
        Ok(())
    }

    /// The batching task of `destination`, started on first use.
    fn batcher(&self, destination: &str) -> mpsc::UnboundedSender<Pending> {
        let mut batchers = self.inner.batchers.lock();
        if let Some((tx, _)) = batchers.get(destination) {
            return tx.clone();
        }
        let config = &self.inner.queues.config;
        let settings = batch::Settings {
            max_entries: MAX_ENTRIES,
            max_bytes: MAX_BATCH_BYTES,
            linger: config.linger,
            concurrency: config.send_concurrency,
        };
        let queues = self.inner.queues.clone();
        let logical: Arc<str> = destination.into();
        let (tx, task) = batch::spawn(
            settings,
            |p: &Pending| p.wire.size(),
            move |pending: Vec<Pending>| {
                let (queues, logical) = (queues.clone(), logical.clone());
                async move {
                    let (wires, replies): (Vec<Wire>, Vec<_>) =
                        pending.into_iter().map(|p| (p.wire, p.reply)).unzip();
                    let results = send_to(&queues, &logical, &wires).await;
                    for (reply, result) in replies.into_iter().zip(results) {
                        // The caller may have stopped waiting; nothing to do then.
                        let _ = reply.send(result);
                    }
                }
            },
        );
        batchers.insert(destination.to_owned(), (tx.clone(), task));
        tx
    }
}

/// Checks `message` against the queue's limits and encodes it.
pub(crate) fn prepare(info: &QueueInfo, message: Message) -> Result<Wire> {
    let size = message.encoded_len();
    if size > info.limit() {
        return Err(Error::too_large(
            size,
            info.limit(),
            &format!(
                "SQS MaximumMessageSize of queue `{}`, {} bytes, less {RESERVED_FOR_ATTRIBUTES} kept for mq's attributes",
                info.logical, info.max_size
            ),
        )
        .with_backend(BACKEND)
        .with_operation("send")
        .with_destination(info.logical.clone()));
    }
    let wire =
        codec::encode(message, info.fifo).map_err(|e| e.with_destination(info.logical.clone()))?;
    if wire.size() > info.max_size {
        return Err(Error::too_large(
            wire.size(),
            info.max_size,
            "SQS MaximumMessageSize, counting body and attributes as sent (base64 makes a binary payload a third larger)",
        )
        .with_backend(BACKEND)
        .with_operation("send")
        .with_destination(info.logical.clone()));
    }
    Ok(wire)
}

fn attributes(wire: &Wire) -> Result<HashMap<String, MessageAttributeValue>> {
    wire.attributes
        .iter()
        .map(|(name, value)| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map(|v| (name.clone(), v))
                .map_err(|e| {
                    Error::config("invalid message attribute")
                        .with_backend(BACKEND)
                        .with_source(e)
                })
        })
        .collect()
}

/// Sends `wires` to the queue of `logical` in one call and returns each
/// one's outcome. When the queue turns out to be gone it is resolved (and,
/// with `create_queues`, created) again and the call retried once.
pub(crate) async fn send_to(queues: &Queues, logical: &str, wires: &[Wire]) -> Vec<Result<()>> {
    let mut retried = false;
    loop {
        let info = match queues.resolve(logical).await {
            Ok(info) => info,
            Err(e) => return wires.iter().map(|_| Err(error::replicate(&e))).collect(),
        };
        match call(queues, &info, wires).await {
            Ok(results) => return results,
            Err(e) if !retried && queues.gone(&info, &e) => retried = true,
            Err(e) => return wires.iter().map(|_| Err(error::replicate(&e))).collect(),
        }
    }
}

/// One `SendMessage` (a single message) or `SendMessageBatch` call. `Err`
/// is a failure of the whole call; `Ok` holds each entry's outcome.
async fn call(queues: &Queues, info: &QueueInfo, wires: &[Wire]) -> Result<Vec<Result<()>>> {
    let client = &queues.clients.ops;
    let logical = info.logical.as_str();
    let _request = queues.permit(Budget::Send).await;
    if let [wire] = wires {
        let mut req = client
            .send_message()
            .queue_url(&info.url)
            .message_body(&wire.body)
            .set_message_attributes(Some(attributes(wire)?))
            .set_delay_seconds(wire.delay_seconds);
        if let Some((group, dedup)) = &wire.fifo {
            req = req.message_group_id(group).message_deduplication_id(dedup);
        }
        req.send()
            .await
            .map_err(|e| error::sdk(e, "send", logical))?;
        return Ok(vec![Ok(())]);
    }
    let mut entries = Vec::with_capacity(wires.len());
    for (i, wire) in wires.iter().enumerate() {
        let mut entry = SendMessageBatchRequestEntry::builder()
            .id(i.to_string())
            .message_body(&wire.body)
            .set_message_attributes(Some(attributes(wire)?))
            .set_delay_seconds(wire.delay_seconds);
        if let Some((group, dedup)) = &wire.fifo {
            entry = entry
                .message_group_id(group)
                .message_deduplication_id(dedup);
        }
        entries.push(entry.build().map_err(|e| {
            Error::config("invalid batch entry")
                .with_backend(BACKEND)
                .with_source(e)
        })?);
    }
    let out = client
        .send_message_batch()
        .queue_url(&info.url)
        .set_entries(Some(entries))
        .send()
        .await
        .map_err(|e| error::sdk(e, "send", logical))?;
    let mut results: Vec<Option<Result<()>>> = wires.iter().map(|_| None).collect();
    for ok in out.successful() {
        if let Some(slot) = ok
            .id()
            .parse::<usize>()
            .ok()
            .and_then(|i| results.get_mut(i))
        {
            *slot = Some(Ok(()));
        }
    }
    for failed in out.failed() {
        if let Some(slot) = failed
            .id()
            .parse::<usize>()
            .ok()
            .and_then(|i| results.get_mut(i))
        {
            *slot = Some(Err(error::entry(failed, "send", logical)));
        }
    }
    Ok(results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(
                    Error::new(ErrorKind::Broker, "SQS reported no outcome for the message")
                        .with_backend(BACKEND)
                        .with_operation("send")
                        .with_destination(logical),
                )
            })
        })
        .collect())
}

/// Groups `(index, wire)` pairs into batches of at most 10 entries and
/// [`MAX_BATCH_BYTES`], in order.
fn chunks(ready: Vec<(usize, Wire)>) -> Vec<Vec<(usize, Wire)>> {
    let mut out: Vec<Vec<(usize, Wire)>> = Vec::new();
    let mut bytes = 0;
    for (i, wire) in ready {
        let size = wire.size();
        match out.last_mut() {
            Some(last) if last.len() < MAX_ENTRIES && bytes + size <= MAX_BATCH_BYTES => {
                bytes += size;
                last.push((i, wire));
            }
            _ => {
                bytes = size;
                out.push(vec![(i, wire)]);
            }
        }
    }
    out
}

#[async_trait]
impl Producer for SqsProducer {
    async fn send(&self, destination: &str, message: Message) -> Result<()> {
        self.check_open(destination)?;
        let info = self.inner.queues.resolve(destination).await?;
        let wire = prepare(&info, message)?;
        let (reply, outcome) = oneshot::channel();
        self.batcher(destination)
            .send(Pending { wire, reply })
            .map_err(|_| error::closed("the producer", "send", destination))?;
        outcome.await.unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Broker,
                "the batching task stopped before the message was sent",
            )
            .with_backend(BACKEND)
            .with_operation("send")
            .with_destination(destination))
        })
    }

    async fn send_batch(&self, destination: &str, messages: Vec<Message>) -> BatchReport {
        let ids: Vec<String> = messages.iter().map(|m| m.id().to_owned()).collect();
        let prepared = match self.check_open(destination) {
            Ok(()) => self.inner.queues.resolve(destination).await,
            Err(e) => Err(e),
        };
        let info = match prepared {
            Ok(info) => info,
            Err(e) => {
                return BatchReport::new(
                    ids.into_iter()
                        .map(|id| (id, Err(error::replicate(&e))))
                        .collect(),
                )
            }
        };
        let mut results: Vec<Option<Result<()>>> = ids.iter().map(|_| None).collect();
        let mut ready = Vec::with_capacity(messages.len());
        for (i, m) in messages.into_iter().enumerate() {
            match prepare(&info, m) {
                Ok(wire) => ready.push((i, wire)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let queues = &self.inner.queues;
        let calls = chunks(ready).into_iter().map(|chunk| async move {
            let (indexes, wires): (Vec<usize>, Vec<Wire>) = chunk.into_iter().unzip();
            let outcomes = send_to(queues, destination, &wires).await;
            indexes.into_iter().zip(outcomes).collect::<Vec<_>>()
        });
        // FIFO order across chunks needs one call after the other.
        let in_flight = if info.fifo {
            1
        } else {
            queues.config.send_concurrency
        };
        let done: Vec<Vec<(usize, Result<()>)>> = futures::stream::iter(calls)
            .buffer_unordered(in_flight)
            .collect()
            .await;
        for (i, r) in done.into_iter().flatten() {
            results[i] = Some(r);
        }
        BatchReport::new(
            ids.into_iter()
                .zip(results)
                .map(|(id, r)| {
                    let r = r.unwrap_or_else(|| {
                        Err(Error::new(ErrorKind::Broker, "message was not sent")
                            .with_backend(BACKEND))
                    });
                    (id, r)
                })
                .collect(),
        )
    }

    fn health(&self) -> mq_core::observe::Health {
        self.inner.queues.clients.health.health()
    }

    /// Stops accepting sends and waits until every queued message was sent.
    async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        let batchers: Vec<_> = self.inner.batchers.lock().drain().collect();
        for (_, (tx, task)) in batchers {
            drop(tx);
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "an SQS batching task failed");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_respect_count_and_bytes() {
        let wire = |n: usize| {
            codec::encode(Message::new(vec![b'a'; n]).with_id("i"), false).expect("wire")
        };
        let ready: Vec<(usize, Wire)> = (0..23).map(|i| (i, wire(10))).collect();
        let sizes: Vec<usize> = chunks(ready).iter().map(Vec::len).collect();
        assert_eq!(sizes, [10, 10, 3]);
        let big = 600 * 1024;
        let ready = vec![(0, wire(big)), (1, wire(big)), (2, wire(10)), (3, wire(10))];
        let got: Vec<Vec<usize>> = chunks(ready)
            .iter()
            .map(|c| c.iter().map(|(i, _)| *i).collect())
            .collect();
        assert_eq!(got, [vec![0], vec![1, 2, 3]]);
    }
}
