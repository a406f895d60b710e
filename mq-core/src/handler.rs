//! Handlers and the layers that wrap them.
//!
//! A [`Handler`] processes one [`Received`] message and says how it went:
//! `Ok(())` acks it; a [`HandlerError`] is either *transient* (nack, try
//! again, possibly after a delay) or *permanent* (dead-letter, never retry).
//! The [`Worker`](crate::Worker) turns that outcome into the settlement, so
//! handlers never settle by hand and cannot forget to.
//!
//! [`Layer`]s wrap a handler, tower-style, to add retry, deduplication,
//! timeouts, concurrency limits and the like (see [`crate::middleware`]).

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::delivery::Received;

/// Boxed error source of a [`HandlerError`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Why a handler failed, and whether trying again can help.
///
/// `?` converts any error into a `HandlerError`: an [`mq_core::Error`](crate::Error)
/// keeps its own classification (a decode failure is permanent), every other
/// error is transient. Use [`HandlerError::permanent`] for failures that no
/// retry can fix (invalid input, a business rule).
pub struct HandlerError {
    permanent: bool,
    retry_after: Option<Duration>,
    source: BoxError,
}

impl HandlerError {
    /// A failure that may go away: the message is delivered again.
    pub fn transient(error: impl Into<BoxError>) -> Self {
        HandlerError {
            permanent: false,
            retry_after: None,
            source: error.into(),
        }
    }

    /// A failure no retry can fix: the message goes to the dead-letter destination.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        HandlerError {
            permanent: true,
            retry_after: None,
            source: error.into(),
        }
    }

    /// Asks for the next attempt no sooner than `delay` (e.g. a rate limit's
    /// Retry-After). Overrides the retry policy's delay for this failure.
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(crate::time::clamp(delay));
        self
    }

    /// Whether retrying is pointless.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The delay requested before the next attempt, if any.
    pub fn requested_delay(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The underlying error.
    pub fn source(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.source
    }

    /// Converts into the underlying error.
    pub fn into_source(self) -> BoxError {
        self.source
    }
}

impl<E: StdError + Send + Sync + 'static> From<E> for HandlerError {
    fn from(error: E) -> Self {
        let boxed: BoxError = Box::new(error);
        let permanent = boxed
            .downcast_ref::<crate::Error>()
            .is_some_and(|e| !e.is_retryable());
        HandlerError {
            permanent,
            retry_after: None,
            source: boxed,
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("permanent", &self.permanent)
            .field("retry_after", &self.retry_after)
            .field("source", &self.source)
            .finish()
    }
}

/// What a handler returns.
pub type HandlerResult = Result<(), HandlerError>;

/// Processes one message. Implemented for every
/// `Fn(Received) -> impl Future<Output = HandlerResult>` closure:
///
/// ```
/// use mq_core::{HandlerError, Received};
///
/// let handler = |msg: Received| async move {
///     let text = msg.text()?;
///     if text.is_empty() {
///         return Err(HandlerError::permanent("empty job"));
///     }
///     Ok(())
/// };
/// # fn is_handler<H: mq_core::Handler>(_: H) {}
/// # is_handler(handler);
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Handles `message`. It may be called again for the same message (retries).
    fn call(&self, message: Received) -> BoxFuture<'static, HandlerResult>;
}

impl<F, Fut> Handler for F
where
    F: Fn(Received) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn call(&self, message: Received) -> BoxFuture<'static, HandlerResult> {
        Box::pin(self(message))
    }
}

/// What a [`BatchHandler`] returns: one result per message, in order, or
/// one error for the whole batch.
pub type BatchResult = Result<Vec<HandlerResult>, HandlerError>;

/// Processes a batch of messages (see [`Worker::batch`](crate::Worker::batch)).
/// Implemented for every `Fn(Vec<Received>) -> impl Future<Output = BatchResult>`.
pub trait BatchHandler: Send + Sync + 'static {
    /// Handles `batch`; each message is settled by its own result.
    fn call(&self, batch: Vec<Received>) -> BoxFuture<'static, BatchResult>;
}

