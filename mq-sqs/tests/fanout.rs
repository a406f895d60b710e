//! Publish/subscribe through SNS (`fanout=sns`, README "Publish/subscribe
//! through SNS"): the topology `mq` makes (checked with boto3, as another
//! client sees it), groups each getting every message, group-less
//! consumers sharing the default queue, FIFO order per key through a FIFO
//! topic, headers past SQS's 10 attributes, and a replayed dead letter
//! reaching only its own group.
//!
//! Runs against `MQ_TEST_SQS_URL` (moto from `scripts/brokers.sh start
//! sqs` serves SNS on the same port) with `fanout=sns` added; says why and
//! passes when it is not set (the topology test also needs python3 with
//! boto3).

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::time::Duration;

use mq_core::url::RedactedUrl;
use mq_core::{headers, Consumer, DynConsumer, ErrorKind, Message, Producer, Registry};
use mq_sqs::{Endpoint, SqsConfig};

/// How long a message may take to arrive through SNS.
const ARRIVAL: Duration = Duration::from_secs(30);

/// The target URL with `fanout=sns`, or why the tests cannot run.
fn target() -> Result<String, String> {
    let url = std::env::var("MQ_TEST_SQS_URL")
        .map_err(|_| "MQ_TEST_SQS_URL is not set (scripts/brokers.sh start sqs)".to_owned())?;
    let separator = if url.contains('?') { '&' } else { '?' };
    Ok(format!("{url}{separator}fanout=sns"))
}

macro_rules! target_or_skip {
    ($what:literal) => {
        match target() {
            Ok(url) => url,
            Err(why) => {
                eprintln!(concat!("fanout ", $what, ": skipped ({})"), why);
                return;
            }
        }
    };
}

fn unique(base: &str) -> String {
    format!(
        "mqt-fanout-{base}-{}",
        &mq_core::message::new_message_id().replace('-', "")[20..]
    )
}

async fn client(url: &str) -> mq_core::Client {
    let mut registry = Registry::new();
    mq_sqs::register(&mut registry);
    registry.connect(url).await.expect("connect")
}

/// Receives and acks until `n` deliveries arrived or [`ARRIVAL`] passed;
/// returns (payload text, headers) in arrival order.
async fn drain(consumer: &mut DynConsumer, n: usize) -> Vec<(String, BTreeMap<String, String>)> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    while got.len() < n && tokio::time::Instant::now() < deadline {
        let batch = consumer
            .receive_batch(10, Duration::from_millis(500))
            .await
            .expect("receive");
        for d in batch {
            let headers = d
                .headers()
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            got.push((d.text().expect("text").to_owned(), headers));
            d.ack().await.expect("ack");
        }
    }
    got
}

/// Nothing more arrives within `wait`.
async fn nothing_more(consumer: &mut DynConsumer, wait: Duration) {
    let extra = consumer.receive_batch(10, wait).await.expect("receive");
    let texts: Vec<String> = extra
        .iter()
        .map(|d| d.text().unwrap_or("?").to_owned())
        .collect();
    assert!(texts.is_empty(), "unexpected deliveries: {texts:?}");
}

