//! Queues: names, URL resolution (cached), creation and the attributes that
//! matter to `mq` (maximum size, redrive policy, FIFO).
//!
//! A destination is one queue of the same name. With `fifo=true`, `.fifo` is
//! appended to names that lack it. A queue URL is resolved once per
//! connection and cached; an operation that finds the queue gone (an
//! emulator restarted, someone deleted it) drops the cache entry, so the
//! next use resolves, and with `create_queues`, creates it again.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use aws_sdk_sqs::types::QueueAttributeName;
use mq_core::observe::QueueStats;
use mq_core::{Error, ErrorKind, Result};
use parking_lot::Mutex;
use tokio::sync::{OnceCell, Semaphore, SemaphorePermit};

use crate::config::{SqsConfig, DEFAULT_MAX_MESSAGE_SIZE, MIN_MAX_MESSAGE_SIZE};
use crate::error;
use crate::health::HealthState;
use crate::BACKEND;

/// Bytes of the queue's `MaximumMessageSize` kept for `mq`'s own attributes
/// (message id, content type, key, encodings): a message whose
/// [`encoded_len`](mq_core::Message::encoded_len) is within the rest is
/// accepted whatever its headers look like on the wire, short of base64.
pub const RESERVED_FOR_ATTRIBUTES: usize = 1024;

/// The longest queue name SQS accepts, `.fifo` included.
pub const MAX_QUEUE_NAME: usize = 80;

const FIFO_SUFFIX: &str = ".fifo";

/// A message received by a consumer that stopped before handing it out:
/// kept a moment for the next consumer of the queue (its receipt handle stays
/// valid), since a long poll cannot be taken back once it is sent.
#[derive(Debug)]
pub(crate) struct Orphan {
    pub(crate) message: aws_sdk_sqs::types::Message,
    pub(crate) url: String,
    /// When the receive that brought it was sent.
    pub(crate) received_at: tokio::time::Instant,
}

/// The two SDK clients of a connection: one for ordinary requests, one with
/// a time limit that leaves room for the long poll.
#[derive(Clone)]
pub(crate) struct Clients {
    pub(crate) ops: aws_sdk_sqs::Client,
    pub(crate) receive: aws_sdk_sqs::Client,
    /// What the requests of both clients said lately.
    pub(crate) health: Arc<HealthState>,
}

/// What `mq` knows about one queue.
#[derive(Debug)]
pub(crate) struct QueueInfo {
    /// The name as the application gives it.
    pub(crate) logical: String,
    /// The queue's URL.
    pub(crate) url: String,
    /// A FIFO queue.
    pub(crate) fifo: bool,
    /// The largest message SQS accepts here (body and attributes).
    pub(crate) max_size: usize,
    /// The queue named by the queue's own redrive policy, if it has one.
    pub(crate) redrive_target: Option<String>,
}

impl QueueInfo {
    /// The largest [`encoded_len`](mq_core::Message::encoded_len) accepted.
    pub(crate) fn limit(&self) -> usize {
        self.max_size.saturating_sub(RESERVED_FOR_ATTRIBUTES)
    }
}

type Slot = Arc<OnceCell<Arc<QueueInfo>>>;

/// Resolves and caches queues for one connection.
pub(crate) struct Queues {
    pub(crate) clients: Clients,
    pub(crate) config: Arc<SqsConfig>,
    cache: Mutex<HashMap<String, Slot>>,
    orphans: Mutex<HashMap<String, Vec<Orphan>>>,
    /// One permit per send in flight.
    sends: Semaphore,
    /// One permit per other request in flight (receives excepted): apart
    /// from sends, so acks never queue behind a burst of sends (on an
    /// emulator, a queue that is not drained makes every call slower).
    others: Semaphore,
    /// One permit per `ReceiveMessage` in flight, across consumers.
    receives: Semaphore,
}

/// Which request budget a call uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Budget {
    /// `SendMessage`/`SendMessageBatch`.
    Send,
    /// Deletes, visibility changes and queue management.
    Other,
    /// `ReceiveMessage` (long polls).
    Receive,
}

impl fmt::Debug for Queues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queues")
            .field("cached", &self.cache.lock().len())
            .finish_non_exhaustive()
    }
}

