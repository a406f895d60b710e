//! Retry with backoff, then dead-letter.
//!
//! For each delivery the layer runs the handler up to
//! [`RetryPolicy::in_process_attempts`] times, sleeping the backoff between
//! runs. If it still fails, it returns a transient error asking the broker
//! to redeliver after the next backoff delay (a delayed nack), which frees
//! the worker slot and survives a crash. Once
//! [`RetryPolicy::max_attempts`] runs have failed, or the message is older
//! than [`RetryPolicy::max_elapsed`], it returns a permanent error and the
//! worker dead-letters the message with the reason in
//! `mq-dead-letter-reason`. Permanent errors skip every retry.
//!
//! Runs are counted from the broker's attempt number:
//! `(attempt - 1) * in_process_attempts + run in this delivery`, so the count
//! continues across redeliveries and restarts where the broker keeps it.

mod layer;
mod policy;

pub use layer::RetryLayer;
pub use policy::{Backoff, RetryPolicy};

#[cfg(test)]
mod tests;