/// Runs `script` with boto3 clients `sns` and `sqs` for the target; its stdout.
fn boto3(url: &str, script: &str) -> Result<String, String> {
    let config = SqsConfig::from_url(&RedactedUrl::parse(url).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let Endpoint::Url(endpoint) = &config.endpoint else {
        return Err("MQ_TEST_SQS_URL is not an emulator endpoint".into());
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
    let prelude = "import boto3, json, os\n\
         kw = dict(endpoint_url=os.environ['EP'], region_name=os.environ['REGION'],\n\
           aws_access_key_id=os.environ['KEY'], aws_secret_access_key=os.environ['SECRET'])\n\
         sns = boto3.client('sns', **kw)\n\
         sqs = boto3.client('sqs', **kw)\n";
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!("{prelude}{script}"))
        .env("EP", endpoint)
        .env("REGION", config.region.as_deref().unwrap_or("us-east-1"))
        .env("KEY", key)
        .env("SECRET", secret)
        .output()
        .map_err(|e| format!("python3 is not available: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("No module named 'boto3'") {
            return Err("boto3 is not installed for python3".into());
        }
        panic!("boto3 script failed: {stderr}");
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The topic, its subscriptions, their raw delivery and the queue policies
/// are made once, however many clients, producers and consumers use them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_is_made_once_with_raw_delivery_and_a_policy_per_queue() {
    let url = target_or_skip!("topology");
    let dest = unique("topo");
    // Two connections, each with a producer and consumers of two groups.
    for round in 0..2 {
        let client = client(&url).await;
        let mut billing = client
            .consumer(&dest)
            .group("billing")
            .await
            .expect("billing");
        let audit = client.consumer(&dest).group("audit").await.expect("audit");
        let producer = client.producer().await.expect("producer");
        producer
            .send(&dest, Message::new(format!("round {round}")))
            .await
            .expect("send");
        let got = drain(&mut billing, 1).await;
        assert_eq!(got.len(), 1, "round {round}: billing got {got:?}");
        drop(audit);
    }
    let script = format!(
        "topic = sns.create_topic(Name='{dest}')['TopicArn']\n\
         subs = sns.list_subscriptions_by_topic(TopicArn=topic)['Subscriptions']\n\
         out = {{'topic': topic, 'subs': []}}\n\
         for s in subs:\n\
         \x20   a = sns.get_subscription_attributes(SubscriptionArn=s['SubscriptionArn'])['Attributes']\n\
         \x20   name = s['Endpoint'].split(':')[-1]\n\
         \x20   q = sqs.get_queue_url(QueueName=name)['QueueUrl']\n\
         \x20   p = sqs.get_queue_attributes(QueueUrl=q, AttributeNames=['Policy'])['Attributes'].get('Policy', '{{}}')\n\
         \x20   out['subs'].append({{'queue': name, 'protocol': s['Protocol'], 'raw': a.get('RawMessageDelivery'), 'policy': json.loads(p)}})\n\
         print(json.dumps(out))\n"
    );
    let out = match boto3(&url, &script) {
        Ok(out) => out,
        Err(why) => {
            eprintln!("fanout topology: skipped ({why})");
            return;
        }
    };
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json from boto3");
    let topic = v["topic"].as_str().expect("topic arn");
    let subs = v["subs"].as_array().expect("subscriptions");
    let mut queues: Vec<&str> = subs.iter().filter_map(|s| s["queue"].as_str()).collect();
    queues.sort_unstable();
    let mut expected = vec![
        dest.clone(),
        format!("{dest}__audit"),
        format!("{dest}__billing"),
    ];
    expected.sort_unstable();
    assert_eq!(
        queues, expected,
        "one subscription per group plus the default queue: {v}"
    );
    for s in subs {
        assert_eq!(s["protocol"], "sqs", "{s}");
        assert_eq!(s["raw"], "true", "raw message delivery: {s}");
        let statements = s["policy"]["Statement"].as_array().expect("a policy");
        let allowing: Vec<_> = statements
            .iter()
            .filter(|st| {
                st["Effect"] == "Allow"
                    && st["Action"] == "sqs:SendMessage"
                    && st["Principal"]["Service"] == "sns.amazonaws.com"
                    && st["Condition"]["ArnEquals"]["aws:SourceArn"] == topic
            })
            .collect();
        assert_eq!(
            allowing.len(),
            1,
            "one statement letting the topic send: {s}"
        );
    }
}

/// Two groups each get every message; group-less consumers share the
/// default queue's (each message to exactly one of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_each_get_every_message_and_groupless_consumers_share_one_copy() {
    let url = target_or_skip!("groups");
    const N: usize = 40;
    let dest = unique("groups");
    let client = client(&url).await;
    assert!(client.capabilities().pub_sub, "fanout=sns has groups");
    let mut billing = client
        .consumer(&dest)
        .group("billing")
        .await
        .expect("billing");
    let mut audit = client.consumer(&dest).group("audit").await.expect("audit");
    let mut p2p_a = client.consumer(&dest).await.expect("group-less a");
    let mut p2p_b = client.consumer(&dest).await.expect("group-less b");
    let producer = client.producer().await.expect("producer");
    // Half one by one (coalesced batches), half through send_batch.
    let sends = (0..N / 2).map(|i| producer.send(&dest, Message::new(format!("m{i}"))));
    for r in futures::future::join_all(sends).await {
        r.expect("send");
    }
    let report = producer
        .send_batch(
            &dest,
            (N / 2..N).map(|i| Message::new(format!("m{i}"))).collect(),
        )
        .await;
    assert!(report.is_ok(), "{report:?}");

    let expected: HashSet<String> = (0..N).map(|i| format!("m{i}")).collect();
    for (name, consumer) in [("billing", &mut billing), ("audit", &mut audit)] {
        let got = drain(consumer, N).await;
        let texts: HashSet<String> = got.iter().map(|(t, _)| t.clone()).collect();
        assert_eq!(got.len(), N, "{name}: {} deliveries", got.len());
        assert_eq!(texts, expected, "{name} got every message once");
    }
    // The two group-less consumers together: every message exactly once.
    let (a, b) = tokio::join!(drain(&mut p2p_a, N), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        drain(&mut p2p_b, 0).await
    });
    let mut all: Vec<String> = a.iter().chain(&b).map(|(t, _)| t.clone()).collect();
    let more = drain(&mut p2p_b, N.saturating_sub(all.len())).await;
    all.extend(more.into_iter().map(|(t, _)| t));
    all.sort_unstable();
    let mut want: Vec<String> = expected.into_iter().collect();
    want.sort_unstable();
    assert_eq!(all, want, "group-less consumers share one copy of each");
    nothing_more(&mut p2p_a, Duration::from_secs(2)).await;
    nothing_more(&mut billing, Duration::from_millis(500)).await;
}

