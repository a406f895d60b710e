//! Settlement (DESIGN.md §4, Kafka row).
//!
//! | settlement | what happens |
//! |---|---|
//! | ack | the offset is marked done; the committer commits it once every lower offset of the partition is done |
//! | nack (now or after a delay) | a copy goes to the group's retry topic with `mq-attempt` + 1 (and `mq-not-before` for a delay); once Kafka acknowledged it, the offset is marked done |
//! | dead letter | a copy with the reason headers goes to `<topic>-dlq`; then the offset is marked done |
//! | dropped unsettled | as an immediate nack, republished from a spawned task (drop must not block) |
//!
//! Ordered mode (`ordered=true`): a nack does not republish. The partition
//! is paused and rewound to the nacked record, which is delivered again in
//! place after the delay (attempt counted in memory), followed by the records
//! after it: per-key order holds, at the price of the partition waiting.
//!
//! Without ordered mode, a nacked record comes back through the retry topic,
//! after records sent later with the same key: nack breaks per-key order.
//!
//! A delivery whose partition was revoked meanwhile is stale: settling it
//! does nothing (the new owner reads it again from the committed offset,
//! which never passes it). If republishing fails, the partition is rewound
//! to the record so it is delivered again, and the error is returned.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mq_core::{Delivery, Error, ErrorKind, Message, Received, Result, Settlement, Settler};

use crate::codec::{retry_message, KafkaMetadata};
use crate::consumer::{Held, Shared, Tp};
use crate::producer::Sender;
use crate::topology::dead_letter_topic;
use crate::BACKEND;

/// Settles the deliveries of one [`KafkaConsumer`](crate::KafkaConsumer).
pub(crate) struct KafkaSettler {
    shared: Arc<Shared>,
    sender: Arc<Sender>,
    runtime: tokio::runtime::Handle,
}

impl fmt::Debug for KafkaSettler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSettler")
            .field("source", &self.shared.source)
            .field("group", &self.shared.group)
            .finish()
    }
}

/// What to do once the state has been looked at.
enum Step {
    Done,
    Republish {
        topic: String,
        message: Box<Message>,
        extra: Vec<(&'static str, String)>,
    },
}

fn meta_of(received: &Received) -> Result<(KafkaMetadata, Tp)> {
    let meta = received
        .metadata::<KafkaMetadata>()
        .cloned()
        .ok_or_else(|| {
            Error::new(ErrorKind::Broker, "delivery carries no Kafka metadata")
                .with_backend(BACKEND)
        })?;
    let tp: Tp = (Arc::from(meta.topic.as_str()), meta.partition);
    Ok((meta, tp))
}

impl KafkaSettler {
    pub(crate) fn new(
        shared: Arc<Shared>,
        sender: Arc<Sender>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        KafkaSettler {
            shared,
            sender,
            runtime,
        }
    }

    fn closed_error(&self, id: &str) -> Error {
        Error::closed(format!(
            "consumer was closed; message {id} goes to the group's next consumer"
        ))
        .with_backend(BACKEND)
        .with_operation("settle")
        .with_destination(self.shared.source.clone())
    }

    /// Looks at the state and decides; takes the delivery out of the
    /// outstanding set and gives its prefetch permit back.
    fn begin(&self, received: &Received, settlement: Settlement) -> Result<Step> {
        let (meta, tp) = meta_of(received)?;
        let mut guard = self.shared.state.lock();
        let state = &mut *guard;
        self.shared.permits.add_permits(1);
        let known = state.claim(&meta, &tp);
        if state.closed {
            return Err(self.closed_error(received.id()));
        }
        if !known {
            // Revoked meanwhile: the partition's next owner delivers it again.
            tracing::debug!(
                id = received.id(),
                "settling a delivery of a revoked partition: ignored"
            );
            return Ok(Step::Done);
        }
        match settlement {
            Settlement::Ack => {
                Shared::settle_offset(state, &meta, &tp);
                Ok(Step::Done)
            }
            Settlement::Nack { delay } if self.shared.ordered => {
                Shared::rewind(state, &meta, &tp, delay);
                Ok(Step::Done)
            }
            Settlement::Nack { delay } => {
                state.inflight += 1;
                let (message, extra) = retry_message(received, delay);
                Ok(Step::Republish {
                    topic: self.shared.retry_topic.clone(),
                    message: Box::new(message),
                    extra,
                })
            }
            Settlement::DeadLetter { reason } => {
                state.inflight += 1;
                Ok(Step::Republish {
                    topic: dead_letter_topic(&self.shared.source),
                    message: Box::new(mq_core::republish::dead_letter_copy(received, &reason)),
                    extra: Vec::new(),
                })
            }
            other => Err(Error::unsupported(format!("settlement {other:?}")).with_backend(BACKEND)),
        }
    }