impl<F, Fut> BatchHandler for F
where
    F: Fn(Vec<Received>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = BatchResult> + Send + 'static,
{
    fn call(&self, batch: Vec<Received>) -> BoxFuture<'static, BatchResult> {
        Box::pin(self(batch))
    }
}

/// A type-erased, shareable handler.
pub type BoxHandler = Arc<dyn Handler>;

impl Handler for BoxHandler {
    fn call(&self, message: Received) -> BoxFuture<'static, HandlerResult> {
        (**self).call(message)
    }
}

/// Wraps a handler in another (tower's `Layer`, over type-erased handlers).
pub trait Layer: Send + Sync + 'static {
    /// The handler that runs `inner` with this layer's behaviour around it.
    fn layer(&self, inner: BoxHandler) -> BoxHandler;
}

/// A layer from a closure: `f(message, next)` runs around the inner handler
/// `next` (call `next.call(message)` to go on, or return without calling it).
///
/// ```
/// use mq_core::{layer_fn, Received};
///
/// let log = layer_fn(|msg: Received, next| async move {
///     let id = msg.id().to_owned();
///     let result = next.call(msg).await;
///     println!("{id}: {}", if result.is_ok() { "ok" } else { "failed" });
///     result
/// });
/// # fn is_layer<L: mq_core::Layer>(_: L) {}
/// # is_layer(log);
/// ```
pub fn layer_fn<F, Fut>(f: F) -> LayerFn<F>
where
    F: Fn(Received, BoxHandler) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    LayerFn(Arc::new(f))
}

/// The layer [`layer_fn`] makes.
pub struct LayerFn<F>(Arc<F>);

impl<F> fmt::Debug for LayerFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LayerFn")
    }
}

impl<F, Fut> Layer for LayerFn<F>
where
    F: Fn(Received, BoxHandler) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn layer(&self, inner: BoxHandler) -> BoxHandler {
        let f = self.0.clone();
        Arc::new(move |message: Received| f(message, inner.clone()))
    }
}

/// A handler that decodes each message's JSON payload into `T` before
/// calling `f(value, message)`. A payload that does not decode is a
/// permanent failure (dead-lettered, never retried), as with
/// [`Received::json`]. [`Worker::json`](crate::Worker::json) uses it.
pub fn json_handler<T, F, Fut>(f: F) -> impl Handler
where
    T: serde::de::DeserializeOwned + Send + 'static,
    F: Fn(T, Received) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    let f = Arc::new(f);
    move |message: Received| {
        let f = f.clone();
        async move {
            let value = message.json::<T>()?;
            f(value, message).await
        }
    }
}

/// Applies `layers` around `handler`; the first layer is the outermost (it
/// sees each message first and the outcome last), as in tower's `ServiceBuilder`.
pub fn apply_layers(handler: BoxHandler, layers: &[Arc<dyn Layer>]) -> BoxHandler {
    layers
        .iter()
        .rev()
        .fold(handler, |inner, layer| layer.layer(inner))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_mark_keeps_mq_error_classification() {
        fn decode() -> HandlerResult {
            Err(crate::Error::decode("bad json"))?;
            Ok(())
        }
        fn io() -> HandlerResult {
            Err(std::io::Error::other("disk"))?;
            Ok(())
        }
        fn connection() -> HandlerResult {
            Err(crate::Error::new(crate::ErrorKind::Connection, "down"))?;
            Ok(())
        }
        assert!(decode().expect_err("err").is_permanent());
        assert!(!io().expect_err("err").is_permanent());
        assert!(!connection().expect_err("err").is_permanent());
        assert!(HandlerError::permanent("no").is_permanent());
        let e = HandlerError::transient("later").retry_after(Duration::from_secs(3));
        assert_eq!(e.requested_delay(), Some(Duration::from_secs(3)));
        assert_eq!(e.to_string(), "later");
    }
}
