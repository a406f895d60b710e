//! Layers that wrap a [`Handler`](crate::Handler).
//!
//! # Order
//!
//! [`Worker::layer`](crate::Worker::layer) applies layers outermost first.
//! The order that gives the semantics of DESIGN.md §5 is:
//!
//! 1. [`DedupLayer`]: a message already done is acked without running
//!    anything; the lease covers every in-process retry below it.
//! 2. [`RetryLayer`]: retries transient failures in process, then asks the
//!    broker for a delayed redelivery, then dead-letters on exhaustion.
//! 3. [`ConcurrencyLimitLayer`]: a limit shared by several workers (the
//!    worker's own `concurrency` bounds a single worker).
//! 4. [`TimeoutLayer`]: bounds each attempt, so a hung attempt counts as a failure.
//! 5. [`CatchPanicLayer`]: a panic becomes a transient failure. The worker
//!    always adds this innermost, so a panicking handler is retried like
//!    any other failure and never kills the worker.
//!
//! ```
//! use std::time::Duration;
//! use mq_core::middleware::{DedupLayer, MemoryDedupStore, RetryLayer, RetryPolicy, TimeoutLayer};
//!
//! # fn f(consumer: mq_core::DynConsumer) {
//! let worker = mq_core::Worker::new(consumer, |_msg: mq_core::Received| async { Ok(()) })
//!     .layer(DedupLayer::new(MemoryDedupStore::new()))
//!     .layer(RetryLayer::new(RetryPolicy::exponential(Duration::from_millis(100)).max_attempts(5)))
//!     .layer(TimeoutLayer::new(Duration::from_secs(30)));
//! # }
//! ```

mod catch_panic;
mod concurrency;
pub mod dedup;
pub mod retry;
mod timeout;

pub use catch_panic::CatchPanicLayer;
pub use concurrency::ConcurrencyLimitLayer;
pub use dedup::{DedupLayer, DedupStore, MemoryDedupStore};
pub use retry::{Backoff, RetryLayer, RetryPolicy};
pub use timeout::TimeoutLayer;
