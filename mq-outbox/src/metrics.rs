//! Metric names of the outbox, in `mq_core::observe`'s style (prefix `mq_`,
//! counters end in `_total`, durations and ages in seconds), recorded
//! through the `metrics` facade. Every one is labelled `table` (the outbox
//! table's name), so several outboxes in one process stay apart.

use metrics::{Counter, Gauge, Histogram};

/// Rows written and not yet confirmed by the broker (gauge, refreshed every
/// `maintenance_interval` by each relay).
pub const PENDING: &str = "mq_outbox_pending_rows";
/// Age of the oldest pending row in seconds (gauge; 0 when none).
pub const OLDEST_PENDING_AGE: &str = "mq_outbox_oldest_pending_age_seconds";
/// Time from a row's insert to the broker's confirmation of its publish
/// (histogram, seconds): the relay lag.
pub const RELAY_LAG: &str = "mq_outbox_relay_lag_seconds";
/// Rows published and confirmed (counter).
pub const RELAYED: &str = "mq_outbox_relayed_total";
/// Publishes that failed and will be retried after a backoff (counter).
pub const RELAY_ERRORS: &str = "mq_outbox_relay_errors_total";
/// Database calls of the relay that failed (counter).
pub const DATABASE_ERRORS: &str = "mq_outbox_database_errors_total";
/// Sent rows deleted after their retention (counter).
pub const PURGED: &str = "mq_outbox_purged_total";

/// The handles one relay records to, made once.
#[derive(Debug, Clone)]
pub(crate) struct RelayMetrics {
    pub(crate) pending: Gauge,
    pub(crate) oldest_age: Gauge,
    pub(crate) lag: Histogram,
    pub(crate) relayed: Counter,
    pub(crate) errors: Counter,
    pub(crate) database_errors: Counter,
    pub(crate) purged: Counter,
}

impl RelayMetrics {
    pub(crate) fn new(table: &str) -> Self {
        let labels = [("table", table.to_owned())];
        RelayMetrics {
            pending: metrics::gauge!(PENDING, &labels),
            oldest_age: metrics::gauge!(OLDEST_PENDING_AGE, &labels),
            lag: metrics::histogram!(RELAY_LAG, &labels),
            relayed: metrics::counter!(RELAYED, &labels),
            errors: metrics::counter!(RELAY_ERRORS, &labels),
            database_errors: metrics::counter!(DATABASE_ERRORS, &labels),
            purged: metrics::counter!(PURGED, &labels),
        }
    }
}