impl Queues {
    pub(crate) fn new(clients: Clients, config: Arc<SqsConfig>) -> Self {
        Queues {
            clients,
            sends: Semaphore::new(config.max_connections.max(1)),
            others: Semaphore::new(config.max_connections.max(1)),
            receives: Semaphore::new(config.max_connections.max(1)),
            config,
            cache: Mutex::new(HashMap::new()),
            orphans: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps `orphans` of `logical` for its next consumer.
    pub(crate) fn leave_orphans(&self, logical: &str, orphans: Vec<Orphan>) {
        self.orphans
            .lock()
            .entry(logical.to_owned())
            .or_default()
            .extend(orphans);
    }

    /// Takes up to `max` orphans of `logical`.
    pub(crate) fn claim_orphans(&self, logical: &str, max: usize) -> Vec<Orphan> {
        let mut all = self.orphans.lock();
        let Some(list) = all.get_mut(logical) else {
            return Vec::new();
        };
        let take = list.len().min(max);
        let claimed: Vec<Orphan> = list.drain(..take).collect();
        if list.is_empty() {
            all.remove(logical);
        }
        claimed
    }

    /// Waits for a request slot (`max_connections` per budget); hold it
    /// while the request runs.
    pub(crate) async fn permit(&self, budget: Budget) -> Option<SemaphorePermit<'_>> {
        let pool = match budget {
            Budget::Send => &self.sends,
            Budget::Other => &self.others,
            Budget::Receive => &self.receives,
        };
        // The semaphores are never closed, so this is always `Some`.
        pool.acquire().await.ok()
    }

    /// The SQS name of destination `logical`, validated.
    pub(crate) fn sqs_name(&self, logical: &str) -> Result<String> {
        let name = if self.config.fifo && !logical.ends_with(FIFO_SUFFIX) {
            format!("{logical}{FIFO_SUFFIX}")
        } else {
            logical.to_owned()
        };
        validate_name(&name)?;
        Ok(name)
    }

    /// The queue of destination `logical`: cached, else looked up, else
    /// created (with `create_queues`). Concurrent first uses share one lookup.
    pub(crate) async fn resolve(&self, logical: &str) -> Result<Arc<QueueInfo>> {
        let slot = self
            .cache
            .lock()
            .entry(logical.to_owned())
            .or_default()
            .clone();
        slot.get_or_try_init(|| self.load(logical)).await.cloned()
    }

    /// The cached queue of `logical`, if resolved already (no I/O).
    pub(crate) fn cached(&self, logical: &str) -> Option<Arc<QueueInfo>> {
        self.cache.lock().get(logical)?.get().cloned()
    }

    /// Forgets `info` (the queue is gone); a later resolution starts afresh.
    pub(crate) fn invalidate(&self, info: &Arc<QueueInfo>) {
        let mut cache = self.cache.lock();
        let same = cache
            .get(&info.logical)
            .and_then(|slot| slot.get())
            .is_some_and(|cached| Arc::ptr_eq(cached, info));
        if same {
            tracing::debug!(queue = %info.logical, "queue is gone; forgetting its URL");
            cache.remove(&info.logical);
        }
    }

    /// Handles an error of an operation on `info`: if the queue is gone,
    /// forgets it and tells whether resolving again may help.
    pub(crate) fn gone(&self, info: &Arc<QueueInfo>, err: &Error) -> bool {
        if err.kind() == ErrorKind::NotFound {
            self.invalidate(info);
            return self.config.create_queues;
        }
        false
    }

    async fn load(&self, logical: &str) -> Result<Arc<QueueInfo>> {
        let name = self.sqs_name(logical)?;
        let fifo = name.ends_with(FIFO_SUFFIX);
        let client = &self.clients.ops;
        let _request = self.permit(Budget::Other).await;
        let url = match client.get_queue_url().queue_name(&name).send().await {
            Ok(out) => out.queue_url().map(str::to_owned),
            Err(e) => {
                let err = error::sdk(e, "resolve queue", logical);
                if err.kind() != ErrorKind::NotFound {
                    return Err(err);
                }
                if !self.config.create_queues {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!("SQS queue `{name}` does not exist and create_queues is off"),
                    )
                    .with_backend(BACKEND)
                    .with_operation("resolve queue")
                    .with_destination(logical));
                }
                let mut create = client.create_queue().queue_name(&name);
                if fifo {
                    create = create.attributes(QueueAttributeName::FifoQueue, "true");
                }
                tracing::debug!(queue = %name, "creating SQS queue");
                let out = create
                    .send()
                    .await
                    .map_err(|e| error::sdk(e, "create queue", logical))?;
                out.queue_url().map(str::to_owned)
            }
        };
        let url = url.ok_or_else(|| {
            Error::new(
                ErrorKind::Broker,
                format!("SQS returned no URL for queue `{name}`"),
            )
            .with_backend(BACKEND)
            .with_destination(logical)
        })?;

