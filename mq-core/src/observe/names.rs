//! Metric names. Counters end in `_total`, durations are histograms in seconds.

/// Messages the broker confirmed. Labels: backend, destination.
pub const SENT: &str = "mq_messages_sent_total";
/// Sends that failed. Labels: backend, destination, kind.
pub const SEND_ERRORS: &str = "mq_send_errors_total";
/// Time from `send` to the broker's confirmation (0 for a send that
/// finished without waiting, as `memory://` sends do). Labels: backend,
/// destination.
pub const SEND_DURATION: &str = "mq_send_duration_seconds";
/// Deliveries received. Labels: backend, source, group.
pub const RECEIVED: &str = "mq_messages_received_total";
/// Deliveries acked. Labels: backend, source, group.
pub const ACKED: &str = "mq_messages_acked_total";
/// Deliveries nacked for redelivery. Labels: backend, source, group.
pub const NACKED: &str = "mq_messages_nacked_total";
/// Deliveries moved to the dead-letter destination. Labels: backend, source, group.
pub const DEAD_LETTERED: &str = "mq_messages_dead_lettered_total";
/// Dead letters that could not be written (the message went back to its
/// source and the settlement returned the error). Labels: backend, source, destination.
pub const DEAD_LETTER_ERRORS: &str = "mq_dead_letter_errors_total";
/// Deliveries dropped unsettled and returned to the broker. Labels: backend, source, group.
pub const ABANDONED: &str = "mq_messages_abandoned_total";
/// Duplicates the dedup layer acked without running the handler. Labels: backend, source, group.
pub const DUPLICATES: &str = "mq_duplicates_dropped_total";
/// Dedup leases lost while a handler ran (renewal refused or failing past the lease).
pub const DEDUP_LEASES_LOST: &str = "mq_dedup_leases_lost_total";
/// Failed attempts the retry layer will retry. Labels: backend, source, group.
pub const RETRIES: &str = "mq_retries_total";
/// Handler run time. Labels: backend, source, group, outcome (ack, nack, dead_letter).
pub const HANDLER_DURATION: &str = "mq_handler_duration_seconds";
/// Handlers running now. Labels: backend, source, group.
pub const IN_FLIGHT: &str = "mq_handlers_in_flight";

/// Adds one to counter `name` labelled with `message`'s backend, source and group.
pub(crate) fn count_for(name: &'static str, message: &crate::Received) {
    metrics::counter!(name,
        "backend" => message.backend(),
        "source" => message.source().to_owned(),
        "group" => message.group().unwrap_or("").to_owned())
    .increment(1);
}
