//! The connection state every other file shares: the SDK clients, the
//! request budgets, the cache of resolved queues and the messages stopped
//! consumers left behind. [`Core`] holds them; how a queue is resolved into
//! the cache is [`crate::topology`]'s business.
//!
//! [`SdkClients`] is public: code that calls SQS beside `mq` (the baseline
//! of `mq bench`) builds its clients exactly as `mq-sqs` does.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sqs::config::Credentials;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use mq_core::{Error, ErrorKind, Result};
use parking_lot::Mutex;
use tokio::sync::{OnceCell, Semaphore, SemaphorePermit};

use crate::config::{Endpoint, Fanout, SqsConfig, MAX_WAIT};
use crate::error::BACKEND;
use crate::health::{HealthInterceptor, HealthState};

/// The region an explicit endpoint uses when neither the URL nor the
/// environment names one (emulators accept any).
const EMULATOR_REGION: &str = "us-east-1";

/// Bytes of the queue's `MaximumMessageSize` kept for `mq`'s own attributes
/// (message id, content type, key, encodings): a message whose
/// [`encoded_len`](mq_core::Message::encoded_len) is within the rest is
/// accepted whatever its headers look like on the wire, short of base64.
pub const RESERVED_FOR_ATTRIBUTES: usize = 1024;

/// The two `aws-sdk-sqs` clients `mq-sqs` makes for an [`SqsConfig`]: one
/// for ordinary requests, one whose time limits leave room for the long poll.
#[derive(Debug, Clone)]
pub struct SdkClients {
    /// For every request but `ReceiveMessage`: each attempt within
    /// `timeout`.
    pub ops: aws_sdk_sqs::Client,
    /// For `ReceiveMessage`: each attempt within `wait` plus `timeout`.
    pub receive: aws_sdk_sqs::Client,
}

impl SdkClients {
    /// The clients `mq-sqs` uses for `config`, for code that calls SQS
    /// beside `mq` with the same settings (the baseline of `mq bench`):
    /// hyper + rustls (ring); the URL's static credentials, else the standard
    /// AWS chain; the URL's region, else the environment's, else
    /// `us-east-1` for an explicit endpoint; `connect_timeout`; standard
    /// retries with `max_attempts` (at least 1); each attempt within
    /// `timeout` (a receive's within `wait` plus `timeout`), the whole
    /// operation within every attempt plus 2 s of backoff each. No request
    /// is made. Without `mq-sqs`'s health tracking (see
    /// `Backend::health`), which only `mq-sqs`'s own clients feed.
    ///
    /// A `Config` error when `sqs://` (AWS's endpoint) finds no region.
    pub async fn build(config: &SqsConfig) -> Result<Self> {
        Ok(sdk_clients(config, None).await?.0)
    }
}

/// `shared` with a region: its own, else `us-east-1` for an explicit
/// endpoint; `sqs://` without one is a `Config` error.
fn with_region(shared: SdkConfig, config: &SqsConfig) -> Result<SdkConfig> {
    if shared.region().is_some() {
        return Ok(shared);
    }
    match config.endpoint {
        Endpoint::Url(_) => Ok(shared
            .into_builder()
            .region(Region::new(EMULATOR_REGION))
            .build()),
        Endpoint::Aws => Err(Error::config(
            "no AWS region: add ?region=eu-west-1 to the sqs:// URL or set AWS_REGION \
             (or a region in the AWS profile)",
        )
        .with_backend(BACKEND)),
    }
}

/// The SDK clients for `config` (see [`SdkClients::build`]) and the shared
/// settings they were made from (for the SNS client); every request of
/// both reports its outcome to `health`, if given.
async fn sdk_clients(
    config: &SqsConfig,
    health: Option<Arc<HealthState>>,
) -> Result<(SdkClients, SdkConfig)> {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let attempts = config.max_attempts.max(1);
    // Saturating: a config built by hand may hold any duration.
    let timeouts = |attempt: Duration| {
        TimeoutConfig::builder()
            .connect_timeout(mq_core::backend::time::clamp(config.connect_timeout))
            .operation_attempt_timeout(attempt)
            // Every attempt plus the SDK's backoff between them (at most 20 s each).
            .operation_timeout(mq_core::backend::time::clamp(
                attempt
                    .saturating_mul(attempts)
                    .saturating_add(Duration::from_secs(2).saturating_mul(attempts)),
            ))
            .build()
    };
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(RetryConfig::standard().with_max_attempts(attempts))
        .timeout_config(timeouts(config.request_timeout()));
    if let Some(region) = &config.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(c) = &config.credentials {
        loader = loader.credentials_provider(Credentials::new(
            c.access_key_id.clone(),
            c.secret_access_key.expose().to_owned(),
            c.session_token.as_ref().map(|t| t.expose().to_owned()),
            None,
            "mq-sqs-url",
        ));
    }
    if let Endpoint::Url(url) = &config.endpoint {
        loader = loader.endpoint_url(url.clone());
    }
    let shared = with_region(loader.load().await, config)?;
    let mut builder = aws_sdk_sqs::config::Builder::from(&shared);
    if let Some(health) = health {
        builder = builder.interceptor(HealthInterceptor(health));
    }
    let ops = builder.clone().build();
    // A receive waits up to `wait` before SQS answers: its attempts get that on top.
    let receive = builder
        .timeout_config(timeouts(
            config
                .wait
                .min(MAX_WAIT)
                .saturating_add(config.request_timeout()),
        ))
        .build();
    Ok((
        SdkClients {
            ops: aws_sdk_sqs::Client::from_conf(ops),
            receive: aws_sdk_sqs::Client::from_conf(receive),
        },
        shared,
    ))
}

