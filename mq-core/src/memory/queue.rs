//! One in-memory queue: the messages of one (destination, group).

use std::collections::VecDeque;
use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::delivery::Body;
use crate::message::Message;

/// A message held by a queue, with how many times it was delivered. The
/// content is shared with the deliveries made from it, never copied.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) body: Arc<Body>,
    pub(crate) delivered: u32,
}

impl Stored {
    /// The message as sent now (its timestamp, to the millisecond as
    /// brokers keep it, from the coarse clock).
    pub(crate) fn new(message: Message) -> Self {
        let mut body = Body::from(message);
        body.timestamp = Some(crate::clock::now_coarse());
        Stored {
            body: Arc::new(body),
            delivered: 0,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Messages ready to deliver, in delivery order.
    ready: VecDeque<Stored>,
    /// Responsibilities ever taken (wrapping). Minus `Queue::released`, the
    /// messages this queue holds: ready, delayed and delivered-but-unsettled,
    /// bounded by the capacity.
    taken: usize,
    /// Messages waiting for their delay before they become ready.
    delayed: usize,
}

/// The messages of one group of one destination.
#[derive(Debug)]
pub(crate) struct Queue {
    pub(crate) source: Arc<str>,
    pub(crate) group: Option<Arc<str>>,
    capacity: usize,
    state: Mutex<State>,
    /// Responsibilities ever given up (wrapping), counted without the lock:
    /// an ack is one atomic add instead of a lock and a wake-up.
    released: AtomicUsize,
    /// Producers waiting for room; a release wakes one only if there are any.
    waiting: AtomicUsize,
    readable: Notify,
    writable: Notify,
}

impl Queue {
    pub(crate) fn new(source: &str, group: Option<&str>, capacity: usize) -> Self {
        Queue {
            source: Arc::from(source),
            group: group.map(Arc::from),
            capacity,
            state: Mutex::new(State::default()),
            released: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            readable: Notify::new(),
            writable: Notify::new(),
        }
    }

    /// Messages held. Exact under the lock: only lock holders take, and
    /// everything released was taken before (a stale `released` only
    /// undercounts the room).
    fn held_locked(&self, s: &State) -> usize {
        s.taken.wrapping_sub(self.released.load(Ordering::SeqCst))
    }

    /// Takes responsibility for one more message if there is room.
    fn try_reserve(&self) -> bool {
        let mut s = self.state.lock();
        if self.held_locked(&s) < self.capacity {
            s.taken = s.taken.wrapping_add(1);
            true
        } else {
            false
        }
    }

    /// Takes responsibility for one more message and makes it deliverable,
    /// in one step, if there is room (the common case of a send).
    pub(crate) fn try_push_back(&self, stored: &Stored) -> bool {
        let mut s = self.state.lock();
        if self.held_locked(&s) >= self.capacity {
            return false;
        }
        s.taken = s.taken.wrapping_add(1);
        s.ready.push_back(stored.clone());
        drop(s);
        self.readable.notify_one();
        true
    }

    /// Takes responsibility for one more message, waiting while the queue is
    /// at capacity (backpressure on producers). Cancel-safe.
    pub(crate) async fn reserve(&self) {
        if self.try_reserve() {
            return;
        }
        let _waiting = Waiting::new(&self.waiting);
        loop {
            let notified = self.writable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.try_reserve() {
                // There may be room for the next waiting producer too.
                self.writable.notify_one();
                return;
            }
            notified.await;
        }
    }

    /// Takes responsibility for a message without waiting (dead-letters must
    /// never block settlement).
    pub(crate) fn reserve_now(&self) {
        let mut s = self.state.lock();
        s.taken = s.taken.wrapping_add(1);
    }

    /// Gives up responsibility for one message (acked or moved away).
    /// Every caller took it first (a send reserved it), so the count never
    /// goes below zero. A producer registers as waiting before its last
    /// look at the room, and this adds before it looks for waiters (both
    /// sequentially consistent): one of the two sees the other.
    pub(crate) fn release(&self) {
        self.released.fetch_add(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.writable.notify_one();
        }
    }

    /// Makes a reserved message deliverable, at the back.
    pub(crate) fn push_back(&self, stored: Stored) {
        self.state.lock().ready.push_back(stored);
        self.readable.notify_one();
    }

    /// Makes a reserved message deliverable next (redelivery keeps its place).
    pub(crate) fn push_front(&self, stored: Stored) {
        self.state.lock().ready.push_front(stored);
        self.readable.notify_one();
    }

    /// Makes a reserved message deliverable after `delay`.
    pub(crate) fn push_after(self: &Arc<Self>, stored: Stored, delay: Duration) {
        if delay.is_zero() {
            return self.push_back(stored);
        }
        let queue = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                self.state.lock().delayed += 1;
                rt.spawn(async move {
                    tokio::time::sleep(crate::time::clamp(delay)).await;
                    queue.state.lock().delayed -= 1;
                    queue.push_back(stored);
                });
            }
            // No runtime to wait on: deliver now rather than lose the message.
            Err(_) => queue.push_back(stored),
        }
    }

    /// Takes up to `max` ready messages, marking them delivered.
    pub(crate) fn try_pop(&self, max: usize, out: &mut Vec<Stored>) {
        let mut s = self.state.lock();
        // One allocation of the right size instead of doubling up to it.
        out.reserve(max.saturating_sub(out.len()).min(s.ready.len()));
        while out.len() < max {
            match s.ready.pop_front() {
                Some(mut m) => {
                    m.delivered = m.delivered.saturating_add(1);
                    out.push(m);
                }
                None => break,
            }
        }
        let more = !s.ready.is_empty();
        drop(s);
        if more && !out.is_empty() {
            // Pass the wake-up on: other consumers may be waiting.
            self.readable.notify_one();
        }
    }

    /// Waits until up to `max` messages are ready and takes them. Cancel-safe:
    /// messages are only taken in the same synchronous step that returns them.
    pub(crate) async fn pop(&self, max: usize) -> Vec<Stored> {
        let mut out = Vec::new();
        self.try_pop(max, &mut out);
        if !out.is_empty() {
            return out;
        }
        loop {
            let notified = self.readable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.try_pop(max, &mut out);
            if !out.is_empty() {
                return out;
            }
            notified.await;
        }
    }

    /// Messages ready to deliver now.
    pub(crate) fn ready_len(&self) -> usize {
        self.state.lock().ready.len()
    }

    /// Messages held in total (ready, delayed and unsettled).
    pub(crate) fn held(&self) -> usize {
        let s = self.state.lock();
        self.held_locked(&s)
    }

    /// (ready, delayed, delivered and unsettled) right now.
    pub(crate) fn counts(&self) -> (usize, usize, usize) {
        let s = self.state.lock();
        let unsettled = self
            .held_locked(&s)
            .saturating_sub(s.ready.len() + s.delayed);
        (s.ready.len(), s.delayed, unsettled)
    }
}

/// A producer waiting in [`Queue::reserve`], counted while it waits
/// (dropped on return or cancellation).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
