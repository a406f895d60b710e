//! The retry layer.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;

use super::RetryPolicy;
use crate::delivery::Received;
use crate::handler::{BoxHandler, Handler, HandlerError, HandlerResult, Layer};

/// Retries transient failures as its [`RetryPolicy`] says; see the
/// [module docs](super) for the exact behaviour.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    policy: Arc<RetryPolicy>,
}

impl RetryLayer {
    /// Retries as `policy` says.
    pub fn new(policy: RetryPolicy) -> Self {
        RetryLayer {
            policy: Arc::new(policy),
        }
    }
}

impl Layer for RetryLayer {
    fn layer(&self, inner: BoxHandler) -> BoxHandler {
        Arc::new(Retry {
            inner,
            policy: self.policy.clone(),
        })
    }
}

struct Retry {
    inner: BoxHandler,
    policy: Arc<RetryPolicy>,
}

impl Handler for Retry {
    fn call(&self, message: Received) -> BoxFuture<'static, HandlerResult> {
        let inner = self.inner.clone();
        let policy = self.policy.clone();
        Box::pin(async move {
            let per_delivery = policy.get_in_process_attempts();
            let earlier = message
                .attempt()
                .saturating_sub(1)
                .saturating_mul(per_delivery);
            let mut run = 0;
            loop {
                run += 1;
                let failures = earlier.saturating_add(run);
                let error = match inner.call(message.clone()).await {
                    Ok(()) => return Ok(()),
                    Err(e) if e.is_permanent() => return Err(e),
                    Err(e) => e,
                };
                if failures >= policy.get_max_attempts() {
                    return Err(HandlerError::permanent(format!(
                        "gave up after {failures} attempts: {error}"
                    )));
                }
                if let Some(age) = too_old(&message, &policy) {
                    return Err(HandlerError::permanent(format!(
                        "gave up after {failures} attempts, message is {age:?} old: {error}"
                    )));
                }
                let delay = error
                    .requested_delay()
                    .unwrap_or_else(|| policy.delay(failures));
                tracing::debug!(id = %message.id(), attempt = failures, ?delay, %error,
                    "handler failed; retrying");
                crate::observe::names::count_for(crate::observe::names::RETRIES, &message);
                if run >= per_delivery {
                    return Err(error.retry_after(delay));
                }
                tokio::time::sleep(delay).await;
                crate::report::record(crate::report::Event::RetriedInProcess);
            }
        })
    }
}

fn too_old(message: &Received, policy: &RetryPolicy) -> Option<Duration> {
    let limit = policy.get_max_elapsed()?;
    let age = SystemTime::now()
        .duration_since(message.timestamp()?)
        .ok()?;
    (age > limit).then_some(age)
}
