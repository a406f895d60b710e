//! `mq`: one async API for RabbitMQ, Kafka, Amazon SQS and an in-memory broker.
#![deny(missing_docs)]
pub use mq_core::*;
