//! Observability: tracing spans with trace-context propagation, metrics,
//! health and queue statistics.
//!
//! [`Client`](crate::Client) wraps every producer and consumer it makes, so
//! every backend reports the same spans and metrics without doing anything:
//!
//! - **Spans** (`tracing`, named and attributed after the OpenTelemetry
//!   messaging conventions): `send <destination>` (kind producer) per send,
//!   `receive <source>` (kind consumer) per delivery and `process <source>`
//!   around each handler run in a [`Worker`](crate::Worker). With the `otel`
//!   feature and a `tracing-opentelemetry` layer installed, the send span's
//!   context is written into the W3C `traceparent`/`tracestate` headers and
//!   the consumer-side spans continue that trace across the broker.
//! - **Metrics** (the `metrics` facade; install any recorder, e.g.
//!   `metrics-exporter-prometheus`): see [`names`] for the list, each
//!   labelled by `backend`, `destination` (sends) or `source` and `group`.
//! - **Health**: [`Health`] from [`Client::health`](crate::Client::health).
//! - **Queue statistics**: [`QueueStats`] from [`Client::stats`](crate::Client::stats).
//!
//! Nothing here records a URL, a credential or a payload: labels are backend,
//! destination and group names only.

mod consumer;
pub mod names;
mod producer;
pub mod trace;

pub use crate::health::Health;
pub use crate::queue_stats::QueueStats;
pub(crate) use consumer::InstrumentedConsumer;
pub(crate) use producer::InstrumentedProducer;
