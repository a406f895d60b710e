//! Health from librdkafka's own reports, shared by every librdkafka client
//! of a backend (producer, admin, one per consumer).
//!
//! librdkafka connects, reconnects and fails over by itself and tells about
//! it only through callbacks, so that is where health comes from:
//!
//! - the error callback: `AllBrokersDown` (no broker of the cluster is
//!   reachable) and failed authentication turn `connected` false; those and
//!   other connection-level errors (one broker's connection failing,
//!   name resolution) become `last_error`;
//! - the statistics callback (every
//!   [`STATS_INTERVAL`](crate::config::STATS_INTERVAL)) reports each
//!   broker's connection state: a broker `UP` after `connected` went false
//!   turns it back to true and counts one reconnect, even on an idle client;
//!   a delivered record (send) or a committed offset says the same sooner.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use mq_core::observe::Health;
use mq_core::ErrorKind;
use parking_lot::Mutex;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;

use crate::error::kind_of;

/// What a backend's librdkafka clients reported lately.
#[derive(Debug, Default)]
pub(crate) struct KafkaHealth {
    state: Mutex<State>,
    reconnects: AtomicU64,
    /// `state.down`, readable without the lock: every delivered record
    /// reports `up`, from whichever thread completes it, and taking the
    /// lock for that moved its cache line between the cores per send.
    down: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    down: bool,
    last_error: Option<(String, SystemTime)>,
}

impl KafkaHealth {
    /// Connected, last error, recoveries.
    pub(crate) fn health(&self) -> Health {
        let state = self.state.lock();
        let mut health = Health::healthy();
        health.connected = !state.down;
        health.reconnects = self.reconnects.load(Ordering::Relaxed);
        if let Some((message, at)) = &state.last_error {
            health.last_error = Some(message.clone());
            health.last_error_at = Some(*at);
        }
        health
    }

    /// A broker answered: back up if we were down.
    pub(crate) fn up(&self) {
        // Set under the lock together with `state.down`; a `down` that
        // races with this read happened after the answer that called us.
        if !self.down.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.state.lock();
        if state.down {
            state.down = false;
            self.down.store(false, Ordering::Release);
            self.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::info!("Kafka brokers reachable again");
        }
    }

    /// librdkafka's error callback: `error` with its `reason`.
    pub(crate) fn error(&self, error: &KafkaError, reason: &str) {
        let Some(code) = error.rdkafka_error_code() else {
            return;
        };
        let down = match code {
            RDKafkaErrorCode::AllBrokersDown => true,
            _ => match kind_of(code) {
                ErrorKind::Permission => true,
                ErrorKind::Connection | ErrorKind::Timeout => false,
                // Not about the connection (e.g. a fatal idempotence error,
                // handled where sends fail).
                _ => return,
            },
        };
        let mut state = self.state.lock();
        state.down |= down;
        if down {
            self.down.store(true, Ordering::Release);
        }
        state.last_error = Some((format!("{code}: {reason}"), SystemTime::now()));
    }

    /// librdkafka's statistics: any broker `UP` means reachable.
    pub(crate) fn stats(&self, statistics: &Statistics) {
        if statistics.brokers.values().any(|b| b.state == "UP") {
            self.up();
        }
    }
}

/// The context of the producer and admin clients: feeds [`KafkaHealth`].
#[derive(Clone)]
pub(crate) struct HealthContext {
    pub(crate) health: Arc<KafkaHealth>,
}

impl HealthContext {
    pub(crate) fn new(health: Arc<KafkaHealth>) -> Self {
        HealthContext { health }
    }
}

impl ClientContext for HealthContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "kafka client error");
        self.health.error(&error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        self.health.stats(&statistics);
    }
}

/// For the short-lived consumer of `stats`, which never subscribes.
impl ConsumerContext for HealthContext {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_brokers_down_then_up_counts_a_reconnect() {
        let h = KafkaHealth::default();
        assert!(h.health().connected);
        h.error(
            &KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure),
            "127.0.0.1:9092/1: Disconnected",
        );
        let s = h.health();
        assert!(s.connected, "one broker failing is not an outage");
        assert!(s.last_error.is_some());
        h.error(
            &KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        assert!(!h.health().connected);
        h.up();
        h.up();
        let s = h.health();
        assert!(s.connected);
        assert_eq!(s.reconnects, 1);
        assert!(s.last_error.as_deref().is_some_and(|e| e.contains("down")));
    }

    /// Against a real broker (`MQ_TEST_KAFKA_URL`): after an outage (here
    /// simulated), a delivered record brings health back, and so does the
    /// statistics callback on an idle client.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deliveries_and_statistics_bring_it_back_up() {
        use mq_core::backend::Backend;
        use mq_core::{Message, Producer};
        let Ok(url) = std::env::var("MQ_TEST_KAFKA_URL") else {
            eprintln!("skipped: MQ_TEST_KAFKA_URL is not set");
            return;
        };
        let config = crate::KafkaConfig::from_url(&url).expect("url");
        let backend = crate::KafkaBackend::new(config).expect("backend");
        let down = || {
            backend.sender.health.error(
                &KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
                "simulated",
            )
        };
        down();
        assert!(!backend.health().connected);
        let topic = format!("health-{}", uuid::Uuid::now_v7().simple());
        backend
            .kafka_producer()
            .send(&topic, Message::new("x"))
            .await
            .expect("send");
        let h = backend.health();
        assert!(h.connected && h.reconnects == 1, "{h:?}");

        down();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while !backend.health().connected && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let h = backend.health();
        assert!(h.connected && h.reconnects == 2, "{h:?}");
    }
}