    /// Publishes the copy, then marks the original done (or rewinds to it).
    async fn republish(
        &self,
        received: &Received,
        topic: String,
        message: Message,
        extra: Vec<(&'static str, String)>,
    ) -> Result<()> {
        let extra_refs: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let result = self
            .sender
            .send_unchecked(&topic, &message, &extra_refs, true)
            .await;
        let (meta, tp) = meta_of(received)?;
        let mut state = self.shared.state.lock();
        match &result {
            Ok(()) => Shared::settle_offset(&mut state, &meta, &tp),
            Err(e) => {
                tracing::warn!(error = %e, id = received.id(), topic, "republishing failed; the message is delivered again in place");
                Shared::rewind(&mut state, &meta, &tp, Some(Duration::from_millis(500)));
            }
        }
        state.inflight = state.inflight.saturating_sub(1);
        if state.inflight == 0 {
            self.shared.idle.notify_waiters();
        }
        result
    }

    /// `close`: republishes every delivery still held to the retry topic
    /// (attempt + 1), concurrently, and marks the originals done.
    pub(crate) async fn return_all(&self, held: Vec<(Held, Received)>) {
        {
            self.shared.state.lock().inflight += held.len();
        }
        let sends = held.into_iter().map(|(_, received)| async move {
            let (message, extra) = retry_message(&received, None);
            let topic = self.shared.retry_topic.clone();
            if let Err(e) = self.republish(&received, topic, message, extra).await {
                tracing::warn!(error = %e, "returning a held delivery at close failed; it is redelivered from its partition");
            }
        });
        futures::future::join_all(sends).await;
    }
}

#[async_trait]
impl Settler for KafkaSettler {
    async fn settle(&self, delivery: &Delivery, settlement: Settlement) -> Result<()> {
        let received = delivery.received();
        match self.begin(received, settlement)? {
            Step::Done => Ok(()),
            Step::Republish {
                topic,
                message,
                extra,
            } => self.republish(received, topic, *message, extra).await,
        }
    }

    fn abandon(&self, delivery: &Delivery) {
        let received = delivery.received().clone();
        match self.begin(&received, Settlement::Nack { delay: None }) {
            Ok(Step::Done) | Err(_) => {}
            Ok(Step::Republish {
                topic,
                message,
                extra,
            }) => {
                let me = KafkaSettler {
                    shared: self.shared.clone(),
                    sender: self.sender.clone(),
                    runtime: self.runtime.clone(),
                };
                self.runtime.spawn(async move {
                    let _ = me.republish(&received, topic, *message, extra).await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::State;

    fn delivery(state: &mut State, tp: &Tp, offset: i64) -> Received {
        let part = state.parts.get_mut(tp).expect("assigned");
        part.accept(offset);
        let received = Received::new("t", Message::new(format!("o{offset}")), 1).with_metadata(
            KafkaMetadata {
                topic: tp.0.to_string(),
                partition: tp.1,
                offset,
                generation: part.generation,
            },
        );
        let generation = part.generation;
        state.hand_out(tp.clone(), generation, offset, received.clone());
        received
    }

    /// What `begin` + `settle` do for an ack.
    fn ack(state: &mut State, received: &Received) {
        let (meta, tp) = meta_of(received).expect("metadata");
        if state.claim(&meta, &tp) {
            Shared::settle_offset(state, &meta, &tp);
        }
    }

    /// Defect 1 of issue 14: a partition revoked and handed back to the
    /// same member; the old delivery of offset 5 is settled after the
    /// re-fetched copy of 5 was handed out. The old settle must not touch
    /// the new copy, and the new copy's settle must move the commit point.
    #[test]
    fn stale_settle_after_reassign_does_not_touch_the_new_generation() {
        let mut state = State::default();
        let tp: Tp = (Arc::from("t"), 0);
        state.assign(tp.clone());
        let old4 = delivery(&mut state, &tp, 4);
        let old5 = delivery(&mut state, &tp, 5);
        ack(&mut state, &old4);
        assert_eq!(
            state.revoke(&tp),
            Some(5),
            "4 is committed before the revoke"
        );
        state.assign(tp.clone());
        let new5 = delivery(&mut state, &tp, 5);
        let new6 = delivery(&mut state, &tp, 6);
        // The old copy of 5 is settled late, after the new copy went out.
        ack(&mut state, &old5);
        assert_eq!(
            state.parts[&tp].commit_point(),
            Some(5),
            "a stale settle commits nothing"
        );
        ack(&mut state, &new5);
        ack(&mut state, &new6);
        assert_eq!(
            state.parts[&tp].commit_point(),
            Some(7),
            "the new generation's settles move the commit point"
        );
        assert!(state.outstanding.is_empty());
    }
}
