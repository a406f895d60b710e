//! Sending messages.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::message::Message;

/// Sends messages to destinations (queues or topics).
///
/// `send` returns once the broker has taken responsibility for the message
/// (publisher confirm, Kafka ack, SQS response). Producers are cheap to clone
/// and safe to share: call `send` from many tasks, or keep many sends in
/// flight from one task with [`ProducerExt::pipeline`]; awaiting each send
/// before starting the next is the slow way.
#[async_trait]
pub trait Producer: Send + Sync + fmt::Debug {
    /// Sends `message` to `destination` and waits for the broker's confirmation.
    async fn send(&self, destination: &str, message: Message) -> Result<()>;

    /// Sends `messages` to `destination`, as few broker calls as the backend
    /// allows, and reports each message's outcome in input order.
    ///
    /// The default runs the sends concurrently.
    async fn send_batch(&self, destination: &str, messages: Vec<Message>) -> BatchReport {
        let ids: Vec<String> = messages.iter().map(|m| m.id().to_owned()).collect();
        let results =
            futures_util::future::join_all(messages.into_iter().map(|m| self.send(destination, m)))
                .await;
        BatchReport::new(ids.into_iter().zip(results).collect())
    }

    /// Sends `message` without a future when the backend can hand it over
    /// at once (the in-memory broker with room in every group), or says how
    /// to finish. [`Pipeline`](crate::Pipeline) and the client's producer
    /// try this first: it spares a send the boxed futures of three async
    /// trait layers (pipeline, instrumentation, backend), which were most of
    /// the memory backend's publish cost.
    ///
    /// [`SendNow::Later`] means nothing was done: the caller sends the
    /// message with [`send`](Producer::send). The default always says so.
    fn send_now(&self, destination: &str, message: Message) -> SendNow {
        let _ = destination;
        SendNow::Later(message)
    }

    /// Whether [`send_now`](Producer::send_now) may complete a send (false
    /// by default). Wrappers ask it once, so a backend without a fast path
    /// costs them nothing per send.
    fn can_send_now(&self) -> bool {
        false
    }

    /// Flushes pending sends and releases the producer's resources. Sends
    /// after `close` fail with [`ErrorKind::Closed`](crate::ErrorKind::Closed).
    async fn close(&self) -> Result<()> {
        Ok(())
    }

    /// The state of the producer's connection (healthy unless the backend
    /// tracks its connection).
    fn health(&self) -> crate::health::Health {
        crate::health::Health::healthy()
    }
}

/// What [`Producer::send_now`] did.
pub enum SendNow {
    /// Sent, or failed to, without waiting.
    Done(Result<()>),
    /// Nothing was done: send the message with [`Producer::send`].
    Later(Message),
    /// The send started and must wait (for room, a confirmation): the
    /// future finishes it. Dropping it cancels the send, whose outcome is
    /// then unknown, as with a dropped [`Producer::send`] future.
    Started(Sending),
}

/// A started send ([`SendNow::Started`]): the backend's future, and what
/// the client's instrumentation counts when it ends. The count rides along
/// with the backend's future instead of wrapping it in a second boxed
/// future: a busy producer makes one of these per message.
pub struct Sending {
    future: Pin<Box<dyn Future<Output = Result<()>> + Send + 'static>>,
    counted: Option<(Arc<dyn CountSend>, Instant)>,
}

/// Counts a started send when it ends, given when it started waiting (the
/// client's instrumentation implements it; defined here so that this file
/// does not depend on `observe`).
pub(crate) trait CountSend: Send + Sync {
    fn count(&self, started: Instant, result: &Result<()>);
}

impl Sending {
    /// The send that `future` finishes.
    pub fn new(future: impl Future<Output = Result<()>> + Send + 'static) -> Self {
        Sending {
            future: Box::pin(future),
            counted: None,
        }
    }

    /// Counts the outcome with `by` when the send ends; it waited since
    /// `started`.
    pub(crate) fn counted(mut self, by: Arc<dyn CountSend>, started: Instant) -> Self {
        self.counted = Some((by, started));
        self
    }
}

impl Future for Sending {
    type Output = Result<()>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<()>> {
        let this = &mut *self;
        let result = std::task::ready!(this.future.as_mut().poll(cx));
        if let Some((by, started)) = this.counted.take() {
            by.count(started, &result);
        }
        std::task::Poll::Ready(result)
    }
}

impl fmt::Debug for Sending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sending").finish_non_exhaustive()
    }
}

impl SendNow {
    /// Finishes the send: `Later` goes through `producer.send`.
    pub async fn finish<P: Producer + ?Sized>(self, producer: &P, destination: &str) -> Result<()> {
        match self {
            SendNow::Done(result) => result,
            SendNow::Started(sending) => sending.await,
            SendNow::Later(message) => producer.send(destination, message).await,
        }
    }
}

