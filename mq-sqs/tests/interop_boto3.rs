//! Interoperability with boto3 (DESIGN.md §2, §4a): a message boto3 sends
//! with message attributes is received by `mq` with them as headers, and
//! the headers of a message `mq` sends are message attributes to boto3.
//!
//! Runs against `MQ_TEST_SQS_URL` (an `sqs+http://KEY:SECRET@HOST:PORT`
//! emulator, e.g. moto from `scripts/brokers.sh start sqs`) with `python3`
//! and boto3; says why and passes when either is missing.

use std::process::Command;
use std::time::Duration;

use mq_core::url::RedactedUrl;
use mq_core::{Consumer, Message, Producer, Registry};
use mq_sqs::{Endpoint, SqsConfig};

/// The target URL and the pieces boto3 needs, or why the test cannot run.
fn target() -> Result<(String, SqsConfig), String> {
    let url = std::env::var("MQ_TEST_SQS_URL")
        .map_err(|_| "MQ_TEST_SQS_URL is not set (scripts/brokers.sh start sqs)".to_owned())?;
    let config = SqsConfig::from_url(&RedactedUrl::parse(&url).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    if !matches!(config.endpoint, Endpoint::Url(_)) {
        return Err("MQ_TEST_SQS_URL is not an emulator endpoint".into());
    }
    let boto3 = Command::new("python3")
        .args(["-c", "import boto3"])
        .output()
        .map_err(|e| format!("python3 is not available: {e}"))?;
    if !boto3.status.success() {
        return Err("boto3 is not installed for python3".into());
    }
    Ok((url, config))
}

/// Runs `script` with a boto3 client `c` for the target; returns its stdout.
fn boto3(config: &SqsConfig, script: &str) -> String {
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
    let prelude = "import boto3, json, os, sys\n\
         c = boto3.client('sqs', endpoint_url=os.environ['EP'], region_name=os.environ['REGION'],\n\
         aws_access_key_id=os.environ['KEY'], aws_secret_access_key=os.environ['SECRET'])\n";
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!("{prelude}{script}"))
        .env("EP", endpoint)
        .env("REGION", config.region.as_deref().unwrap_or("us-east-1"))
        .env("KEY", key)
        .env("SECRET", secret)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "boto3 script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn unique(base: &str) -> String {
    format!(
        "mqt-interop-{base}-{}",
        &mq_core::message::new_message_id().replace('-', "")[20..]
    )
}

