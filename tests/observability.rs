//! Trace context across the broker, end to end on `memory://` (metrics are
//! tested in `metrics.rs`, a separate process: tracing's callsite cache is
//! process-wide).

use std::sync::Arc;
use std::time::Duration;

use mq::{CancellationToken, Message, Producer, Received, Worker};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;

fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

/// Runs `f` on a single-threaded runtime, so thread-local subscribers and
/// recorders see every task.
fn on_one_thread<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

#[test]
fn the_consumer_span_continues_the_producer_span_through_the_broker() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("mq-test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let queue = unique("traced");
    let received_traceparent = on_one_thread(async {
        let client = mq::connect(&format!("memory://{}", unique("trace")))
            .await
            .expect("connect");
        let producer = client.producer().await.expect("producer");
        producer
            .send(&queue, Message::new("hello"))
            .await
            .expect("send");

        let seen = Arc::new(parking_lot::Mutex::new(None));
        let s = seen.clone();
        let handler = move |m: Received| {
            *s.lock() = m.headers().get("traceparent").map(str::to_owned);
            async { Ok(()) }
        };
        let consumer = client.consumer(&queue).await.expect("consumer");
        let token = CancellationToken::new();
        let worker = tokio::spawn(Worker::new(consumer, handler).run(token.clone()));
        for _ in 0..200 {
            if seen.lock().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        token.cancel();
        worker.await.expect("join").expect("worker");
        let traceparent = seen.lock().clone();
        traceparent
    });
    provider.force_flush().expect("flush");

    let spans = exporter.get_finished_spans().expect("spans");
    let by_name = |name: &str| {
        spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
            panic!(
                "no span {name:?} in {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        })
    };
    let send = by_name(&format!("send {queue}"));
    let process = by_name(&format!("process {queue}"));
    let receive = by_name(&format!("receive {queue}"));
    let traceparent = received_traceparent.expect("the message carried a traceparent header");
    assert!(
        traceparent.contains(&send.span_context.trace_id().to_string()),
        "header {traceparent} names the send span's trace"
    );
    for consumer_side in [process, receive] {
        assert_eq!(
            consumer_side.span_context.trace_id(),
            send.span_context.trace_id(),
            "same trace"
        );
        assert_eq!(
            consumer_side.parent_span_id,
            send.span_context.span_id(),
            "parent is the send span"
        );
    }
}