        let attrs = client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::MaximumMessageSize)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(|e| error::sdk(e, "read queue attributes", logical))?;
        let attrs = attrs.attributes();
        let get = |n: QueueAttributeName| attrs.and_then(|a| a.get(&n)).map(String::as_str);
        let queue_max = get(QueueAttributeName::MaximumMessageSize)
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(DEFAULT_MAX_MESSAGE_SIZE)
            .max(MIN_MAX_MESSAGE_SIZE);
        let redrive_target = get(QueueAttributeName::RedrivePolicy).and_then(redrive_target);
        if let Some(target) = &redrive_target {
            tracing::debug!(queue = %name, %target, "queue has a redrive policy; dead letters go to its target");
        }
        Ok(Arc::new(QueueInfo {
            logical: logical.to_owned(),
            url,
            fifo,
            max_size: queue_max.min(self.config.max_message_size),
            redrive_target,
        }))
    }

    /// The URL of the existing queue of `logical`: cached, else looked up.
    /// Never creates the queue (statistics must not make one); a missing
    /// queue is `NotFound`.
    async fn existing_url(&self, logical: &str) -> Result<String> {
        if let Some(info) = self.cached(logical) {
            return Ok(info.url.clone());
        }
        let name = self.sqs_name(logical)?;
        let _request = self.permit(Budget::Other).await;
        let out = self
            .clients
            .ops
            .get_queue_url()
            .queue_name(&name)
            .send()
            .await
            .map_err(|e| error::sdk(e, "stats", logical))?;
        out.queue_url().map(str::to_owned).ok_or_else(|| {
            Error::new(
                ErrorKind::Broker,
                format!("SQS returned no URL for queue `{name}`"),
            )
            .with_backend(BACKEND)
            .with_destination(logical)
        })
    }

    /// The queue's approximate counts: visible (`depth`), received and not
    /// deleted (`in_flight`) and not yet visible (`delayed`). A queue that
    /// does not exist is `NotFound`; one deleted since it was cached is
    /// looked up once more (it may have been created again).
    pub(crate) async fn stats(&self, logical: &str) -> Result<QueueStats> {
        let mut url = self.existing_url(logical).await?;
        let mut looked_up_again = false;
        let out = loop {
            let request = self
                .clients
                .ops
                .get_queue_attributes()
                .queue_url(&url)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed);
            let result = {
                let _request = self.permit(Budget::Other).await;
                request.send().await
            };
            match result.map_err(|e| error::sdk(e, "stats", logical)) {
                Ok(out) => break out,
                Err(e) if e.kind() == ErrorKind::NotFound && !looked_up_again => {
                    if let Some(info) = self.cached(logical) {
                        self.invalidate(&info);
                    }
                    looked_up_again = true;
                    url = self.existing_url(logical).await?;
                }
                Err(e) => return Err(e),
            }
        };
        let attrs = out.attributes();
        let count = |n: QueueAttributeName| {
            attrs
                .and_then(|a| a.get(&n))
                .and_then(|v| v.parse::<u64>().ok())
        };
        let mut stats = QueueStats::default();
        stats.depth = count(QueueAttributeName::ApproximateNumberOfMessages);
        stats.in_flight = count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible);
        stats.delayed = count(QueueAttributeName::ApproximateNumberOfMessagesDelayed);
        Ok(stats)
    }

    /// Where dead letters of `logical` go: the target of the queue's redrive
    /// policy if the queue is resolved and has one, else `<name>-dlq`
    /// (`<name>-dlq.fifo` for a FIFO queue).
    pub(crate) fn dead_letter_destination(&self, logical: &str) -> String {
        if let Some(target) = self.cached(logical).and_then(|i| i.redrive_target.clone()) {
            return target;
        }
        default_dead_letter(logical)
    }

    /// Where the dead letters of a consumer of `info`'s queue go: the
    /// consumer's `dead_letter` option as given, unless it is unset or the
    /// plain default `<name>-dlq` (which is what `Client` fills in before the
    /// queue was resolved) and the queue has a redrive policy: then its target.
    pub(crate) fn consumer_dead_letter(info: &QueueInfo, option: Option<&str>) -> String {
        let default = default_dead_letter(&info.logical);
        match (option, &info.redrive_target) {
            (Some(given), _) if given != default => given.to_owned(),
            (_, Some(target)) => target.clone(),
            (_, None) => default,
        }
    }
}

