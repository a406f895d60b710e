//! Traces that cross the broker, printed by OpenTelemetry's stdout exporter.
//!
//! ```sh
//! cargo run --example tracing_stdout
//! ```
//!
//! The producer's `send` span context travels in the `traceparent` header;
//! the consumer's `receive` and `process` spans are its children, so an
//! OpenTelemetry backend shows one trace from send to handler. Swap the
//! stdout exporter for `opentelemetry-otlp`'s to send the same spans to a
//! collector (Jaeger, Tempo, ...).

use std::time::Duration;

use mq::{CancellationToken, Message, Producer, Received, Worker};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://tracing-example".into());
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(opentelemetry_stdout::SpanExporter::default())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("mq-example")));
    tracing::subscriber::set_global_default(subscriber)?;

    let client = mq::connect(&url).await?;
    let queue = format!("traced-{}", uuid::Uuid::new_v4().simple());
    client
        .producer()
        .await?
        .send(&queue, Message::new("hello, trace"))
        .await?;
    let handler = |m: Received| async move {
        println!(
            "handler got {:?} with traceparent {}",
            m.text()?,
            m.headers().get("traceparent").unwrap_or("(none)")
        );
        Ok(())
    };
    let consumer = client.consumer(&queue).await?;
    let token = CancellationToken::new();
    let worker = tokio::spawn(Worker::new(consumer, handler).run(token.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel();
    worker.await??;
    provider.force_flush()?;
    provider.shutdown()?;
    Ok(())
}