async fn client(url: &str) -> mq_core::Client {
    let mut registry = Registry::new();
    mq_sqs::register(&mut registry);
    registry.connect(url).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_sends_mq_receives_attributes_as_headers() {
    let (url, config) = match target() {
        Ok(t) => t,
        Err(why) => {
            eprintln!("interop boto3 -> mq: skipped ({why})");
            return;
        }
    };
    let queue = unique("from-boto3");
    boto3(
        &config,
        &format!(
            "q = c.create_queue(QueueName='{queue}')['QueueUrl']\n\
             c.send_message(QueueUrl=q, MessageBody='hello from boto3 \u{e9}', MessageAttributes={{\n\
               'Author': {{'DataType': 'String', 'StringValue': 'ada'}},\n\
               'traceparent': {{'DataType': 'String', 'StringValue': '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'}},\n\
               'count': {{'DataType': 'Number', 'StringValue': '42'}},\n\
               'blob': {{'DataType': 'Binary', 'BinaryValue': bytes([1, 2, 3])}},\n\
               'unicode': {{'DataType': 'String', 'StringValue': 'caf\u{e9} \u{2713}'}},\n\
             }})\n"
        ),
    );

    let client = client(&url).await;
    let mut consumer = client.consumer(&queue).await.expect("consumer");
    let d = tokio::time::timeout(Duration::from_secs(30), consumer.receive())
        .await
        .expect("a delivery within 30s")
        .expect("receive");
    assert_eq!(d.text().expect("text"), "hello from boto3 \u{e9}");
    let h = d.headers();
    assert_eq!(h.get("Author"), Some("ada"));
    assert_eq!(
        h.get("traceparent"),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert_eq!(h.get("count"), Some("42"));
    assert_eq!(
        h.get("blob"),
        Some("AQID"),
        "Binary values arrive in base64"
    );
    assert_eq!(h.get("unicode"), Some("caf\u{e9} \u{2713}"));
    assert_eq!(d.attempt(), 1);
    assert!(!d.id().is_empty(), "the SQS MessageId stands in for the id");
    d.ack().await.expect("ack");
    consumer.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mq_sends_boto3_receives_headers_as_attributes() {
    let (url, config) = match target() {
        Ok(t) => t,
        Err(why) => {
            eprintln!("interop mq -> boto3: skipped ({why})");
            return;
        }
    };
    let queue = unique("to-boto3");
    let client = client(&url).await;
    let producer = client.producer().await.expect("producer");
    let mut message = Message::new("hello from mq")
        .with_id("order-42")
        .with_content_type("text/plain")
        .with_header("tenant", "acme")
        .with_header("X-Mixed-Case", "Value")
        .with_header("empty", "");
    // More headers than SQS has attribute slots: the rest travel in mq-headers.
    for i in 0..12 {
        message = message.with_header(format!("h{i:02}"), format!("v{i}"));
    }
    producer.send(&queue, message).await.expect("send");

    let out = boto3(
        &config,
        &format!(
            "q = c.get_queue_url(QueueName='{queue}')['QueueUrl']\n\
             r = c.receive_message(QueueUrl=q, MaxNumberOfMessages=1, WaitTimeSeconds=10, MessageAttributeNames=['All'])\n\
             m = r['Messages'][0]\n\
             c.delete_message(QueueUrl=q, ReceiptHandle=m['ReceiptHandle'])\n\
             attrs = {{k: v.get('StringValue') for k, v in m.get('MessageAttributes', {{}}).items()}}\n\
             print(json.dumps({{'body': m['Body'], 'attributes': attrs}}))\n"
        ),
    );
    let got: serde_json::Value = serde_json::from_str(out.trim()).expect("json from boto3");
    assert_eq!(got["body"], "hello from mq");
    let attrs = got["attributes"].as_object().expect("attributes");
    assert!(attrs.len() <= 10, "SQS allows 10 attributes: {attrs:?}");
    assert_eq!(attrs["mq-message-id"], "order-42");
    assert_eq!(attrs["mq-content-type"], "text/plain");
    assert_eq!(attrs["X-Mixed-Case"], "Value");
    assert_eq!(attrs["h00"], "v0");
    // Everything else, including the empty header SQS would refuse, is in mq-headers.
    let packed: serde_json::Value =
        serde_json::from_str(attrs["mq-headers"].as_str().expect("mq-headers")).expect("json");
    assert_eq!(packed["empty"], "");
    assert_eq!(packed["tenant"], "acme");
    assert_eq!(packed["h11"], "v11");
}

/// Defect 6c (issue 14): a peer controls every attribute. Extreme values
/// (timestamps, counts and not-before times past any calendar, a 38-digit
/// Number, a 200 KB String, non-UTF-8 Binary, a bogus `mq-headers` and
/// `mq-body-encoding`) are received as headers, with the broker's own
/// attempt count and timestamp, and settled: no panic, no stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_peer_with_extreme_attributes_is_received() {
    let (url, config) = match target() {
        Ok(t) => t,
        Err(why) => {
            eprintln!("interop boto3 extreme attributes: skipped ({why})");
            return;
        }
    };
    let queue = unique("extreme");
    boto3(
        &config,
        &format!(
            "q = c.create_queue(QueueName='{queue}')['QueueUrl']\n\
             huge = '9' * 30\n\
             c.send_message(QueueUrl=q, MessageBody='!!! not base64 !!!', MessageAttributes={{\n\
               'mq-sent-at': {{'DataType': 'String', 'StringValue': huge}},\n\
               'mq-attempt': {{'DataType': 'String', 'StringValue': '18446744073709551616'}},\n\
               'mq-not-before': {{'DataType': 'Number', 'StringValue': huge}},\n\
               'mq-body-encoding': {{'DataType': 'String', 'StringValue': 'base64'}},\n\
               'mq-headers': {{'DataType': 'String', 'StringValue': '{{\"broken\": '}},\n\
               'big': {{'DataType': 'Number', 'StringValue': '9' * 38}},\n\
               'blob': {{'DataType': 'Binary', 'BinaryValue': bytes(range(256))}},\n\
               'wide': {{'DataType': 'String', 'StringValue': 'w' * 200000}},\n\
             }})\n"
        ),
    );

    let client = client(&url).await;
    let mut consumer = client.consumer(&queue).await.expect("consumer");
    let d = tokio::time::timeout(Duration::from_secs(30), consumer.receive())
        .await
        .expect("a delivery within 30s")
        .expect("receive");
    assert_eq!(
        d.payload().as_ref(),
        b"!!! not base64 !!!",
        "a body that is not base64 is delivered as it is"
    );
    assert_eq!(d.attempt(), 1, "the attempt is SQS's receive count");
    let sent = d.timestamp().expect("SQS's SentTimestamp");
    let age = std::time::SystemTime::now()
        .duration_since(sent)
        .unwrap_or_default();
    assert!(age < Duration::from_secs(3600), "sent {age:?} ago");
    let h = d.headers();
    assert_eq!(h.get("mq-sent-at"), Some("9".repeat(30).as_str()));
    assert_eq!(h.get("mq-attempt"), Some("18446744073709551616"));
    assert_eq!(h.get("big"), Some("9".repeat(38).as_str()));
    assert_eq!(h.get("wide").map(str::len), Some(200_000));
    assert_eq!(
        h.get("mq-headers"),
        Some("{\"broken\": "),
        "not ours after all: kept as a header"
    );
    let blob: Vec<u8> = (0..=255).collect();
    assert_eq!(
        h.get("blob"),
        Some(aws_smithy_types::base64::encode(&blob).as_str())
    );
    d.nack_after(Duration::MAX)
        .await
        .expect("a delay past SQS's limit is clamped");
    consumer.close().await.expect("close");
}
