//! Failure paths against an SQS emulator (issue 14): dead letters that are
//! too large or cannot be written, `nack_after(Duration::MAX)`, and configs
//! with extreme durations.
//!
//! Runs against `MQ_TEST_SQS_URL` (an `sqs+http://KEY:SECRET@HOST:PORT`
//! emulator, e.g. moto from `scripts/brokers.sh start sqs`); says why and
//! passes when it is not set. Queues are created with the SDK directly where
//! a test needs queue attributes `mq` does not set.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use mq_core::observe::names;
use mq_core::url::RedactedUrl;
use mq_core::{headers, Client, Consumer, Delivery, ErrorKind, Message, Producer};
use mq_sqs::{Endpoint, SqsBackend, SqsConfig};

/// How long a test waits for a delivery it expects.
const WAIT: Duration = Duration::from_secs(30);

/// The emulator's URL and config, or why the test cannot run.
fn target() -> Result<(String, SqsConfig), String> {
    let url = std::env::var("MQ_TEST_SQS_URL")
        .map_err(|_| "MQ_TEST_SQS_URL is not set (scripts/brokers.sh start sqs)".to_owned())?;
    let config = SqsConfig::from_url(&RedactedUrl::parse(&url).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    if !matches!(config.endpoint, Endpoint::Url(_)) {
        return Err("MQ_TEST_SQS_URL is not an emulator endpoint".into());
    }
    Ok((url, config))
}

macro_rules! target_or_skip {
    ($test:literal) => {
        match target() {
            Ok(t) => t,
            Err(why) => {
                eprintln!("{}: skipped ({why})", $test);
                return;
            }
        }
    };
}

/// A plain SDK client for the emulator (to create queues with attributes
/// and look at queue counts).
fn sdk(config: &SqsConfig) -> aws_sdk_sqs::Client {
    let Endpoint::Url(endpoint) = &config.endpoint else {
        panic!("emulator endpoint expected");
    };
    let (key, secret) = config
        .credentials
        .as_ref()
        .map(|c| {
            (
                c.access_key_id.clone(),
                c.secret_access_key.expose().to_owned(),
            )
        })
        .unwrap_or_else(|| ("test".into(), "test".into()));
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let conf = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new(
            config.region.clone().unwrap_or_else(|| "us-east-1".into()),
        ))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            key, secret, None, None, "test",
        ))
        .http_client(http)
        .build();
    aws_sdk_sqs::Client::from_conf(conf)
}

async fn create_queue(sdk: &aws_sdk_sqs::Client, name: &str, max_size: u32) -> String {
    sdk.create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::MaximumMessageSize, max_size.to_string())
        .send()
        .await
        .expect("create queue")
        .queue_url()
        .expect("queue url")
        .to_owned()
}

async fn delete_queues(sdk: &aws_sdk_sqs::Client, names: &[&str]) {
    for name in names {
        if let Ok(out) = sdk.get_queue_url().queue_name(*name).send().await {
            if let Some(url) = out.queue_url() {
                let _ = sdk.delete_queue().queue_url(url).send().await;
            }
        }
    }
}

fn unique(base: &str) -> String {
    format!(
        "mqt-fail-{base}-{}",
        &mq_core::message::new_message_id().replace('-', "")[20..]
    )
}

async fn client(url: &str) -> Client {
    let mut registry = mq_core::Registry::new();
    mq_sqs::register(&mut registry);
    registry.connect(url).await.expect("connect")
}

async fn receive(consumer: &mut Box<dyn Consumer>, what: &str) -> Delivery {
    tokio::time::timeout(WAIT, consumer.receive())
        .await
        .unwrap_or_else(|_| panic!("{what} within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The process-wide metrics recorder of this test binary.
fn metrics() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this binary");
        snapshotter
    })
}

/// The value of counter `name` whose `source` label is `source`.
fn counter(name: &str, source: &str) -> u64 {
    metrics()
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| {
            key.key().name() == name
                && key
                    .key()
                    .labels()
                    .any(|l| l.key() == "source" && l.value() == source)
        })
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum()
}