/// A FIFO destination is a FIFO topic: each group gets each key's
/// messages in the order they were sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_topic_keeps_order_per_key_in_every_group() {
    let url = target_or_skip!("fifo");
    const PER_KEY: usize = 15;
    let dest = format!("{}.fifo", unique("fifo"));
    let client = client(&url).await;
    let mut groups = Vec::new();
    for g in ["one", "two"] {
        groups.push((g, client.consumer(&dest).group(g).await.expect("group")));
    }
    let producer = client.producer().await.expect("producer");
    let mut messages = Vec::new();
    for i in 0..PER_KEY {
        for key in ["k1", "k2", "k3"] {
            messages.push(Message::new(format!("{key}:{i}")).with_key(key));
        }
    }
    let report = producer.send_batch(&dest, messages).await;
    assert!(report.is_ok(), "{report:?}");
    for (g, consumer) in &mut groups {
        let got = drain(consumer, 3 * PER_KEY).await;
        assert_eq!(got.len(), 3 * PER_KEY, "group {g}");
        for key in ["k1", "k2", "k3"] {
            let order: Vec<usize> = got
                .iter()
                .filter_map(|(t, _)| t.strip_prefix(&format!("{key}:")))
                .map(|n| n.parse().expect("number"))
                .collect();
            assert_eq!(
                order,
                (0..PER_KEY).collect::<Vec<_>>(),
                "group {g}, key {key}"
            );
        }
    }
}

/// Headers past SNS's and SQS's 10 message attributes, a binary payload,
/// content type, key and id survive the topic (the `mq-headers` packing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_ten_headers_round_trip_through_the_topic() {
    let url = target_or_skip!("headers");
    let dest = unique("headers");
    let client = client(&url).await;
    let mut consumer = client.consumer(&dest).group("g").await.expect("consumer");
    let mut sent = Message::new(vec![0u8, 159, 146, 150, 255])
        .with_id("hdr-1")
        .with_key("k")
        .with_content_type("application/octet-stream")
        .with_header("empty", "")
        .with_header("bad name!", "x")
        .with_header("control", "a\u{1}b");
    for i in 0..15 {
        sent = sent.with_header(format!("h{i:02}"), format!("value {i} \u{e9}"));
    }
    client
        .producer()
        .await
        .expect("producer")
        .send(&dest, sent.clone())
        .await
        .expect("send");
    let d = tokio::time::timeout(ARRIVAL, consumer.receive())
        .await
        .expect("arrives")
        .expect("receive");
    assert_eq!(d.source(), dest, "the source is the destination");
    assert_eq!(d.group(), Some("g"));
    assert_eq!(
        d.to_message(),
        sent,
        "payload, id, key, content type and 18 headers"
    );
    d.ack().await.expect("ack");
}

