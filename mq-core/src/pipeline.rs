//! Many sends in flight from one task.
//!
//! Each `send` waits for the broker's confirmation, so awaiting them one by one
//! costs a round trip per message. A [`Pipeline`] keeps up to
//! `max_in_flight` sends running at once and only waits when the window is
//! full, which is how brokers reach their throughput (Kafka batching,
//! RabbitMQ confirms, SQS batches).
//!
//! The sends are futures polled by the pipeline itself (no task per
//! message): each is started on the `send` call that adds it, and they make
//! progress whenever `send` or `finish` runs. Every backend hands a message to
//! its client library on that first poll (or in [`Producer::send_now`],
//! before the future exists: a Kafka record), so the broker I/O goes on in
//! the background in between. A send the producer can finish at once
//! ([`Producer::send_now`], the in-memory broker with room) is no future
//! at all and never takes a place in the window. Finished sends are
//! recorded in the report as the window makes room for new ones, and by
//! `finish`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};

use crate::error::{Error, Result};
use crate::message::{Message, MessageId};
use crate::producer::{Producer, SendNow, Sending};

/// Sends with up to `max_in_flight` confirmations outstanding. Call
/// [`Pipeline::finish`] to wait for the rest and get the report; dropping a
/// pipeline cancels the sends still in flight (they may or may not arrive).
pub struct Pipeline<P> {
    producer: P,
    max_in_flight: usize,
    in_flight: FuturesUnordered<InFlight>,
    /// The last destination, shared by the sends to it (no copy per message).
    destination: Option<Arc<str>>,
    report: PipelineReport,
}

/// A send in flight and the id its failure is reported under (kept inline,
/// not as a `String` copy per message): the backend's future as it came,
/// without a box of the pipeline's own around it.
struct InFlight {
    id: MessageId,
    sending: Sending,
}

