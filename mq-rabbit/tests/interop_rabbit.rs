//! Interoperability with a native AMQP client (pika, Python): what pika
//! sends `mq` receives with headers and properties intact, and the reverse;
//! `mq` consumes a queue another application declared, as it is; and a pika
//! RPC client gets its reply from an `mq` responder over direct reply-to.
//!
//! Needs `MQ_TEST_RABBIT_URL` (from `scripts/brokers.sh start rabbit`) and
//! `python3`; pika is installed with `python3 -m pip install pika` when it
//! is missing. Without the URL the test says why it skips and passes.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use mq_core::{Consumer, Message, Producer};

const BODY: &str = "payload \u{e9}\u{fc} \0 end";
const HEADERS: [(&str, &str); 4] = [
    ("X-Mixed-Case", "Value"),
    ("unicode", "caf\u{e9} \u{2713}"),
    ("empty", ""),
    ("tenant", "acme"),
];

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop_rabbit_pika.py")
}

fn has_pika() -> bool {
    Command::new("python3")
        .args(["-c", "import pika"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn ensure_pika() {
    if has_pika() {
        return;
    }
    eprintln!("interop_rabbit: installing pika with pip");
    let out = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "pika"])
        .output()
        .expect("python3 must be installed for the RabbitMQ interop test");
    assert!(
        has_pika(),
        "pika is missing and `python3 -m pip install pika` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the pika script in `mode` against `queue` (blocking, in a thread).
async fn pika(mode: &'static str, url: &str, queue: &str) {
    let (url, queue) = (url.to_owned(), queue.to_owned());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script())
            .args([mode, &url, &queue])
            .output()
    })
    .await
    .expect("pika task")
    .expect("run python3");
    assert!(
        out.status.success(),
        "pika {mode} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn unique(base: &str) -> String {
    format!(
        "mqt-interop-{base}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

fn url_with(url: &str, option: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{option}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_and_mq_interoperate() {
    let Ok(url) = std::env::var("MQ_TEST_RABBIT_URL") else {
        eprintln!(
            "interop_rabbit: skipped: MQ_TEST_RABBIT_URL is not set (start RabbitMQ with scripts/brokers.sh start rabbit)"
        );
        return;
    };
    ensure_pika();
    let client = mq_rabbit::connect(&url).await.expect("connect");

    // pika -> mq: pika publishes to the destination's queue (declared by mq's consumer).
    let dest = unique("from-pika");
    let mut consumer = client.consumer(&dest).await.expect("consumer");
    pika("publish", &url, &dest).await;
    let d = tokio::time::timeout(Duration::from_secs(30), consumer.receive())
        .await
        .expect("message from pika within 30s")
        .expect("receive");
    assert_eq!(d.payload().as_ref(), BODY.as_bytes(), "payload");
    for (k, v) in HEADERS {
        assert_eq!(d.headers().get(k), Some(v), "header {k}");
    }
    assert_eq!(
        d.headers().get("count"),
        Some("42"),
        "integer header as text"
    );
    assert_eq!(
        d.headers().get("flag"),
        Some("true"),
        "boolean header as text"
    );
    assert_eq!(d.id(), "interop-1", "message id property");
    assert_eq!(d.content_type(), Some("text/plain; charset=utf-8"));
    assert_eq!(
        d.headers().get("mq-correlation-id"),
        Some("corr-1"),
        "correlation id property"
    );
    assert_eq!(d.attempt(), 1);
    d.ack().await.expect("ack");
    consumer.close().await.expect("close");

    // mq -> pika: mq sends to a destination, pika reads its queue.
    let dest = unique("to-pika");
    let producer = client.producer().await.expect("producer");
    let mut m = Message::new(BODY)
        .with_id("interop-1")
        .with_content_type("text/plain; charset=utf-8")
        .with_key("key-1")
        .with_header("mq-correlation-id", "corr-1");
    for (k, v) in HEADERS {
        m = m.with_header(k, v);
    }
    producer.send(&dest, m).await.expect("send");
    pika("consume", &url, &dest).await;

    // A queue another application declared (not durable, with arguments):
    // consumed as it is with topology=queue, where mq declares nothing.
    let existing = unique("existing");
    pika("declare", &url, &existing).await;
    let plain = mq_rabbit::connect(&url_with(&url, "topology=queue"))
        .await
        .expect("connect topology=queue");
    plain
        .producer()
        .await
        .expect("producer")
        .send(&existing, Message::new("as it is").with_header("h", "v"))
        .await
        .expect("send to the existing queue");
    let mut c = plain
        .consumer(&existing)
        .await
        .expect("consume existing queue");
    let d = tokio::time::timeout(Duration::from_secs(30), c.receive())
        .await
        .expect("message within 30s")
        .expect("receive");
    assert_eq!(d.text().expect("text"), "as it is");
    assert_eq!(d.headers().get("h"), Some("v"));
    d.ack().await.expect("ack");
    let missing = plain
        .consumer(unique("missing"))
        .await
        .expect_err("no such queue");
    assert_eq!(missing.kind(), mq_core::ErrorKind::NotFound, "{missing}");

    // pika RPC client (direct reply-to) -> mq responder.
    let service = unique("rpc");
    let mut requests = client.consumer(&service).await.expect("consumer");
    let responder = client.producer().await.expect("producer");
    let serve = tokio::spawn(async move {
        let req = requests.receive().await.expect("request");
        assert_eq!(req.text().expect("text"), "ping");
        mq_core::reply(&*responder, &req, Message::new("PONG"))
            .await
            .expect("reply");
        req.ack().await.expect("ack");
    });
    pika("rpc", &url, &service).await;
    serve.await.expect("responder");
    client.close().await.expect("close");
}