/// Defect 4 (issue 14): a dead letter that does not fit its queue's
/// MaximumMessageSize once the reason is added was refused (`TooLarge`), the
/// message made visible again and dead-lettered again: a loop. The copy is
/// now cut to fit (reason first, `mq-truncated` says how much) and arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_copy_is_cut_to_fit_a_small_dead_letter_queue() {
    let (url, config) = target_or_skip!("dead_letter_copy_is_cut_to_fit_a_small_dead_letter_queue");
    let sdk = sdk(&config);
    let source = unique("cut");
    let dlq = format!("{source}-dlq");
    create_queue(&sdk, &source, 2048).await;
    create_queue(&sdk, &dlq, 2048).await;

    let client = client(&url).await;
    let producer = client.producer().await.expect("producer");
    // Near the limit: about the most mq sends to a 2 KiB queue (it keeps
    // 1 KiB of a queue's size for its own attributes).
    let payload = "p".repeat(900);
    producer
        .send(
            &source,
            Message::new(payload.clone())
                .with_id("cut-1")
                .with_header("tenant", "acme"),
        )
        .await
        .expect("send");
    let mut consumer = client.consumer(&source).await.expect("consumer");
    let d = receive(&mut consumer, "the message").await;
    let reason = "the handler said: ".to_owned() + &"no! ".repeat(1500);
    d.dead_letter(reason.clone())
        .await
        .expect("the dead letter is cut to fit, not refused");

    let mut dead = client.consumer(&dlq).await.expect("dlq consumer");
    let got = receive(&mut dead, "the dead letter").await;
    assert_eq!(got.id(), "cut-1");
    assert_eq!(got.text().expect("text"), payload, "payload untouched");
    let h = got.headers();
    assert_eq!(h.get("tenant"), Some("acme"));
    assert_eq!(h.get(headers::ORIGINAL_SOURCE), Some(source.as_str()));
    let kept = h.get(headers::DEAD_LETTER_REASON).expect("reason");
    assert!(
        reason.starts_with(kept) && kept.len() < reason.len(),
        "the reason is cut: {} of {} bytes",
        kept.len(),
        reason.len()
    );
    let removed: usize = h
        .get(headers::TRUNCATED)
        .expect("mq-truncated")
        .parse()
        .expect("a byte count");
    assert!(removed >= reason.len() - kept.len(), "{removed}");
    got.ack().await.expect("ack");

    // Nothing left behind in the source queue.
    let rest = consumer
        .receive_batch(10, Duration::from_secs(2))
        .await
        .expect("receive");
    assert!(rest.is_empty(), "the original was deleted");
    consumer.close().await.expect("close");
    dead.close().await.expect("close");
    delete_queues(&sdk, &[&source, &dlq]).await;
}

/// Defect 4 and item 3 (issue 14): a dead letter to a destination that
/// cannot be written (here the consumer's `dead_letter` option names a queue
/// SQS refuses) returns the message to its queue (visibility 0) and the
/// settlement returns the error, at once, counted and shown in health; it was
/// ignored before (dead letters went to `<queue>-dlq` whatever the option).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_that_cannot_be_written_returns_the_message() {
    let (url, config) = target_or_skip!("dead_letter_that_cannot_be_written_returns_the_message");
    metrics();
    let sdk = sdk(&config);
    let client = client(&url).await;
    let producer = client.producer().await.expect("producer");
    for (i, unwritable) in ["x".repeat(100), "no!such-queue".to_owned()]
        .into_iter()
        .enumerate()
    {
        let source = unique("unwritable");
        let id = format!("keep-{i}");
        producer
            .send(&source, Message::new("keep me").with_id(id.clone()))
            .await
            .expect("send");
        let mut consumer = client
            .consumer(&source)
            .dead_letter(unwritable.clone())
            .await
            .expect("consumer");
        let d = receive(&mut consumer, "the message").await;
        let started = Instant::now();
        let err = d
            .dead_letter("poison")
            .await
            .expect_err("the dead letter cannot be written");
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "bounded: {:?}",
            started.elapsed()
        );

        let again = receive(&mut consumer, "the returned message").await;
        assert_eq!(again.id(), id, "the message came back");
        assert_eq!(again.attempt(), 2);
        let health = consumer.health();
        let last = health.last_error.unwrap_or_default();
        assert!(
            last.contains("dead letter") && last.contains(&source),
            "health says so: {last}"
        );
        assert!(counter(names::DEAD_LETTER_ERRORS, &source) >= 1, "counted");
        again.ack().await.expect("ack");
        consumer.close().await.expect("close");
        // Nothing went to the default dead-letter queue.
        assert!(
            sdk.get_queue_url()
                .queue_name(format!("{source}-dlq"))
                .send()
                .await
                .is_err(),
            "no {source}-dlq was used"
        );
        delete_queues(&sdk, &[&source]).await;
    }
}

