//! The prefetch of one consumer: deliveries it holds unsettled, against
//! its limit, for backends that count it themselves (the memory backend,
//! Kafka; RabbitMQ's broker counts it with `basic.qos`, SQS has none).
//!
//! Only the consumer takes (receiving needs `&mut`); any task gives back.
//! A counter and a wake-up when the count leaves the limit replace a
//! semaphore, whose `add_permits` takes a lock on every settle.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Deliveries a consumer holds unsettled, against its limit.
#[derive(Debug)]
pub struct Prefetch {
    limit: usize,
    held: AtomicUsize,
    room: Notify,
}

impl Prefetch {
    /// A consumer that may hold `limit` deliveries unsettled (at least 1).
    pub fn new(limit: usize) -> Self {
        Prefetch {
            limit: limit.max(1),
            held: AtomicUsize::new(0),
            room: Notify::new(),
        }
    }

    /// How many more deliveries the consumer may take now.
    pub fn room_now(&self) -> usize {
        self.limit.saturating_sub(self.held.load(Ordering::Acquire))
    }

    /// Waits until the consumer may take more deliveries; how many.
    /// Cancel-safe: it takes nothing.
    pub async fn wait_room(&self) -> usize {
        loop {
            let room = self.room_now();
            if room > 0 {
                return room;
            }
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let room = self.room_now();
            if room > 0 {
                return room;
            }
            notified.await;
        }
    }

    /// `n` deliveries handed out (at most the room `wait_room` or
    /// `room_now` returned: nobody else takes in between).
    pub fn take(&self, n: usize) {
        self.held.fetch_add(n, Ordering::AcqRel);
    }

    /// One delivery settled or returned. Wakes the consumer only when the
    /// limit was reached (it may be waiting); otherwise one atomic. More
    /// give-backs than takes (a backend's bug) leave the count at zero
    /// instead of wrapping around and blocking the consumer for good.
    pub fn give_back(&self) {
        let before = self.held.fetch_sub(1, Ordering::AcqRel);
        if before == 0 {
            self.held.fetch_add(1, Ordering::AcqRel);
            tracing::debug!("a prefetch slot was given back twice");
            return;
        }
        if before >= self.limit {
            self.room.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_full_consumer_waits_until_a_delivery_is_given_back() {
        let p = Arc::new(Prefetch::new(2));
        assert_eq!(p.wait_room().await, 2);
        p.take(2);
        assert_eq!(p.room_now(), 0);
        let waiting = tokio::spawn({
            let p = p.clone();
            async move { p.wait_room().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "no room yet");
        p.give_back();
        let room = tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(room, 1);
    }

    #[test]
    fn extra_give_backs_never_wrap_the_count() {
        let p = Prefetch::new(3);
        p.take(1);
        p.give_back();
        p.give_back();
        assert_eq!(p.room_now(), 3);
        p.take(3);
        assert_eq!(p.room_now(), 0, "the limit still holds");
    }
}
