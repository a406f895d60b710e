//! The consumer wrapper every `Client` hands out: a span and metrics per
//! delivery; each delivery counts its own settlement ([`SettleCounters`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use metrics::Counter;

use super::{names, trace};
use crate::consumer::{Consumer, DynConsumer};
use crate::delivery::{Delivery, SettleCounters};
use crate::error::Result;
use crate::health::Health;

pub(crate) struct InstrumentedConsumer {
    inner: DynConsumer,
    backend: &'static str,
    received: Counter,
    counts: Arc<SettleCounters>,
}

impl InstrumentedConsumer {
    pub(crate) fn wrap(
        inner: DynConsumer,
        backend: &'static str,
        source: &str,
        group: Option<&str>,
    ) -> DynConsumer {
        let labels = [
            ("backend", backend.to_owned()),
            ("source", source.to_owned()),
            ("group", group.unwrap_or("").to_owned()),
        ];
        Box::new(InstrumentedConsumer {
            inner,
            backend,
            received: metrics::counter!(names::RECEIVED, &labels),
            counts: Arc::new(SettleCounters {
                acked: metrics::counter!(names::ACKED, &labels),
                nacked: metrics::counter!(names::NACKED, &labels),
                dead_lettered: metrics::counter!(names::DEAD_LETTERED, &labels),
                abandoned: metrics::counter!(names::ABANDONED, &labels),
            }),
        })
    }

    /// Stamps and traces one delivery; the caller counts it.
    fn wrap_delivery(&self, mut delivery: Delivery) -> Delivery {
        let received = delivery.instrument(&self.counts);
        received.backend = self.backend;
        drop(trace::receive_span(self.backend, received));
        delivery
    }
}

#[async_trait]
impl Consumer for InstrumentedConsumer {
    async fn receive(&mut self) -> Result<Delivery> {
        let d = self.inner.receive().await?;
        self.received.increment(1);
        Ok(self.wrap_delivery(d))
    }

    async fn receive_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let batch = self.inner.receive_batch(max, wait).await?;
        // One count per batch, not per delivery.
        self.received.increment(batch.len() as u64);
        Ok(batch.into_iter().map(|d| self.wrap_delivery(d)).collect())
    }

    async fn close(&mut self) -> Result<()> {
        self.inner.close().await
    }

    fn health(&self) -> Health {
        self.inner.health()
    }
}

impl std::fmt::Debug for InstrumentedConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.inner, f)
    }
}
