//! The dedup layer.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::store::{Claim, DedupStore};
use crate::delivery::Received;
use crate::handler::{BoxHandler, Handler, HandlerError, HandlerResult, Layer};

type KeyFn = dyn Fn(&Received) -> String + Send + Sync;

/// Runs the handler at most once per key; see the [module docs](super).
#[derive(Clone)]
pub struct DedupLayer {
    store: Arc<dyn DedupStore>,
    key_fn: Arc<KeyFn>,
    lease: Duration,
    ttl: Duration,
}

impl DedupLayer {
    /// Dedup through `store` with a 30 s lease and a 24 h done TTL.
    pub fn new(store: impl DedupStore) -> Self {
        Self::with_store(Arc::new(store))
    }

    /// Dedup through a shared store.
    pub fn with_store(store: Arc<dyn DedupStore>) -> Self {
        DedupLayer {
            store,
            key_fn: Arc::new(default_key),
            lease: Duration::from_secs(30),
            ttl: Duration::from_secs(24 * 3600),
        }
    }

    /// How long a claim lasts without renewal: the delay before a crashed
    /// handler's message can run again. Renewed every third of it while the
    /// handler runs.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(10));
        self
    }

    /// How long a processed key is remembered.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Derives the key from the message (default: `source/group/message-id`).
    pub fn key_fn(mut self, f: impl Fn(&Received) -> String + Send + Sync + 'static) -> Self {
        self.key_fn = Arc::new(f);
        self
    }
}

fn default_key(m: &Received) -> String {
    format!("{}/{}/{}", m.source(), m.group().unwrap_or(""), m.id())
}

impl fmt::Debug for DedupLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DedupLayer")
            .field("store", &self.store)
            .field("lease", &self.lease)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Layer for DedupLayer {
    fn layer(&self, inner: BoxHandler) -> BoxHandler {
        Arc::new(Dedup {
            inner,
            config: self.clone(),
        })
    }
}

struct Dedup {
    inner: BoxHandler,
    config: DedupLayer,
}

impl Handler for Dedup {
    fn call(&self, message: Received) -> BoxFuture<'static, HandlerResult> {
        let inner = self.inner.clone();
        let DedupLayer {
            store, lease, ttl, ..
        } = self.config.clone();
        let key = (self.config.key_fn)(&message);
        Box::pin(async move {
            let token = match store.claim(&key, lease).await? {
                Claim::Acquired(token) => token,
                Claim::Done => {
                    tracing::debug!(%key, id = %message.id(), "duplicate suppressed");
                    crate::observe::names::count_for(crate::observe::names::DUPLICATES, &message);
                    crate::report::record(crate::report::Event::Duplicate);
                    return Ok(());
                }
                Claim::InProgress(remaining) => {
                    return Err(HandlerError::transient(format!(
                        "message {key} is being processed elsewhere"
                    ))
                    .retry_after(remaining.max(Duration::from_millis(10))));
                }
            };
            // Keep the lease while the handler runs, however long it takes.
            // A lease that is lost (renewal refused, or failing until the
            // lease ran out) is logged and counted once; the handler runs on
            // (stopping it halfway is worse), but `complete` is fenced by the
            // token, so it cannot overwrite the new owner's outcome.
            let renew = {
                let (store, key) = (store.clone(), key.clone());
                let id = message.id().to_owned();
                async move {
                    let mut last_renewed = tokio::time::Instant::now();
                    loop {
                        tokio::time::sleep(lease / 3).await;
                        match store.renew(&key, token, lease).await {
                            Ok(true) => last_renewed = tokio::time::Instant::now(),
                            Ok(false) => break,
                            Err(e) => {
                                tracing::warn!(%key, error = %e, "dedup lease renewal failed");
                                if last_renewed.elapsed() >= lease {
                                    break;
                                }
                            }
                        }
                    }
                    tracing::warn!(%key, %id, "dedup lease lost while the handler runs; another consumer may take the key");
                    metrics::counter!(crate::observe::names::DEDUP_LEASES_LOST).increment(1);
                    futures_util::future::pending::<()>().await
                }
            };
            let result = tokio::select! {
                result = inner.call(message) => result,
                () = renew => unreachable_renew(),
            };
            match &result {
                Ok(()) => {
                    if !store.complete(&key, token, ttl).await? {
                        tracing::warn!(%key, "handler finished after its dedup lease changed hands; not marking the key done");
                        metrics::counter!(crate::observe::names::DEDUP_LEASES_LOST).increment(1);
                    }
                }
                Err(_) => {
                    if let Err(e) = store.release(&key, token).await {
                        tracing::warn!(%key, error = %e, "dedup lease release failed; it will expire");
                    }
                }
            }
            result
        })
    }
}

/// The renewal future never completes; this keeps `select!` total.
fn unreachable_renew() -> HandlerResult {
    Err(HandlerError::transient(
        "dedup lease renewal ended unexpectedly",
    ))
}