/// A dead letter of one group, replayed to the destination, goes back to
/// that group's queue only; the other group does not see it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_dead_letter_reaches_only_its_group() {
    let url = target_or_skip!("replay");
    let dest = unique("replay");
    let client = client(&url).await;
    let mut billing = client
        .consumer(&dest)
        .group("billing")
        .await
        .expect("billing");
    let mut audit = client.consumer(&dest).group("audit").await.expect("audit");
    let producer = client.producer().await.expect("producer");
    producer
        .send(&dest, Message::new("fails in billing").with_id("dl-1"))
        .await
        .expect("send");
    assert_eq!(drain(&mut audit, 1).await.len(), 1, "audit handles it");
    let d = tokio::time::timeout(ARRIVAL, billing.receive())
        .await
        .expect("arrives")
        .expect("receive");
    d.dead_letter("billing failed").await.expect("dead letter");

    let dlq = client.dead_letter_destination(&dest);
    assert_eq!(dlq, format!("{dest}-dlq"), "groups share the destination's");
    let mut dead = client.consumer(&dlq).await.expect("dlq consumer");
    let dl = tokio::time::timeout(ARRIVAL, dead.receive())
        .await
        .expect("dead letter arrives")
        .expect("receive");
    assert_eq!(
        dl.headers().get(headers::ORIGINAL_SOURCE),
        Some(dest.as_str())
    );
    assert_eq!(dl.headers().get(headers::ORIGINAL_GROUP), Some("billing"));
    producer
        .send(&dest, mq_core::backend::republish::replay_copy(&dl))
        .await
        .expect("replay");
    dl.ack().await.expect("ack dead letter");

    let again = drain(&mut billing, 1).await;
    assert_eq!(again.len(), 1, "billing gets the replay");
    assert_eq!(
        again[0].1.get(headers::REPLAYED).map(String::as_str),
        Some("1")
    );
    nothing_more(&mut audit, Duration::from_secs(3)).await;
}

/// SNS has no per-message delay: a delayed send is refused before anything
/// is published; groups need `fanout=sns`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_are_refused_and_groups_need_the_option() {
    let url = target_or_skip!("capabilities");
    let client = client(&url).await;
    assert!(!client.capabilities().delayed_delivery);
    let err = client
        .producer()
        .await
        .expect("producer")
        .send(
            &unique("delay"),
            Message::new("x").with_delay(Duration::from_secs(2)),
        )
        .await
        .expect_err("no delay through SNS");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");

    let plain_url = std::env::var("MQ_TEST_SQS_URL").expect("set");
    let plain = self::client(&plain_url).await;
    let err = plain
        .consumer(unique("nogroups"))
        .group("g")
        .await
        .expect_err("groups need fanout=sns");
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.to_string().contains("fanout=sns"), "{err}");
}

/// What `fanout=sns` costs a producer: 1000 messages of 100 bytes through
/// `send_batch` (10 per call, up to `send_concurrency` calls at once) to a
/// plain queue and to a topic (whose default queue gets them), then drained
/// with one group-less consumer. Prints msgs/s both ways (the README's
/// table); run with `cargo test -p mq-sqs --test fanout -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run on demand, see the README"]
async fn send_batch_throughput_with_and_without_fanout() {
    let fanout_url = target_or_skip!("throughput");
    let plain_url = std::env::var("MQ_TEST_SQS_URL").expect("set");
    const N: usize = 1000;
    for (mode, url) in [
        ("direct SQS", plain_url.as_str()),
        ("fanout=sns", fanout_url.as_str()),
    ] {
        let client = client(url).await;
        let dest = unique("bench");
        let producer = client.producer().await.expect("producer");
        // Topology first (not part of the rate): one message.
        producer
            .send(&dest, Message::new("warm-up"))
            .await
            .expect("warm-up");
        let messages: Vec<Message> = (0..N).map(|_| Message::new(vec![b'x'; 100])).collect();
        let start = std::time::Instant::now();
        let report = producer.send_batch(&dest, messages).await;
        let sent = start.elapsed();
        assert!(report.is_ok(), "{mode}: {report:?}");
        let mut consumer = client
            .consumer(&dest)
            .prefetch(100)
            .await
            .expect("consumer");
        let start = std::time::Instant::now();
        let got = drain(&mut consumer, N + 1).await;
        let drained = start.elapsed();
        assert_eq!(got.len(), N + 1, "{mode}: every message arrives");
        eprintln!(
            "throughput {mode}: send_batch of {N}: {:.0} msgs/s ({:.2} s); drained in {:.2} s",
            N as f64 / sent.as_secs_f64(),
            sent.as_secs_f64(),
            drained.as_secs_f64()
        );
    }
}
