//! Issue 14 defect 6: messages published by other clients with extreme
//! properties (timestamp `2**64-1`, a 100 KB header, non-UTF-8 bytes,
//! nested tables and arrays, bogus `mq-*` headers of wrong types and
//! absurd values) are received by `mq` without a panic, with clamped
//! attempts, and can be settled: nacked (republished with their properties),
//! received again, dead-lettered and read from the dead-letter queue.
//!
//! One publisher is raw lapin, the other pika (`python3`; pika is installed
//! with pip when missing, like tests/interop_rabbit.rs). Needs
//! `MQ_TEST_RABBIT_URL`.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{channel, cleanup, close_raw, next, raw, unique, url};
use mq_core::message::headers;
use mq_core::Delivery;
use mq_rabbit::lapin::options::BasicPublishOptions;
use mq_rabbit::lapin::types::{AMQPValue, DecimalValue, FieldArray, FieldTable};
use mq_rabbit::lapin::BasicProperties;

const WAIT: Duration = Duration::from_secs(10);
const BIG: usize = 100 * 1024;

/// The cases both publishers send (the message id names the case).
const CASES: [&str; 8] = [
    "ts-max",
    "big-header",
    "non-utf8",
    "nested",
    "attempt-negative",
    "attempt-huge",
    "not-before-far",
    "wrong-types",
];

/// What `mq` must make of each case on its first delivery.
fn check_first(d: &Delivery) {
    let h = d.headers();
    match d.id() {
        "ts-max" => assert_eq!(d.timestamp(), None, "a timestamp past SystemTime is none"),
        "big-header" => assert_eq!(h.get("big").map(str::len), Some(BIG)),
        "non-utf8" => {
            let bytes = h.get("bytes").unwrap_or_default();
            assert!(bytes.contains('\u{fffd}'), "lossy text: {bytes:?}");
        }
        "nested" => assert!(!h.contains("nested"), "nested tables have no text form"),
        "attempt-negative" => assert_eq!(d.attempt(), 1),
        "attempt-huge" => assert_eq!(d.attempt(), u32::MAX),
        "not-before-far" => assert_eq!(h.get(headers::NOT_BEFORE), Some("99999999999999999")),
        "wrong-types" => assert_eq!(d.attempt(), 1),
        "count-max" => assert_eq!(d.attempt(), u32::MAX),
        other => panic!("unexpected message {other}"),
    }
}

/// Receives every case from `q`, checks it, nacks it (a republish that
/// keeps its properties), receives it again, dead-letters it, and reads
/// every dead letter back from `<q>-dlq`.
async fn receive_and_settle(url: &str, q: &str, cases: &[&str]) {
    let client = mq_rabbit::connect(url).await.expect("connect");
    let mut consumer = client.consumer(q).prefetch(20).await.expect("consumer");
    let mut first: BTreeMap<String, u32> = BTreeMap::new();
    let mut again: BTreeMap<String, u32> = BTreeMap::new();
    let deadline = Instant::now() + WAIT;
    while again.len() < cases.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(d) = next(&mut consumer, left).await else {
            panic!("received {first:?} then {again:?}; expected {cases:?} twice");
        };
        let id = d.id().to_owned();
        if let Some(attempt) = first.get(&id) {
            assert_eq!(
                d.attempt(),
                attempt.saturating_add(1),
                "{id}: a nack counts one more attempt"
            );
            again.insert(id.clone(), d.attempt());
            d.dead_letter(format!("foreign case {id}"))
                .await
                .unwrap_or_else(|e| panic!("{id}: dead-letter: {e}"));
        } else {
            check_first(&d);
            first.insert(id.clone(), d.attempt());
            d.nack().await.unwrap_or_else(|e| panic!("{id}: nack: {e}"));
        }
    }
    let dlq = format!("{q}-dlq");
    let mut dead_letters = client.consumer(dlq.as_str()).await.expect("dlq consumer");
    let mut dead = BTreeMap::new();
    while dead.len() < cases.len() {
        let Some(d) = next(&mut dead_letters, WAIT).await else {
            panic!("dead letters received: {dead:?}; expected {cases:?}");
        };
        let reason = d
            .headers()
            .get(headers::DEAD_LETTER_REASON)
            .unwrap_or_default()
            .to_owned();
        assert_eq!(reason, format!("foreign case {}", d.id()));
        dead.insert(d.id().to_owned(), d.attempt());
        d.ack().await.expect("ack");
    }
    consumer.close().await.expect("close");
    client.close().await.expect("close client");
    cleanup(url, &[q, &dlq], &[q, &dlq]).await;
}

fn long(s: impl Into<Vec<u8>>) -> AMQPValue {
    AMQPValue::LongString(s.into().into())
}

fn table(entries: Vec<(&str, AMQPValue)>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(k.into(), v);
    }
    t
}

