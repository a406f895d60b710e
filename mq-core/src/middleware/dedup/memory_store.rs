//! A dedup store for one process.

use std::fmt;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::ops::compute::Op;
use moka::sync::Cache;
use moka::Expiry;

use super::store::{Claim, DedupStore, LeaseToken};
use crate::error::Result;

#[derive(Debug, Clone, Copy)]
enum State {
    Leased(LeaseToken),
    Done,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    state: State,
    until: Instant,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.until > now
    }
}

/// Each entry expires at its own deadline (lease or done TTL).
struct UntilDeadline;

impl Expiry<String, Entry> for UntilDeadline {
    fn expire_after_create(&self, _: &String, v: &Entry, now: Instant) -> Option<Duration> {
        Some(v.until.saturating_duration_since(now))
    }
    fn expire_after_update(
        &self,
        _: &String,
        v: &Entry,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.until.saturating_duration_since(now))
    }
}

/// An in-process [`DedupStore`] on a `moka` cache: leases and done markers
/// expire on their own; the number of keys is bounded (oldest evicted first).
#[derive(Clone)]
pub struct MemoryDedupStore {
    entries: Cache<String, Entry>,
}

impl MemoryDedupStore {
    /// A store holding up to one million keys.
    pub fn new() -> Self {
        Self::with_capacity(1_000_000)
    }

    /// A store holding up to `max_keys` keys.
    pub fn with_capacity(max_keys: u64) -> Self {
        MemoryDedupStore {
            entries: Cache::builder()
                .max_capacity(max_keys)
                .expire_after(UntilDeadline)
                .build(),
        }
    }

    /// Runs `f` atomically on the live entry of `key` (expired entries read as absent).
    fn update<R>(&self, key: &str, f: impl FnOnce(Option<Entry>, Instant) -> (Op<Entry>, R)) -> R {
        let mut out = None;
        self.entries.entry_by_ref(key).and_compute_with(|current| {
            let now = Instant::now();
            let live = current.map(|e| e.into_value()).filter(|e| e.live(now));
            let (op, r) = f(live, now);
            out = Some(r);
            op
        });
        out.expect("and_compute_with calls its closure exactly once")
    }
}

impl Default for MemoryDedupStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryDedupStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryDedupStore")
            .field("keys", &self.entries.entry_count())
            .finish()
    }
}

/// `now + d`, clamped (a `Duration::MAX` lease or TTL means "practically forever").
fn deadline(now: Instant, d: Duration) -> Instant {
    now.checked_add(crate::time::clamp(d)).unwrap_or(now)
}

#[async_trait]
impl DedupStore for MemoryDedupStore {
    async fn claim(&self, key: &str, lease: Duration) -> Result<Claim> {
        Ok(self.update(key, |current, now| match current {
            Some(Entry {
                state: State::Done, ..
            }) => (Op::Nop, Claim::Done),
            Some(Entry {
                state: State::Leased(_),
                until,
            }) => (
                Op::Nop,
                Claim::InProgress(until.saturating_duration_since(now)),
            ),
            None => {
                let token = LeaseToken::random();
                let entry = Entry {
                    state: State::Leased(token),
                    until: deadline(now, lease),
                };
                (Op::Put(entry), Claim::Acquired(token))
            }
        }))
    }

    async fn renew(&self, key: &str, token: LeaseToken, lease: Duration) -> Result<bool> {
        Ok(self.update(key, |current, now| match current {
            Some(Entry {
                state: State::Leased(t),
                ..
            }) if t == token => (
                Op::Put(Entry {
                    state: State::Leased(token),
                    until: deadline(now, lease),
                }),
                true,
            ),
            _ => (Op::Nop, false),
        }))
    }

    async fn complete(&self, key: &str, token: LeaseToken, ttl: Duration) -> Result<bool> {
        Ok(self.update(key, |current, now| {
            let ours = match current {
                Some(Entry {
                    state: State::Leased(t),
                    ..
                }) => t == token,
                Some(Entry {
                    state: State::Done, ..
                }) => false,
                // Our lease expired and nobody claimed the key since.
                None => true,
            };
            if !ours {
                return (Op::Nop, false);
            }
            let done = Entry {
                state: State::Done,
                until: deadline(now, ttl),
            };
            (Op::Put(done), true)
        }))
    }

    async fn release(&self, key: &str, token: LeaseToken) -> Result<()> {
        self.update(key, |current, _| match current {
            Some(Entry {
                state: State::Leased(t),
                ..
            }) if t == token => (Op::Remove, ()),
            _ => (Op::Nop, ()),
        });
        Ok(())
    }
}
