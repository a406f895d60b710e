//! The consumer wrapper every `Client` hands out: a span and metrics per
//! delivery, and settlement counted on the way to the backend.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use metrics::Counter;

use super::{names, trace};
use crate::consumer::{Consumer, DynConsumer};
use crate::delivery::{Delivery, Settlement, Settler};
use crate::error::Result;
use crate::health::Health;

/// Counters of one (backend, source, group), made once per consumer.
struct SettleMetrics {
    acked: Counter,
    nacked: Counter,
    dead_lettered: Counter,
    abandoned: Counter,
}

/// Counts settlements, then passes them to the backend's settler.
struct CountingSettler {
    inner: Arc<dyn Settler>,
    metrics: Arc<SettleMetrics>,
}

#[async_trait]
impl Settler for CountingSettler {
    async fn settle(&self, delivery: &Delivery, settlement: Settlement) -> Result<()> {
        let counter = match &settlement {
            Settlement::Ack => &self.metrics.acked,
            Settlement::Nack { .. } => &self.metrics.nacked,
            Settlement::DeadLetter { .. } => &self.metrics.dead_lettered,
        };
        let result = self.inner.settle(delivery, settlement).await;
        if result.is_ok() {
            counter.increment(1);
        }
        result
    }

    fn abandon(&self, delivery: &Delivery) {
        self.metrics.abandoned.increment(1);
        self.inner.abandon(delivery);
    }
}

pub(crate) struct InstrumentedConsumer {
    inner: DynConsumer,
    backend: &'static str,
    received: Counter,
    metrics: Arc<SettleMetrics>,
    /// The wrapper of the backend settler seen last: backends share one
    /// settler per consumer, so this saves an allocation per delivery.
    last: Option<(Arc<dyn Settler>, Arc<CountingSettler>)>,
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
            metrics: Arc::new(SettleMetrics {
                acked: metrics::counter!(names::ACKED, &labels),
                nacked: metrics::counter!(names::NACKED, &labels),
                dead_lettered: metrics::counter!(names::DEAD_LETTERED, &labels),
                abandoned: metrics::counter!(names::ABANDONED, &labels),
            }),
            last: None,
        })
    }

    fn wrap_delivery(&mut self, mut delivery: Delivery) -> Delivery {
        self.received.increment(1);
        let backend = self.backend;
        let metrics = &self.metrics;
        let last = &mut self.last;
        delivery.rewrap(|received, settler| {
            received.backend = backend;
            drop(trace::receive_span(backend, received));
            let Some(inner) = settler.take() else {
                return;
            };
            let counting = match last {
                Some((seen, counting)) if Arc::ptr_eq(seen, &inner) => counting.clone(),
                _ => {
                    let counting = Arc::new(CountingSettler {
                        inner: inner.clone(),
                        metrics: metrics.clone(),
                    });
                    *last = Some((inner, counting.clone()));
                    counting
                }
            };
            *settler = Some(counting);
        });
        delivery
    }
}

#[async_trait]
impl Consumer for InstrumentedConsumer {
    async fn receive(&mut self) -> Result<Delivery> {
        let d = self.inner.receive().await?;
        Ok(self.wrap_delivery(d))
    }

    async fn receive_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let batch = self.inner.receive_batch(max, wait).await?;
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
