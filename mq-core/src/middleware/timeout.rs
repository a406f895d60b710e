//! Bounds the time one attempt may take.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::delivery::Received;
use crate::error::{Error, ErrorKind};
use crate::handler::{BoxHandler, Handler, HandlerError, HandlerResult, Layer};

/// Fails an attempt that runs longer than a limit, with a transient
/// [`ErrorKind::Timeout`] error (the attempt's future is dropped).
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    limit: Duration,
}

impl TimeoutLayer {
    /// Attempts longer than `limit` fail.
    pub fn new(limit: Duration) -> Self {
        TimeoutLayer { limit }
    }
}

impl Layer for TimeoutLayer {
    fn layer(&self, inner: BoxHandler) -> BoxHandler {
        Arc::new(Timeout {
            inner,
            limit: self.limit,
        })
    }
}

struct Timeout {
    inner: BoxHandler,
    limit: Duration,
}

impl Handler for Timeout {
    fn call(&self, message: Received) -> BoxFuture<'static, HandlerResult> {
        let fut = self.inner.call(message);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, fut).await {
                Ok(result) => result,
                Err(_) => {
                    crate::report::record(crate::report::Event::Timeout);
                    Err(HandlerError::from(
                        Error::new(
                            ErrorKind::Timeout,
                            format!("handler did not finish within {limit:?}"),
                        )
                        .with_retryable(true),
                    ))
                }
            }
        })
    }
}
