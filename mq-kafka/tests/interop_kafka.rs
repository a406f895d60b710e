//! Interoperability with a native Kafka client of another language: Python
//! `confluent-kafka` produces and `mq` consumes, and the reverse, headers
//! intact (DESIGN.md §2, §4a).
//!
//! Needs `MQ_TEST_KAFKA_URL` (with `auto_create_topics=true` on a broker
//! that does not create topics itself) and a Python with
//! `confluent-kafka`: `MQ_TEST_KAFKA_PYTHON`, else `~/.cache/mq-kafka-py/bin/python`,
//! else `python3` (`python3 -m venv ~/.cache/mq-kafka-py &&
//! ~/.cache/mq-kafka-py/bin/pip install confluent-kafka`). Without them the
//! tests say loudly what they skipped.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use common::{receive_within, unique};
use mq_core::{Consumer, Message, Producer};

const PRODUCE: &str = r#"
import sys
from confluent_kafka import Producer
bootstrap, topic = sys.argv[1], sys.argv[2]
p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
errors = []
for i in range(3):
    p.produce(topic, key=b"py-key", value=("py-%d \u00e9" % i).encode(),
              headers=[("X-Mixed-Case", b"Value"), ("unicode", "caf\u00e9 \u2713".encode()),
                       ("empty", b""), ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                       ("seq", str(i).encode())],
              on_delivery=lambda err, msg: errors.append(err) if err else None)
p.flush(30)
if errors:
    sys.exit("delivery failed: %s" % errors)
print("produced")
"#;

const CONSUME: &str = r#"
import sys, time
from confluent_kafka import Consumer
bootstrap, topic, group = sys.argv[1], sys.argv[2], sys.argv[3]
c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
              "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
c.subscribe([topic])
deadline = time.time() + 60
while time.time() < deadline:
    m = c.poll(0.5)
    if m is None:
        continue
    if m.error():
        print("ERROR", m.error(), file=sys.stderr)
        continue
    print("VALUE\t" + m.value().hex())
    print("KEY\t" + (m.key() or b"").hex())
    for k, v in (m.headers() or []):
        print("HEADER\t" + k + "\t" + (v or b"").hex())
    c.commit(message=m, asynchronous=False)
    break
c.close()
"#;

fn announce(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The broker URL and a Python that has confluent-kafka, or why not.
fn setup() -> Result<(String, String, String), String> {
    let url = std::env::var("MQ_TEST_KAFKA_URL").map_err(|_| {
        "MQ_TEST_KAFKA_URL is not set; start brokers with scripts/brokers.sh".to_owned()
    })?;
    let config = mq_kafka::KafkaConfig::from_url(&url).map_err(|e| e.to_string())?;
    let mut candidates = Vec::new();
    if let Ok(p) = std::env::var("MQ_TEST_KAFKA_PYTHON") {
        candidates.push(p);
    }
    if let Ok(home) = std::env::var("HOME") {
        candidates.push(format!("{home}/.cache/mq-kafka-py/bin/python"));
    }
    candidates.push("python3".to_owned());
    let python = candidates
        .into_iter()
        .find(|p| {
            Command::new(p)
                .args(["-c", "import confluent_kafka"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .ok_or("no Python with confluent-kafka (set MQ_TEST_KAFKA_PYTHON)")?;
    Ok((url, config.brokers.join(","), python))
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_produces_mq_consumes() {
    let (url, bootstrap, python) = match setup() {
        Ok(s) => s,
        Err(why) => return announce(&format!("interop kafka: skipped ({why})")),
    };
    let topic = unique("interop-py2mq");
    let client = mq_kafka::connect(&url).await.expect("connect");
    // The consumer creates the topic (auto_create_topics) before Python writes.
    let mut consumer = client.consumer(&topic).await.expect("consumer");
    let out = Command::new(&python)
        .args(["-c", PRODUCE, &bootstrap, &topic])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python producer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let d = receive_within(
            &mut consumer,
            Duration::from_secs(60),
            "a message from python",
        )
        .await;
        assert_eq!(d.key(), Some("py-key"));
        let h = d.headers();
        assert_eq!(h.get("X-Mixed-Case"), Some("Value"));
        assert_eq!(h.get("unicode"), Some("caf\u{e9} \u{2713}"));
        assert_eq!(h.get("empty"), Some(""));
        assert_eq!(
            h.get("traceparent"),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        let seq = h.get("seq").expect("seq header").to_owned();
        assert_eq!(d.text().expect("utf-8"), format!("py-{seq} \u{e9}"));
        assert_eq!(d.attempt(), 1);
        assert!(
            d.id().starts_with(&topic),
            "a native record gets a stable id: {}",
            d.id()
        );
        seen.push(seq);
        d.ack().await.expect("ack");
    }
    seen.sort();
    assert_eq!(seen, ["0", "1", "2"]);
    consumer.close().await.expect("close");
    announce("interop kafka: confluent-kafka -> mq ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mq_produces_python_consumes() {
    let (url, bootstrap, python) = match setup() {
        Ok(s) => s,
        Err(why) => return announce(&format!("interop kafka: skipped ({why})")),
    };
    let topic = unique("interop-mq2py");
    let client = mq_kafka::connect(&url).await.expect("connect");
    let producer = client.producer().await.expect("producer");
    let sent = Message::new("from mq \u{e9}")
        .with_key("mq-key")
        .with_content_type("text/plain")
        .with_header("X-Mixed-Case", "Value")
        .with_header("unicode", "caf\u{e9} \u{2713}")
        .with_header("empty", "");
    producer.send(&topic, sent.clone()).await.expect("send");
    let out = Command::new(&python)
        .args(["-c", CONSUME, &bootstrap, &topic, "interop-py"])
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python consumer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut value = None;
    let mut key = None;
    let mut headers = Vec::new();
    for line in stdout.lines() {
        let parts: Vec<&str> = line.split('\t').collect();
        match parts.as_slice() {
            ["VALUE", v] => value = Some(hex(v)),
            ["KEY", k] => key = Some(hex(k)),
            ["HEADER", k, v] => headers.push(((*k).to_owned(), hex(v))),
            _ => {}
        }
    }
    assert_eq!(
        value.as_deref(),
        Some("from mq \u{e9}".as_bytes()),
        "{stdout}"
    );
    assert_eq!(key.as_deref(), Some(&b"mq-key"[..]));
    let get = |k: &str| {
        headers
            .iter()
            .find(|(hk, _)| hk == k)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(get("X-Mixed-Case").as_deref(), Some("Value"));
    assert_eq!(get("unicode").as_deref(), Some("caf\u{e9} \u{2713}"));
    assert_eq!(get("empty").as_deref(), Some(""));
    assert_eq!(get("mq-message-id").as_deref(), Some(sent.id()));
    assert_eq!(get("mq-content-type").as_deref(), Some("text/plain"));
    announce("interop kafka: mq -> confluent-kafka ok");
}