/// `<name>-dlq`, or `<name>-dlq.fifo` for a FIFO queue `<name>.fifo` (with
/// `fifo=true` the suffix is added to the name anyway).
fn default_dead_letter(logical: &str) -> String {
    match logical.strip_suffix(FIFO_SUFFIX) {
        Some(base) => format!("{base}-dlq{FIFO_SUFFIX}"),
        None => format!("{logical}-dlq"),
    }
}

/// The queue name in a redrive policy's `deadLetterTargetArn`
/// (`arn:aws:sqs:REGION:ACCOUNT:NAME`).
fn redrive_target(policy: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(policy).ok()?;
    let arn = v.get("deadLetterTargetArn")?.as_str()?;
    let name = arn.rsplit(':').next()?;
    (!name.is_empty()).then(|| name.to_owned())
}

/// SQS queue name rules: 1 to 80 of `A-Za-z0-9-_`, plus `.fifo` for FIFO.
pub(crate) fn validate_name(name: &str) -> Result<()> {
    let base = name.strip_suffix(FIFO_SUFFIX).unwrap_or(name);
    let valid = !base.is_empty()
        && name.len() <= MAX_QUEUE_NAME
        && base
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(Error::config(format!(
            "`{name}` is not a valid SQS queue name: 1 to {MAX_QUEUE_NAME} characters of \
             A-Z, a-z, 0-9, - and _, with the suffix .fifo for a FIFO queue"
        ))
        .with_backend(BACKEND)
        .with_destination(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names() {
        for ok in [
            "jobs",
            "a-b_C9",
            "orders.fifo",
            &"x".repeat(80),
            &format!("{}.fifo", "y".repeat(75)),
        ] {
            validate_name(ok).expect(ok);
        }
        for bad in [
            "",
            ".fifo",
            "a.b",
            "has space",
            "é",
            &"x".repeat(81),
            "q.fifo.fifo",
            "q/1",
        ] {
            let err = validate_name(bad).expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::Config, "{bad}");
        }
    }

    #[test]
    fn redrive_policy_names_its_target() {
        assert_eq!(
            redrive_target(
                r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:123456789012:jobs-dead","maxReceiveCount":"5"}"#
            ),
            Some("jobs-dead".into())
        );
        assert_eq!(redrive_target("not json"), None);
        assert_eq!(redrive_target(r#"{"maxReceiveCount":5}"#), None);
    }

    fn info(logical: &str, redrive_target: Option<&str>) -> QueueInfo {
        QueueInfo {
            logical: logical.into(),
            url: String::new(),
            fifo: logical.ends_with(FIFO_SUFFIX),
            max_size: 1024 * 1024,
            redrive_target: redrive_target.map(str::to_owned),
        }
    }

    /// Item 3 (issue 14): the consumer's dead-letter option is used as
    /// given; the default (unset, or the plain `<name>-dlq` that `Client`
    /// fills in before the queue is resolved) yields to a redrive policy.
    #[test]
    fn consumer_dead_letter_destination() {
        let plain = info("jobs", None);
        assert_eq!(Queues::consumer_dead_letter(&plain, None), "jobs-dlq");
        assert_eq!(
            Queues::consumer_dead_letter(&plain, Some("jobs-dlq")),
            "jobs-dlq"
        );
        assert_eq!(
            Queues::consumer_dead_letter(&plain, Some("parking")),
            "parking"
        );
        let fifo = info("jobs.fifo", None);
        assert_eq!(Queues::consumer_dead_letter(&fifo, None), "jobs-dlq.fifo");
        let redriven = info("jobs", Some("jobs-dead"));
        assert_eq!(Queues::consumer_dead_letter(&redriven, None), "jobs-dead");
        assert_eq!(
            Queues::consumer_dead_letter(&redriven, Some("jobs-dlq")),
            "jobs-dead"
        );
        assert_eq!(
            Queues::consumer_dead_letter(&redriven, Some("x!y")),
            "x!y",
            "an explicit destination is taken as given"
        );
    }
}
