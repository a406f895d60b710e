//! Request/reply over any backend.
//!
//! A [`Requester`] owns a private reply destination and a consumer on it.
//! [`Requester::request`] stamps each request with a fresh correlation id
//! (`mq-correlation-id`) and its reply destination (`mq-reply-to`), sends
//! it, and waits for the reply carrying the same correlation id. A reply
//! that arrives after its request timed out matches nothing and is dropped,
//! so it can never resolve a later request. The responder answers with
//! [`reply`], which copies the correlation id onto the response.
//!
//! Backends may supply a cheaper reply channel (RabbitMQ direct reply-to)
//! through [`Backend::reply_channel`](crate::backend::Backend::reply_channel).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::client::Client;
pub use crate::client::ReplyChannel;
use crate::consumer::DynConsumer;
use crate::delivery::Received;
use crate::error::{Error, ErrorKind, Result};
use crate::message::{headers, new_message_id, Message};
use crate::producer::{DynProducer, Producer};

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Received>>>>;

/// Sends requests and awaits their replies. Cheap to share behind an `Arc`;
/// any number of requests may be outstanding at once.
pub struct Requester {
    producer: DynProducer,
    reply_to: String,
    pending: Pending,
    listener: JoinHandle<()>,
}

impl Requester {
    /// A requester on `client`, with its own reply channel.
    pub async fn new(client: &Client) -> Result<Self> {
        let producer = client.producer().await?;
        let channel = client.backend().reply_channel().await?;
        Ok(Self::with_channel(producer, channel))
    }

    /// A requester sending with `producer` and receiving on `channel`.
    pub fn with_channel(producer: DynProducer, channel: ReplyChannel) -> Self {
        let pending: Pending = Arc::default();
        let listener = tokio::spawn(listen(channel.consumer, pending.clone()));
        Requester {
            producer,
            reply_to: channel.reply_to,
            pending,
            listener,
        }
    }

    /// Where replies to this requester go.
    pub fn reply_to(&self) -> &str {
        &self.reply_to
    }

    /// Sends `message` to `destination` and waits up to `timeout` for the reply.
    ///
    /// Fails with [`ErrorKind::Timeout`] when no reply arrives in time.
    pub async fn request(
        &self,
        destination: &str,
        mut message: Message,
        timeout: Duration,
    ) -> Result<Received> {
        let correlation_id = new_message_id();
        message
            .headers_mut()
            .insert(headers::CORRELATION_ID, correlation_id.clone());
        message
            .headers_mut()
            .insert(headers::REPLY_TO, self.reply_to.clone());
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(correlation_id.clone(), tx);
        let _forget = Forget(&self.pending, &correlation_id);

        self.producer.send(destination, message).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(Error::closed("the reply listener stopped")
                .with_operation("request")
                .with_destination(destination)),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("no reply within {timeout:?} (correlation id {correlation_id})"),
            )
            .with_operation("request")
            .with_destination(destination)),
        }
    }
}

/// Removes a request's entry however `request` ends (reply, timeout, cancel).
struct Forget<'a>(&'a Pending, &'a str);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.lock().remove(self.1);
    }
}

async fn listen(mut consumer: DynConsumer, pending: Pending) {
    loop {
        let delivery = match consumer.receive().await {
            Ok(d) => d,
            Err(e) if e.kind() == ErrorKind::Closed || !e.is_retryable() => {
                tracing::warn!(error = %e, "reply consumer stopped");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "receiving replies failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let waiter = delivery
            .headers()
            .get(headers::CORRELATION_ID)
            .and_then(|id| pending.lock().remove(id));
        match waiter {
            Some(tx) => {
                // The requester may have given up in between; nothing to do then.
                let _ = tx.send(delivery.received().clone());
            }
            None => {
                tracing::debug!(id = %delivery.id(), "reply matches no waiting request; dropped")
            }
        }
        if let Err(e) = delivery.ack().await {
            tracing::warn!(error = %e, "acking a reply failed");
        }
    }
}

impl Drop for Requester {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl fmt::Debug for Requester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Requester")
            .field("reply_to", &self.reply_to)
            .field("pending", &self.pending.lock().len())
            .finish()
    }
}

/// Sends `response` as the reply to `request`: to its `mq-reply-to`, with
/// its `mq-correlation-id`. Fails with [`ErrorKind::Config`] if the request
/// asked for no reply.
pub async fn reply<P: Producer + ?Sized>(
    producer: &P,
    request: &Received,
    mut response: Message,
) -> Result<()> {
    let h = request.headers();
    let (Some(reply_to), Some(correlation_id)) =
        (h.get(headers::REPLY_TO), h.get(headers::CORRELATION_ID))
    else {
        return Err(Error::config(format!(
            "message {} asks for no reply (no {} / {} header)",
            request.id(),
            headers::REPLY_TO,
            headers::CORRELATION_ID
        )));
    };
    response
        .headers_mut()
        .insert(headers::CORRELATION_ID, correlation_id);
    producer.send(reply_to, response).await
}

/// A handler that answers requests: runs `f` on each request and sends what
/// it returns as the reply (see [`reply`]). An error from `f` is handled
/// like any handler error (retry, dead-letter); a request without a
/// reply-to header is dead-lettered.
///
/// ```no_run
/// # async fn f(client: mq_core::Client) -> mq_core::Result<()> {
/// use mq_core::{rpc::responder, Message, Worker};
/// let producer = client.producer().await?;
/// let consumer = client.consumer("pricing").await?;
/// let worker = Worker::new(consumer, responder(producer, |req| async move {
///     Ok(Message::new(format!("price of {}", req.text()?)))
/// }));
/// # Ok(()) }
/// ```
pub fn responder<F, Fut>(producer: DynProducer, f: F) -> impl crate::Handler
where
    F: Fn(Received) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = std::result::Result<Message, crate::HandlerError>>
        + Send
        + 'static,
{
    let f = Arc::new(f);
    move |request: Received| {
        let (f, producer) = (f.clone(), producer.clone());
        async move {
            if request.headers().get(headers::REPLY_TO).is_none() {
                return Err(crate::HandlerError::permanent(format!(
                    "request {} has no {} header",
                    request.id(),
                    headers::REPLY_TO
                )));
            }
            let response = f(request.clone()).await?;
            reply(&*producer, &request, response).await?;
            Ok(())
        }
    }
}
