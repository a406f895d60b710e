//! Many sends in flight from one task.
//!
//! Each `send` waits for the broker's confirmation, so awaiting them one by one
//! costs a round trip per message. A [`Pipeline`] keeps up to
//! `max_in_flight` sends running at once and only waits when the window is
//! full, which is how brokers reach their throughput (Kafka batching,
//! RabbitMQ confirms, SQS batches).

use std::fmt;

use tokio::task::JoinSet;

use crate::error::{Error, ErrorKind, Result};
use crate::message::Message;
use crate::producer::Producer;

/// Sends with up to `max_in_flight` confirmations outstanding. Call
/// [`Pipeline::finish`] to wait for the rest and get the report; dropping a
/// pipeline cancels the sends still in flight (they may or may not arrive).
pub struct Pipeline<P> {
    producer: P,
    max_in_flight: usize,
    in_flight: JoinSet<(String, Result<()>)>,
    report: PipelineReport,
}

impl<P: Producer + Clone + 'static> Pipeline<P> {
    /// A pipeline over `producer` with at most `max_in_flight` (at least 1) sends outstanding.
    pub fn new(producer: P, max_in_flight: usize) -> Self {
        Pipeline {
            producer,
            max_in_flight: max_in_flight.max(1),
            in_flight: JoinSet::new(),
            report: PipelineReport::default(),
        }
    }

    /// Starts sending `message` to `destination`; waits only while the window is full.
    pub async fn send(&mut self, destination: impl Into<String>, message: Message) {
        while self.in_flight.len() >= self.max_in_flight {
            self.reap_one().await;
        }
        let producer = self.producer.clone();
        let destination = destination.into();
        let id = message.id().to_owned();
        self.in_flight.spawn(async move {
            let result = producer.send(&destination, message).await;
            (id, result)
        });
    }

    /// Sends still waiting for confirmation.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Confirmed and failed counts so far.
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
        match self.in_flight.join_next().await {
            Some(Ok((_, Ok(())))) => self.report.sent += 1,
            Some(Ok((id, Err(e)))) => self.report.failures.push((id, e)),
            Some(Err(join)) => self.report.failures.push((
                String::new(),
                Error::new(ErrorKind::Broker, "send task failed").with_source(join),
            )),
            None => {}
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