/// Defect 6c (issue 14): `nack_after(Duration::MAX)` was refused with
/// `Unsupported`; it is now clamped to SQS's 12-hour visibility limit: the
/// message stays hidden and is not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_after_duration_max_hides_the_message_for_12_hours() {
    let (url, config) = target_or_skip!("nack_after_duration_max_hides_the_message_for_12_hours");
    let sdk = sdk(&config);
    let client = client(&url).await;
    let source = unique("nack-max");
    let producer = client.producer().await.expect("producer");
    producer
        .send(&source, Message::new("much later").with_id("later-1"))
        .await
        .expect("send");
    let mut consumer = client.consumer(&source).await.expect("consumer");
    let d = receive(&mut consumer, "the message").await;
    d.nack_after(Duration::MAX)
        .await
        .expect("clamped to 12 h, not refused");
    let soon = consumer
        .receive_batch(10, Duration::from_secs(3))
        .await
        .expect("receive");
    assert!(soon.is_empty(), "hidden, not redelivered");
    let stats = client.stats(&source, None).await.expect("stats");
    assert_eq!(stats.in_flight, Some(1), "still in the queue, hidden");
    consumer.close().await.expect("close");
    delete_queues(&sdk, &[&source]).await;
}

/// Defect 6c (issue 14): a config built by hand may hold any duration;
/// `Duration::MAX` timeouts, visibility and linger panicked (`Duration * n`,
/// `Instant + d`) when connecting or receiving. They are clamped now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_built_config_with_extreme_durations_works() {
    let (_, mut config) = target_or_skip!("hand_built_config_with_extreme_durations_works");
    let sdk = sdk(&config);
    config.timeout = Duration::MAX;
    config.connect_timeout = Duration::MAX;
    config.visibility_timeout = Duration::MAX;
    config.wait = Duration::MAX;
    config.linger = Duration::MAX;
    let client = Client::new(SqsBackend::connect(config).await.expect("connect"));
    let source = unique("extreme");
    let producer = client.producer().await.expect("producer");
    // Ten at once fill a batch, so the (clamped) linger is never waited out.
    let sends = (0..10).map(|i| producer.send(&source, Message::new(format!("m{i}"))));
    for result in futures::future::join_all(sends).await {
        result.expect("send");
    }
    let mut consumer = client.consumer(&source).await.expect("consumer");
    for _ in 0..10 {
        receive(&mut consumer, "a message")
            .await
            .ack()
            .await
            .expect("ack");
    }
    consumer.close().await.expect("close");
    delete_queues(&sdk, &[&source]).await;
}

/// Defect 2 (issue 14), as far as moto shows it: moto drops a FIFO message
/// whose `MessageDeduplicationId` equals that of a message still in the
/// queue (AWS: of any message sent in the last 5 minutes, deleted or not).
/// A redrive (`mq dlq --redrive`: send the replay copy, then ack the dead
/// letter) whose copy fails again and is dead-lettered before the redrive's
/// ack used to send that second dead letter with the first one's id: it was
/// dropped, the first then acked, and the message was gone. Every copy now
/// has its own deduplication id; the `mq` id stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_redrive_and_second_dead_letter_keep_the_message() {
    let (url, config) = target_or_skip!("fifo_redrive_and_second_dead_letter_keep_the_message");
    let sdk = sdk(&config);
    let fifo_url = if url.contains('?') {
        format!("{url}&fifo=true")
    } else {
        format!("{url}?fifo=true")
    };
    let client = client(&fifo_url).await;
    let source = unique("fifo");
    let dlq = format!("{source}-dlq");
    let producer = client.producer().await.expect("producer");
    producer
        .send(
            &source,
            Message::new("order").with_id("f-1").with_key("customer-7"),
        )
        .await
        .expect("send");
    let mut consumer = client.consumer(&source).await.expect("consumer");
    receive(&mut consumer, "the message")
        .await
        .dead_letter("first")
        .await
        .expect("first dead letter");

    // The redrive: take the dead letter, send its replay copy back...
    let mut dead = client.consumer(&dlq).await.expect("dlq consumer");
    let first = receive(&mut dead, "the first dead letter").await;
    assert_eq!(first.id(), "f-1");
    producer
        .send(&source, mq_core::republish::replay_copy(&first))
        .await
        .expect("redrive");
    // ...which fails again and is dead-lettered before the redrive acks.
    let replayed = receive(&mut consumer, "the replayed message").await;
    assert_eq!(replayed.id(), "f-1");
    replayed
        .dead_letter("second")
        .await
        .expect("second dead letter");
    first
        .ack()
        .await
        .expect("the redrive acks the first dead letter");

    let second = receive(&mut dead, "the second dead letter").await;
    assert_eq!(second.id(), "f-1", "the same mq id");
    assert_eq!(second.key(), Some("customer-7"));
    assert_eq!(
        second.headers().get(headers::DEAD_LETTER_REASON),
        Some("second")
    );
    assert_eq!(
        second.headers().get(headers::PREVIOUS_REASONS),
        Some("first")
    );
    second.ack().await.expect("ack");
    consumer.close().await.expect("close");
    dead.close().await.expect("close");
    delete_queues(&sdk, &[&format!("{source}.fifo"), &format!("{dlq}.fifo")]).await;
}
