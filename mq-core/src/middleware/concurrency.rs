//! A limit on handlers running at once, shareable between workers.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::Semaphore;

use crate::delivery::Received;
use crate::handler::{BoxHandler, Handler, HandlerError, HandlerResult, Layer};

/// Runs at most `limit` attempts at once across every handler this layer (or
/// a clone of it) wraps; the others wait. Clone the layer to share one limit
/// between workers, e.g. to bound CPU-heavy image resizing process-wide.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimitLayer {
    permits: Arc<Semaphore>,
}

impl ConcurrencyLimitLayer {
    /// At most `limit` (at least 1) attempts at once.
    pub fn new(limit: usize) -> Self {
        ConcurrencyLimitLayer {
            permits: Arc::new(Semaphore::new(limit.max(1))),
        }
    }

    /// Attempts that may start now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

impl Layer for ConcurrencyLimitLayer {
    fn layer(&self, inner: BoxHandler) -> BoxHandler {
        Arc::new(ConcurrencyLimit {
            inner,
            permits: self.permits.clone(),
        })
    }
}

struct ConcurrencyLimit {
    inner: BoxHandler,
    permits: Arc<Semaphore>,
}

impl Handler for ConcurrencyLimit {
    fn call(&self, message: Received) -> BoxFuture<'static, HandlerResult> {
        let inner = self.inner.clone();
        let permits = self.permits.clone();
        Box::pin(async move {
            let _permit = permits
                .acquire_owned()
                .await
                .map_err(HandlerError::transient)?;
            inner.call(message).await
        })
    }
}
