//! The producer wrapper every `Client` hands out: a span and metrics per send.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use metrics::{Counter, Histogram};
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use tracing::Instrument;

use super::{names, trace};
use crate::capabilities::Capabilities;
use crate::checks::{check_send, send_batch_checked};
use crate::error::Result;
use crate::health::Health;
use crate::message::Message;
use crate::producer::{BatchReport, CountSend, DynProducer, Producer, SendNow, Sending};

/// The metric handles of one destination, made once and reused, and its
/// name (shared: a send in flight needs it only if it fails).
struct SendMetrics {
    backend: &'static str,
    sent: Counter,
    duration: Histogram,
    destination: Arc<str>,
}

pub(crate) struct InstrumentedProducer {
    inner: DynProducer,
    backend: &'static str,
    /// For the checks every send passes first (`crate::checks`).
    caps: Capabilities,
    by_destination: RwLock<FxHashMap<Box<str>, Arc<SendMetrics>>>,
    /// The destination sent to last and its handles: a producer mostly
    /// sends to one destination, and this spares each send the map's
    /// hashing.
    last: Mutex<Option<(Box<str>, Arc<SendMetrics>)>>,
    /// The backend's `can_send_now`, asked once.
    sends_now: bool,
}

impl InstrumentedProducer {
    pub(crate) fn wrap(
        inner: DynProducer,
        backend: &'static str,
        caps: Capabilities,
    ) -> DynProducer {
        Arc::new(InstrumentedProducer {
            sends_now: inner.can_send_now(),
            inner,
            backend,
            caps,
            by_destination: RwLock::new(FxHashMap::default()),
            last: Mutex::new(None),
        })
    }

    fn metrics(&self, destination: &str) -> Arc<SendMetrics> {
        if let Some((name, m)) = &*self.last.lock() {
            if **name == *destination {
                return m.clone();
            }
        }
        let m = self.metrics_of(destination);
        *self.last.lock() = Some((destination.into(), m.clone()));
        m
    }

    fn metrics_of(&self, destination: &str) -> Arc<SendMetrics> {
        if let Some(m) = self.by_destination.read().get(destination) {
            return m.clone();
        }
        let labels = [
            ("backend", self.backend.to_owned()),
            ("destination", destination.to_owned()),
        ];
        let m = Arc::new(SendMetrics {
            backend: self.backend,
            sent: metrics::counter!(names::SENT, &labels),
            duration: metrics::histogram!(names::SEND_DURATION, &labels),
            destination: destination.into(),
        });
        self.by_destination
            .write()
            .insert(destination.into(), m.clone());
        m
    }

    fn count_error(&self, destination: &str, e: &crate::Error) {
        count_error(self.backend, destination, e);
    }

    /// The send through the backend's future (no fast path, or a delayed
    /// message): checks, span, trace context, metrics.
    async fn send_later(&self, destination: &str, mut message: Message) -> Result<()> {
        if let Err(e) = check_send(&self.caps, self.backend, destination, &message) {
            self.count_error(destination, &e);
            return Err(e);
        }
        let span = trace::send_span(self.backend, destination, &message);
        trace::inject(&span, message.headers_mut());
        let metrics = self.metrics(destination);
        let started = Instant::now();
        let result = self.inner.send(destination, message).instrument(span).await;
        metrics.record(Some(started), &result);
        result
    }
}

fn count_error(backend: &'static str, destination: &str, e: &crate::Error) {
    metrics::counter!(names::SEND_ERRORS,
        "backend" => backend, "destination" => destination.to_owned(), "kind" => format!("{:?}", e.kind()))
    .increment(1);
}

impl CountSend for SendMetrics {
    fn count(&self, started: Instant, result: &Result<()>) {
        self.record(Some(started), result);
    }
}

impl SendMetrics {
    /// Counts a finished send; `started`: when it began waiting (`None`:
    /// it never waited, and its duration is 0).
    fn record(&self, started: Option<Instant>, result: &Result<()>) {
        match result {
            Ok(()) => {
                self.sent.increment(1);
                self.duration
                    .record(started.map_or(Duration::ZERO, |s| s.elapsed()));
            }
            Err(e) => count_error(self.backend, &self.destination, e),
        }
    }
}

#[async_trait]
impl Producer for InstrumentedProducer {
    async fn send(&self, destination: &str, message: Message) -> Result<()> {
        match self.send_now(destination, message) {
            SendNow::Done(result) => result,
            SendNow::Started(sending) => sending.await,
            SendNow::Later(message) => self.send_later(destination, message).await,
        }
    }

    /// The backend's fast path with the same checks, span, trace context
    /// and metrics as `send`. Once the span exists the send is never handed
    /// back as `Later` (that would make a second span for one message): a
    /// backend that cannot finish now continues in the returned future.
    fn send_now(&self, destination: &str, mut message: Message) -> SendNow {
        if !self.sends_now {
            return SendNow::Later(message);
        }
        if let Err(e) = check_send(&self.caps, self.backend, destination, &message) {
            self.count_error(destination, &e);
            return SendNow::Done(Err(e));
        }
        let span = trace::send_span(self.backend, destination, &message);
        trace::inject(&span, message.headers_mut());
        let metrics = self.metrics(destination);
        // Entering a span nobody records costs more than the send itself.
        let now = if span.is_disabled() {
            self.inner.send_now(destination, message)
        } else {
            span.in_scope(|| self.inner.send_now(destination, message))
        };
        let sending = match now {
            // Done without waiting (an in-process broker): its duration is
            // 0, and the fast path reads no clock (two reads cost more than
            // the send itself, 45 ns on the benchmark machine).
            SendNow::Done(result) => {
                metrics.record(None, &result);
                return SendNow::Done(result);
            }
            SendNow::Started(sending) => sending,
            SendNow::Later(message) => {
                let (inner, dest) = (self.inner.clone(), destination.to_owned());
                Sending::new(async move { inner.send(&dest, message).await })
            }
        };
        // Timed from the hand-off: the wait for the broker is what a send's
        // duration shows.
        let started = Instant::now();
        if span.is_disabled() {
            // Counted as the backend's future ends: no future around it.
            return SendNow::Started(sending.counted(metrics, started));
        }
        SendNow::Started(Sending::new(async move {
            let result = sending.instrument(span).await;
            metrics.record(Some(started), &result);
            result
        }))
    }

    fn can_send_now(&self) -> bool {
        self.sends_now
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