/// The SDK clients of a connection and the health their requests report.
#[derive(Clone)]
pub(crate) struct Clients {
    /// For ordinary requests.
    pub(crate) ops: aws_sdk_sqs::Client,
    /// With a time limit that leaves room for the long poll.
    pub(crate) receive: aws_sdk_sqs::Client,
    /// The SNS client, with `fanout=sns` only: same settings as `ops`.
    pub(crate) sns: Option<aws_sdk_sns::Client>,
    /// What the requests of every client said lately.
    pub(crate) health: Arc<HealthState>,
}

impl Clients {
    async fn new(config: &SqsConfig) -> Result<Self> {
        let health = Arc::new(HealthState::default());
        let (SdkClients { ops, receive }, shared) =
            sdk_clients(config, Some(health.clone())).await?;
        let sns = (config.fanout == Fanout::Sns).then(|| {
            let conf = aws_sdk_sns::config::Builder::from(&shared)
                .interceptor(HealthInterceptor(health.clone()))
                .build();
            aws_sdk_sns::Client::from_conf(conf)
        });
        Ok(Clients {
            ops,
            receive,
            sns,
            health,
        })
    }
}

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

/// A cache entry: filled once by the first resolution, shared by concurrent ones.
pub(crate) type Slot = Arc<OnceCell<Arc<QueueInfo>>>;

/// What `mq` knows about the SNS topic of a destination (`fanout=sns`).
#[derive(Debug)]
pub(crate) struct TopicInfo {
    /// The destination as the application names it.
    pub(crate) logical: String,
    /// The topic's ARN.
    pub(crate) arn: String,
    /// A FIFO topic (`.fifo`).
    pub(crate) fifo: bool,
}

/// A cache entry of a topic.
pub(crate) type TopicSlot = Arc<OnceCell<Arc<TopicInfo>>>;

/// A cache entry of a subscription: set once the queue is subscribed.
pub(crate) type SubscriptionSlot = Arc<OnceCell<()>>;

/// The state of one connection, shared by its producers, consumers and
/// settlers.
pub(crate) struct Core {
    pub(crate) clients: Clients,
    pub(crate) config: Arc<SqsConfig>,
    cache: Mutex<HashMap<String, Slot>>,
    /// Topics by destination (`fanout=sns`).
    topics: Mutex<HashMap<String, TopicSlot>>,
    /// Subscribed queues (by queue name) and their destination (`fanout=sns`).
    subscriptions: Mutex<HashMap<String, (String, SubscriptionSlot)>>,
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

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("cached", &self.cache.lock().len())
            .finish_non_exhaustive()
    }
}

impl Core {
    /// The state of a connection as `config` says. No request is made yet.
    pub(crate) async fn connect(config: Arc<SqsConfig>) -> Result<Self> {
        let clients = Clients::new(&config).await?;
        Ok(Core {
            clients,
            sends: Semaphore::new(config.max_connections.max(1)),
            others: Semaphore::new(config.max_connections.max(1)),
            receives: Semaphore::new(config.max_connections.max(1)),
            config,
            cache: Mutex::new(HashMap::new()),
            topics: Mutex::new(HashMap::new()),
            subscriptions: Mutex::new(HashMap::new()),
            orphans: Mutex::new(HashMap::new()),
        })
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

    /// The cache entry of destination `logical`, made empty if there is none.
    pub(crate) fn slot(&self, logical: &str) -> Slot {
        self.cache
            .lock()
            .entry(logical.to_owned())
            .or_default()
            .clone()
    }

    /// The cached queue of `logical`, if resolved already (no I/O).
    pub(crate) fn cached(&self, logical: &str) -> Option<Arc<QueueInfo>> {
        self.cache.lock().get(logical)?.get().cloned()
    }

    /// The cache entry of the topic of `destination`, made empty if there is none.
    pub(crate) fn topic_slot(&self, destination: &str) -> TopicSlot {
        self.topics
            .lock()
            .entry(destination.to_owned())
            .or_default()
            .clone()
    }

    /// The cache entry of the subscription of `queue` to `destination`'s topic.
    pub(crate) fn subscription_slot(&self, queue: &str, destination: &str) -> SubscriptionSlot {
        self.subscriptions
            .lock()
            .entry(queue.to_owned())
            .or_insert_with(|| (destination.to_owned(), SubscriptionSlot::default()))
            .1
            .clone()
    }

    /// Forgets the topic `info` and every subscription to it (the topic is
    /// gone): the next use creates and subscribes again.
    pub(crate) fn forget_topic(&self, info: &Arc<TopicInfo>) {
        let mut topics = self.topics.lock();
        let same = topics
            .get(&info.logical)
            .and_then(|slot| slot.get())
            .is_some_and(|cached| Arc::ptr_eq(cached, info));
        if same {
            tracing::debug!(topic = %info.logical, "topic is gone; forgetting it and its subscriptions");
            topics.remove(&info.logical);
            self.subscriptions
                .lock()
                .retain(|_, (destination, _)| destination != &info.logical);
        }
    }

    /// Forgets that `queue` is subscribed (the queue is gone).
    pub(crate) fn forget_subscription(&self, queue: &str) {
        self.subscriptions.lock().remove(queue);
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
            // A queue made again is subscribed again.
            self.forget_subscription(&info.logical);
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
}