impl Future for InFlight {
    type Output = (MessageId, Result<()>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        match Pin::new(&mut this.sending).poll(cx) {
            Poll::Ready(result) => {
                let id = std::mem::replace(&mut this.id, MessageId::from(""));
                Poll::Ready((id, result))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<P: Producer + Clone + Send + 'static> Pipeline<P> {
    /// A pipeline over `producer` with at most `max_in_flight` (at least 1) sends outstanding.
    pub fn new(producer: P, max_in_flight: usize) -> Self {
        Pipeline {
            producer,
            max_in_flight: max_in_flight.max(1),
            in_flight: FuturesUnordered::new(),
            destination: None,
            report: PipelineReport::default(),
        }
    }

    /// Starts sending `message` to `destination`; waits only while the window is full.
    pub async fn send(&mut self, destination: &str, message: Message) {
        while self.in_flight.len() >= self.max_in_flight {
            self.reap_one().await;
        }
        let id = message.id.clone();
        let message = match self.producer.send_now(destination, message) {
            SendNow::Done(result) => {
                // Sent without a future: nothing joins the window.
                self.record((id, result));
                return self.collect_finished();
            }
            SendNow::Started(sending) => {
                // Already with the client library: no poll needed to start
                // it. Polled when the window is full or by `finish`, as a
                // hand-written window is. Polling the window after every
                // such send as well, to record finished ones early, made
                // the Kafka producer task wait twice per batch round
                // instead of once: 96% of the raw client's publish rate
                // against 99-100% without.
                self.in_flight.push(InFlight { id, sending });
                return;
            }
            SendNow::Later(message) => message,
        };
        let producer = self.producer.clone();
        let destination = match &self.destination {
            Some(d) if **d == *destination => d.clone(),
            _ => {
                let d: Arc<str> = Arc::from(destination);
                self.destination = Some(d.clone());
                d
            }
        };
        self.in_flight.push(InFlight {
            id,
            sending: Sending::new(async move { producer.send(&destination, message).await }),
        });
        self.collect_finished();
    }

    /// Starts the newest send and records finished ones, without waiting.
    fn collect_finished(&mut self) {
        while !self.in_flight.is_empty() {
            match self.in_flight.next().now_or_never() {
                Some(Some(done)) => self.record(done),
                _ => break,
            }
        }
    }

    /// Sends in the window: waiting for confirmation, or confirmed and not
    /// yet recorded in the [report](Pipeline::report).
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Confirmed and failed counts of the sends recorded so far: a send
    /// that finished is recorded when the window is full or by
    /// [`finish`](Pipeline::finish), whichever comes first.
    pub fn report(&self) -> &PipelineReport {
        &self.report
    }

    /// Waits for every send in flight and returns the report.
    pub async fn finish(mut self) -> PipelineReport {
        while !self.in_flight.is_empty() {
            self.reap_one().await;
        }
        std::mem::take(&mut self.report)
    }

    async fn reap_one(&mut self) {
        if let Some(done) = self.in_flight.next().await {
            self.record(done);
        }
    }

    fn record(&mut self, (id, result): (MessageId, Result<()>)) {
        match result {
            Ok(()) => self.report.sent += 1,
            Err(e) => self.report.failures.push((id.into_string(), e)),
        }
    }
}

impl<P> fmt::Debug for Pipeline<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("max_in_flight", &self.max_in_flight)
            .field("in_flight", &self.in_flight.len())
            .field("report", &self.report)
            .finish()
    }
}

/// What a [`Pipeline`] sent.
#[derive(Debug, Default)]
pub struct PipelineReport {
    /// Messages the broker confirmed.
    pub sent: u64,
    /// Messages that failed: their id and the error.
    pub failures: Vec<(String, Error)>,
}

impl PipelineReport {
    /// `Ok(sent)` if nothing failed, else the first error.
    pub fn into_result(self) -> Result<u64> {
        match self.failures.into_iter().next() {
            Some((_, e)) => Err(e),
            None => Ok(self.sent),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;

    /// Starts every send; a payload of "fail" fails after a yield.
    #[derive(Clone, Debug)]
    struct Started;

    #[async_trait]
    impl Producer for Started {
        async fn send(&self, _: &str, _: Message) -> Result<()> {
            unreachable!("every send starts through send_now")
        }

        fn send_now(&self, _: &str, message: Message) -> SendNow {
            let fail = message.payload().as_ref() == b"fail";
            SendNow::Started(Sending::new(async move {
                tokio::task::yield_now().await;
                if fail {
                    Err(Error::new(crate::ErrorKind::Broker, "refused"))
                } else {
                    Ok(())
                }
            }))
        }

        fn can_send_now(&self) -> bool {
            true
        }
    }

    /// A started send that fails is reported under its own message's id,
    /// whichever order the sends finish in.
    #[tokio::test]
    async fn a_failed_started_send_is_reported_under_its_id() {
        let mut pipeline = Pipeline::new(Started, 3);
        let mut failing = Vec::new();
        for i in 0..10 {
            let m = Message::new(if i % 4 == 1 { "fail" } else { "ok" });
            if i % 4 == 1 {
                failing.push(m.id().to_owned());
            }
            pipeline.send("d", m).await;
        }
        let report = pipeline.finish().await;
        assert_eq!(report.sent, 7);
        let mut reported: Vec<String> = report.failures.into_iter().map(|(id, _)| id).collect();
        reported.sort();
        failing.sort();
        assert_eq!(reported, failing);
    }

    /// Counts the polls of its started sends, which are done at once.
    #[derive(Clone, Debug, Default)]
    struct CountsPolls(Arc<std::sync::atomic::AtomicUsize>);

    #[async_trait]
    impl Producer for CountsPolls {
        async fn send(&self, _: &str, _: Message) -> Result<()> {
            unreachable!("every send starts through send_now")
        }

        fn send_now(&self, _: &str, _: Message) -> SendNow {
            let polls = self.0.clone();
            SendNow::Started(Sending::new(futures_util::future::poll_fn(move |_| {
                polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Poll::Ready(Ok(()))
            })))
        }

        fn can_send_now(&self) -> bool {
            true
        }
    }

    /// A started send is with the client library already: `send` does not
    /// poll the window for it (that extra poll per send cost the Kafka
    /// producer 3-4% of its rate). The window is polled when it is full,
    /// and `finish` records the rest.
    #[tokio::test]
    async fn started_sends_are_polled_when_the_window_is_full() {
        let producer = CountsPolls::default();
        let polls = || producer.0.load(std::sync::atomic::Ordering::Relaxed);
        let mut pipeline = Pipeline::new(producer.clone(), 4);
        for _ in 0..4 {
            pipeline.send("d", Message::new("x")).await;
        }
        assert_eq!(
            (polls(), pipeline.in_flight(), pipeline.report().sent),
            (0, 4, 0)
        );
        // Full: the fifth send waits for one to finish, then joins.
        pipeline.send("d", Message::new("x")).await;
        assert_eq!(pipeline.in_flight(), 4);
        assert!(
            pipeline.report().sent >= 1,
            "room was made by recording a finished send"
        );
        assert_eq!(polls() as u64, pipeline.report().sent);
        let report = pipeline.finish().await;
        assert_eq!((report.sent, polls()), (5, 5));
    }
}
