//! Spans after the OpenTelemetry messaging conventions, and W3C trace
//! context carried in message headers.
//!
//! With the `otel` cargo feature, the send span's OpenTelemetry context is
//! injected into `traceparent`/`tracestate` (unless the message already
//! carries one) and consumer-side spans take the context extracted from them
//! as their parent. Without it, spans are still emitted and any trace headers
//! set by the application travel untouched.

use tracing::Span;

use crate::delivery::Received;
use crate::message::{Headers, Message};

/// The span around one send.
pub(crate) fn send_span(backend: &'static str, destination: &str, message: &Message) -> Span {
    tracing::info_span!(
        "send",
        otel.name = %format_args!("send {destination}"),
        otel.kind = "producer",
        messaging.system = backend,
        messaging.operation.type = "send",
        messaging.destination.name = destination,
        messaging.message.id = message.id(),
        messaging.message.body.size = message.payload().len(),
    )
}

/// The span of one received delivery; its parent is the sender's context.
pub(crate) fn receive_span(backend: &'static str, received: &Received) -> Span {
    let span = tracing::info_span!(
        "receive",
        otel.name = %format_args!("receive {}", received.source()),
        otel.kind = "consumer",
        messaging.system = backend,
        messaging.operation.type = "receive",
        messaging.destination.name = received.source(),
        messaging.consumer.group.name = received.group().unwrap_or(""),
        messaging.message.id = received.id(),
        messaging.message.body.size = received.payload().len(),
        messaging.delivery.attempt = received.attempt(),
    );
    set_parent_from_headers(&span, received.headers());
    span
}

/// The span around one handler run; its parent is the sender's context.
pub(crate) fn process_span(received: &Received) -> Span {
    let span = tracing::info_span!(
        "process",
        otel.name = %format_args!("process {}", received.source()),
        otel.kind = "consumer",
        messaging.system = received.backend(),
        messaging.operation.type = "process",
        messaging.destination.name = received.source(),
        messaging.consumer.group.name = received.group().unwrap_or(""),
        messaging.message.id = received.id(),
        messaging.delivery.attempt = received.attempt(),
    );
    set_parent_from_headers(&span, received.headers());
    span
}

#[cfg(feature = "otel")]
mod w3c {
    use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::*;
    use crate::message::headers::{TRACEPARENT, TRACESTATE};

    struct Inject<'a>(&'a mut Headers);
    impl Injector for Inject<'_> {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key, value);
        }
    }

    struct Extract<'a>(&'a Headers);
    impl Extractor for Extract<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key)
        }
        fn keys(&self) -> Vec<&str> {
            [TRACEPARENT, TRACESTATE]
                .into_iter()
                .filter(|k| self.0.contains(k))
                .collect()
        }
    }

    pub(super) fn inject(span: &Span, headers: &mut Headers) {
        if headers.contains(TRACEPARENT) {
            return;
        }
        let cx = span.context();
        if cx.span().span_context().is_valid() {
            opentelemetry_sdk::propagation::TraceContextPropagator::new()
                .inject_context(&cx, &mut Inject(headers));
        }
    }

    pub(super) fn set_parent(span: &Span, headers: &Headers) {
        if !headers.contains(TRACEPARENT) {
            return;
        }
        let parent = opentelemetry_sdk::propagation::TraceContextPropagator::new()
            .extract(&Extract(headers));
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
    }
}

/// Writes `span`'s trace context into `headers` (`otel` feature; a no-op
/// without it, or when no OpenTelemetry layer is installed, or when the
/// message already carries a `traceparent`).
pub fn inject(span: &Span, headers: &mut Headers) {
    #[cfg(feature = "otel")]
    w3c::inject(span, headers);
    #[cfg(not(feature = "otel"))]
    let _ = (span, headers);
}

/// Makes the trace context in `headers` the parent of `span` (`otel` feature).
pub fn set_parent_from_headers(span: &Span, headers: &Headers) {
    #[cfg(feature = "otel")]
    w3c::set_parent(span, headers);
    #[cfg(not(feature = "otel"))]
    let _ = (span, headers);
}
