//! Queue statistics where the broker offers them.

/// What the broker reports about one source (and group). Fields the broker
/// does not report are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// Messages waiting to be delivered (RabbitMQ message count, SQS
    /// ApproximateNumberOfMessages).
    pub depth: Option<u64>,
    /// Messages delivered and not settled yet (SQS not-visible messages).
    pub in_flight: Option<u64>,
    /// Messages scheduled for later (delayed sends and nacks).
    pub delayed: Option<u64>,
    /// Consumers attached, where the broker tells.
    pub consumers: Option<u64>,
    /// Consumer lag per partition, `(partition, lag)` (Kafka).
    pub lag: Option<Vec<(i32, i64)>>,
}
