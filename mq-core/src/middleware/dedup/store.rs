//! Where dedup keys live.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;

/// Identifies one claim of a key, so only its holder can renew, release or
/// complete it after a lease changed hands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken(pub u128);

impl LeaseToken {
    /// A random token.
    pub fn random() -> Self {
        LeaseToken(fastrand::u128(..))
    }
}

/// The answer to [`DedupStore::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The key is ours for the lease: run the handler.
    Acquired(LeaseToken),
    /// The key was processed successfully before: skip it.
    Done,
    /// Someone else holds the lease for at most this long.
    InProgress(Duration),
}

/// Stores dedup keys: a lease while a handler runs, a done marker after.
///
/// Every operation must be atomic with respect to the others on the same key
/// across every process sharing the store.
#[async_trait]
pub trait DedupStore: Send + Sync + fmt::Debug + 'static {
    /// Claims `key` for `lease` unless it is done or leased by someone else.
    async fn claim(&self, key: &str, lease: Duration) -> Result<Claim>;

    /// Extends our lease on `key`; returns false if it is no longer ours.
    async fn renew(&self, key: &str, token: LeaseToken, lease: Duration) -> Result<bool>;

    /// Marks `key` done for `ttl` if `token` still holds its lease (fencing),
    /// or if the lease expired and nobody claimed the key since. Returns
    /// false, writing nothing, when the lease changed hands or the key is
    /// done already: another attempt owns the key now, and its outcome must
    /// not be overwritten.
    async fn complete(&self, key: &str, token: LeaseToken, ttl: Duration) -> Result<bool>;

    /// Drops our lease on `key` so another attempt can claim it now.
    async fn release(&self, key: &str, token: LeaseToken) -> Result<()>;
}