impl fmt::Debug for SendNow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendNow::Done(r) => f.debug_tuple("Done").field(r).finish(),
            SendNow::Later(m) => f.debug_tuple("Later").field(m).finish(),
            SendNow::Started(_) => f.write_str("Started(..)"),
        }
    }
}

/// The future of a forwarded trait method (what `async_trait` makes), for
/// the pointer impls here and in `consumer.rs`.
pub(crate) type Forwarded<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// `Producer` for a pointer to a producer: each method hands back the
/// pointee's future as it is. Written out instead of with `async_trait`,
/// which would box a second future around the first on every send (this is
/// on the hot path: `DynProducer` is an `Arc<dyn Producer>`).
macro_rules! forward_producer {
    ($ptr:ident) => {
        impl<P: Producer + ?Sized> Producer for $ptr<P> {
            fn send<'s, 'd, 'async_trait>(
                &'s self,
                destination: &'d str,
                message: Message,
            ) -> Forwarded<'async_trait, Result<()>>
            where
                's: 'async_trait,
                'd: 'async_trait,
                Self: 'async_trait,
            {
                (**self).send(destination, message)
            }

            fn send_batch<'s, 'd, 'async_trait>(
                &'s self,
                destination: &'d str,
                messages: Vec<Message>,
            ) -> Forwarded<'async_trait, BatchReport>
            where
                's: 'async_trait,
                'd: 'async_trait,
                Self: 'async_trait,
            {
                (**self).send_batch(destination, messages)
            }

            fn close<'s, 'async_trait>(&'s self) -> Forwarded<'async_trait, Result<()>>
            where
                's: 'async_trait,
                Self: 'async_trait,
            {
                (**self).close()
            }

            fn send_now(&self, destination: &str, message: Message) -> SendNow {
                (**self).send_now(destination, message)
            }

            fn can_send_now(&self) -> bool {
                (**self).can_send_now()
            }

            fn health(&self) -> crate::health::Health {
                (**self).health()
            }
        }
    };
}

forward_producer!(Arc);
forward_producer!(Box);

/// A producer whose backend is chosen at run time (what [`Client::producer`](crate::Client::producer) returns).
pub type DynProducer = Arc<dyn Producer>;

/// The outcome of each message of a batch send, in input order.
#[derive(Debug)]
pub struct BatchReport {
    results: Vec<(String, Result<()>)>,
}

impl BatchReport {
    /// A report from `(message id, outcome)` pairs in input order.
    pub fn new(results: Vec<(String, Result<()>)>) -> Self {
        BatchReport { results }
    }

    /// Every message's id and outcome, in input order.
    pub fn results(&self) -> &[(String, Result<()>)] {
        &self.results
    }

    /// How many messages the broker accepted.
    pub fn sent(&self) -> usize {
        self.results.iter().filter(|(_, r)| r.is_ok()).count()
    }

    /// The messages that failed, with their index in the batch.
    pub fn failures(&self) -> impl Iterator<Item = (usize, &str, &Error)> {
        self.results
            .iter()
            .enumerate()
            .filter_map(|(i, (id, r))| r.as_ref().err().map(|e| (i, id.as_str(), e)))
    }

    /// Every message's id and outcome, in input order, owned.
    pub fn into_results(self) -> Vec<(String, Result<()>)> {
        self.results
    }

    /// Whether every message was accepted.
    pub fn is_ok(&self) -> bool {
        self.results.iter().all(|(_, r)| r.is_ok())
    }

    /// `Ok` if every message was accepted, else the first error.
    pub fn into_result(self) -> Result<()> {
        self.results
            .into_iter()
            .find_map(|(_, r)| r.err())
            .map_or(Ok(()), Err)
    }
}

/// Conveniences for every [`Producer`].
#[async_trait]
pub trait ProducerExt: Producer {
    /// Sends `value` as JSON (content type `application/json`).
    async fn send_json<T: serde::Serialize + Sync + ?Sized>(
        &self,
        destination: &str,
        value: &T,
    ) -> Result<()> {
        self.send(destination, Message::json(value)?).await
    }

    /// A [`Pipeline`](crate::Pipeline) that keeps up to `max_in_flight` sends
    /// running at once over a clone of this producer.
    fn pipeline(&self, max_in_flight: usize) -> crate::Pipeline<Self>
    where
        Self: Clone + Sized + 'static,
    {
        crate::Pipeline::new(self.clone(), max_in_flight)
    }
}

impl<P: Producer + ?Sized> ProducerExt for P {}
