//! The producer wrapper every `Client` hands out: a span and metrics per send.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use metrics::{Counter, Histogram};
use parking_lot::RwLock;
use rustc_hash::FxHashMap;
use tracing::Instrument;

use super::{names, trace};
use crate::capabilities::Capabilities;
use crate::checks::{check_send, send_batch_checked};
use crate::error::Result;
use crate::health::Health;
use crate::message::Message;
use crate::producer::{BatchReport, DynProducer, Producer};

/// The metric handles of one destination, made once and reused.
#[derive(Clone)]
struct SendMetrics {
    sent: Counter,
    duration: Histogram,
}

pub(crate) struct InstrumentedProducer {
    inner: DynProducer,
    backend: &'static str,
    /// For the checks every send passes first (`crate::checks`).
    caps: Capabilities,
    by_destination: RwLock<FxHashMap<Box<str>, SendMetrics>>,
}

impl InstrumentedProducer {
    pub(crate) fn wrap(
        inner: DynProducer,
        backend: &'static str,
        caps: Capabilities,
    ) -> DynProducer {
        Arc::new(InstrumentedProducer {
            inner,
            backend,
            caps,
            by_destination: RwLock::new(FxHashMap::default()),
        })
    }

    fn metrics(&self, destination: &str) -> SendMetrics {
        if let Some(m) = self.by_destination.read().get(destination) {
            return m.clone();
        }
        let labels = [
            ("backend", self.backend.to_owned()),
            ("destination", destination.to_owned()),
        ];
        let m = SendMetrics {
            sent: metrics::counter!(names::SENT, &labels),
            duration: metrics::histogram!(names::SEND_DURATION, &labels),
        };
        self.by_destination
            .write()
            .insert(destination.into(), m.clone());
        m
    }

    fn count_error(&self, destination: &str, e: &crate::Error) {
        metrics::counter!(names::SEND_ERRORS,
            "backend" => self.backend, "destination" => destination.to_owned(), "kind" => format!("{:?}", e.kind()))
        .increment(1);
    }
}

#[async_trait]
impl Producer for InstrumentedProducer {
    async fn send(&self, destination: &str, mut message: Message) -> Result<()> {
        if let Err(e) = check_send(&self.caps, self.backend, destination, &message) {
            self.count_error(destination, &e);
            return Err(e);
        }
        let span = trace::send_span(self.backend, destination, &message);
        trace::inject(&span, message.headers_mut());
        let metrics = self.metrics(destination);
        let started = Instant::now();
        let result = self.inner.send(destination, message).instrument(span).await;
        match &result {
            Ok(()) => {
                metrics.sent.increment(1);
                metrics.duration.record(started.elapsed());
            }
            Err(e) => self.count_error(destination, e),
        }
        result
    }

    async fn send_batch(&self, destination: &str, mut messages: Vec<Message>) -> BatchReport {
        let span = tracing::info_span!(
            "send",
            otel.name = %format_args!("send {destination}"),
            otel.kind = "producer",
            messaging.system = self.backend,
            messaging.operation.type = "send",
            messaging.destination.name = destination,
            messaging.batch.message_count = messages.len(),
        );
        for m in &mut messages {
            trace::inject(&span, m.headers_mut());
        }
        let metrics = self.metrics(destination);
        let started = Instant::now();
        let report =
            send_batch_checked(&self.inner, &self.caps, self.backend, destination, messages)
                .instrument(span)
                .await;
        metrics.sent.increment(report.sent() as u64);
        metrics.duration.record(started.elapsed());
        for (_, _, e) in report.failures() {
            self.count_error(destination, e);
        }
        report
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }

    fn health(&self) -> Health {
        self.inner.health()
    }
}

impl std::fmt::Debug for InstrumentedProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Transparent: the backend's producer is what users care about.
        std::fmt::Debug::fmt(&self.inner, f)
    }
}
