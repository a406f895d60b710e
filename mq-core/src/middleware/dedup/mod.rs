//! Idempotent consumers: run the handler once per message key.
//!
//! Before the handler runs, the layer claims the message's key in a
//! [`DedupStore`] with a *lease*; the lease is renewed while the handler
//! runs. On success the key is marked *done* for a TTL; on failure the claim
//! is released so the retry can run at once. Then:
//!
//! - a duplicate of a done key (within its TTL) is acked without running the handler;
//! - a duplicate that arrives while another consumer holds the lease is
//!   redelivered once the lease could have expired;
//! - if the process crashes mid-handler the lease is never released; it
//!   expires, and the broker's redelivery runs the handler again.
//!
//! The default key is `source/group/message-id`; set another with
//! [`DedupLayer::key_fn`] (for example a business id from the payload).
//! [`MemoryDedupStore`] serves one process; a store shared by many
//! consumer processes (Redis) implements the same trait.

mod layer;
mod memory_store;
#[cfg(feature = "redis")]
mod redis_store;
mod store;

pub use layer::DedupLayer;
pub use memory_store::MemoryDedupStore;
#[cfg(feature = "redis")]
pub use redis_store::RedisDedupStore;
pub use store::{Claim, DedupStore, LeaseToken};

#[cfg(test)]
mod tests;