/// The cases as raw lapin publishes them, plus `count-max`.
fn lapin_cases() -> Vec<(&'static str, BasicProperties)> {
    let nested = AMQPValue::FieldTable(table(vec![
        (
            "a",
            AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::LongInt(1),
                AMQPValue::FieldTable(table(vec![(
                    "b",
                    AMQPValue::FieldArray(FieldArray::from(vec![
                        AMQPValue::Boolean(true),
                        AMQPValue::Void,
                        AMQPValue::Double(2.5),
                        AMQPValue::ByteArray(vec![0xff, 0x00].into()),
                    ])),
                )])),
            ])),
        ),
        (
            "c",
            AMQPValue::FieldTable(table(vec![(
                "d",
                AMQPValue::FieldTable(table(vec![("e", long("deep"))])),
            )])),
        ),
    ]));
    let with =
        |entries: Vec<(&str, AMQPValue)>| BasicProperties::default().with_headers(table(entries));
    vec![
        (
            "ts-max",
            BasicProperties::default().with_timestamp(u64::MAX),
        ),
        ("big-header", with(vec![("big", long(vec![b'h'; BIG]))])),
        (
            "non-utf8",
            with(vec![
                (
                    "bytes",
                    AMQPValue::ByteArray(vec![0xff, 0xfe, 0x00, 0x80].into()),
                ),
                ("latin1", long(b"caf\xe9".to_vec())),
            ]),
        ),
        ("nested", with(vec![("nested", nested)])),
        (
            "attempt-negative",
            with(vec![(headers::ATTEMPT, AMQPValue::LongInt(-5))]),
        ),
        (
            "attempt-huge",
            with(vec![(headers::ATTEMPT, long("99999999999999999999"))]),
        ),
        (
            "not-before-far",
            with(vec![(
                headers::NOT_BEFORE,
                AMQPValue::LongLongInt(99_999_999_999_999_999),
            )]),
        ),
        (
            "wrong-types",
            with(vec![
                (
                    headers::ATTEMPT,
                    AMQPValue::FieldTable(table(vec![("not", long("a number"))])),
                ),
                ("x-delivery-count", long("abc")),
                ("mq-key", AMQPValue::ByteArray(vec![0xff, 0xfe].into())),
                (
                    headers::MESSAGE_ID,
                    AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongInt(1)])),
                ),
                (
                    headers::DEAD_LETTER_REASON,
                    AMQPValue::DecimalValue(DecimalValue {
                        scale: 255,
                        value: u32::MAX,
                    }),
                ),
                (headers::NOT_BEFORE, AMQPValue::Boolean(true)),
                // Not what the broker writes: an array of non-tables.
                (
                    "x-death",
                    AMQPValue::FieldArray(FieldArray::from(vec![long("delivery_limit")])),
                ),
            ]),
        ),
        (
            "count-max",
            with(vec![
                ("x-delivery-count", AMQPValue::LongLongInt(i64::MAX)),
                (headers::ATTEMPT, long("4294967295")),
            ]),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect6_foreign_extreme_properties_from_lapin() {
    let Some(url) = url("defect6_foreign_extreme_properties_from_lapin") else {
        return;
    };
    let q = unique("d6-lapin");
    // Declares the queue the way mq does, before the foreign publisher.
    let client = mq_rabbit::connect(&url).await.expect("connect");
    drop(client.consumer(q.as_str()).await.expect("declare"));
    client.close().await.expect("close");
    let conn = raw(&url).await;
    let ch = channel(&conn).await;
    let cases = lapin_cases();
    for (id, props) in &cases {
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            format!("lapin {id}").as_bytes(),
            props.clone().with_message_id((*id).into()),
        )
        .await
        .expect("publish")
        .await
        .expect("published");
    }
    close_raw(conn).await;
    let ids: Vec<&str> = cases.iter().map(|(id, _)| *id).collect();
    receive_and_settle(&url, &q, &ids).await;
}

fn has_pika() -> bool {
    Command::new("python3")
        .args(["-c", "import pika"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect6_foreign_extreme_properties_from_pika() {
    let Some(url) = url("defect6_foreign_extreme_properties_from_pika") else {
        return;
    };
    if !has_pika() {
        eprintln!("foreign: installing pika with pip");
        let _ = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "pika"])
            .output();
    }
    assert!(
        has_pika(),
        "pika is missing and `python3 -m pip install pika` failed"
    );
    let q = unique("d6-pika");
    let client = mq_rabbit::connect(&url).await.expect("connect");
    drop(client.consumer(q.as_str()).await.expect("declare"));
    client.close().await.expect("close");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/foreign_pika.py");
    let (u, queue) = (url.clone(), q.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .args([&u, &queue])
            .output()
    })
    .await
    .expect("pika task")
    .expect("run python3");
    assert!(
        out.status.success(),
        "pika failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    receive_and_settle(&url, &q, &CASES).await;
}
