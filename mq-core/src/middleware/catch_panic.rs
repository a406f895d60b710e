//! Turns a panicking handler into a transient failure.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::delivery::Received;
use crate::handler::{BoxHandler, Handler, HandlerError, HandlerResult, Layer};

/// Catches a panic in the wrapped handler and reports it as a transient
/// failure, so the message is retried (and dead-lettered by the retry layer
/// if it keeps panicking) and the worker keeps running.
#[derive(Debug, Clone, Copy, Default)]
pub struct CatchPanicLayer;

impl Layer for CatchPanicLayer {
    fn layer(&self, inner: BoxHandler) -> BoxHandler {
        Arc::new(CatchPanic { inner })
    }
}

struct CatchPanic {
    inner: BoxHandler,
}

impl Handler for CatchPanic {
    fn call(&self, message: Received) -> BoxFuture<'static, HandlerResult> {
        let inner = self.inner.clone();
        Box::pin(async move {
            // Building the future may panic too, so it happens inside the guard.
            let attempt = AssertUnwindSafe(async move { inner.call(message).await });
            match attempt.catch_unwind().await {
                Ok(result) => result,
                Err(panic) => {
                    crate::report::record(crate::report::Event::Panic);
                    Err(HandlerError::transient(format!(
                        "handler panicked: {}",
                        panic_message(&*panic)
                    )))
                }
            }
        })
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
