//! Where a delivery sits in Kafka: the typed metadata every delivery of a
//! [`KafkaConsumer`](crate::KafkaConsumer) carries. Plain data; the codec
//! fills it in, the settler reads it back.

/// Where a delivery sits in Kafka: read it with
/// [`Received::metadata::<KafkaMetadata>()`](mq_core::Received::metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaMetadata {
    /// The topic the record was read from (the retry topic for a retried message;
    /// [`Received::source`](mq_core::Received::source) is always the original topic).
    pub topic: std::sync::Arc<str>,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Which assignment of the partition handed it out (stale after a revoke).
    pub(crate) generation: u64,
}
