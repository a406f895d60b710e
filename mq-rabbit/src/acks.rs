//! Acks sent together: the acks of one subscription's channel leave as one
//! `basic.ack` with `multiple` for every run of deliveries settled in
//! delivery order, sent by a task of the subscription while the
//! application goes on.
//!
//! Why: a `basic.ack` awaited per delivery costs a frame, a hop to lapin's
//! I/O thread and back, and the broker's work for each; a consumer that
//! settles in order needs one frame per batch instead.
//!
//! Order is kept: delivery tags of a channel increase in delivery order,
//! and `multiple` acks everything up to its tag, so it is only used for
//! the front run of settled deliveries. An ack settled out of order (an
//! earlier delivery is still held) goes out on its own at the next flush:
//! a delivery held long never holds back the acks behind it, nor the
//! prefetch slots they take at the broker. Every other settlement (a nack,
//! a republish's ack, a dropped delivery) sends its own frame, then marks
//! its tag done here, so the run can pass it.
//!
//! What `ack` promises: it returns once the ack is queued for its channel,
//! which is what lapin's own ack promises (AMQP does not confirm acks: a
//! written frame can still be lost with the connection). If the channel is
//! gone before the ack is sent, the broker delivers the message again
//! (at-least-once) and a warning says how many acks were lost. `close`
//! sends every queued ack before it closes the channel.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::BasicAckOptions;
use lapin::Acker;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::error::{from_lapin, within};

/// The settlement state of one delivery tag.
#[derive(Debug)]
enum Mark<A> {
    /// Handed out, not settled yet.
    Out,
    /// Acked, not sent yet: `A` acks it.
    Acked(A),
    /// Settled with a frame of its own (a nack, an ack sent alone).
    Done,
}

/// The tags of one channel from the oldest unsettled one on, and the acks
/// waiting to be sent. Generic over the acker so its rules are tested
/// without a broker.
#[derive(Debug)]
struct Window<A> {
    /// Increasing tags; the front is never settled (settled fronts leave
    /// at once, into `run_end`).
    open: VecDeque<(u64, Mark<A>)>,
    /// The acker of the last tag of the settled run that left the front:
    /// one `multiple` ack with it settles the whole run.
    run_end: Option<A>,
    /// No more acks: the subscription is closing or gone.
    closed: bool,
}

impl<A> Default for Window<A> {
    fn default() -> Self {
        Window {
            open: VecDeque::new(),
            run_end: None,
            closed: false,
        }
    }
}

/// What a flush sends.
#[derive(Debug)]
struct Flush<A> {
    /// Acks every tag up to its own (`multiple`).
    run_end: Option<A>,
    /// Acked out of order: each acks its own tag.
    singles: Vec<A>,
}

impl<A> Window<A> {
    fn find(&self, tag: u64) -> Option<usize> {
        self.open.binary_search_by_key(&tag, |(t, _)| *t).ok()
    }

    /// A delivery with `tag` was handed out.
    fn opened(&mut self, tag: u64) {
        match self.open.back() {
            Some((last, _)) if *last >= tag => {
                // Never on one channel; kept ordered if a broker did it.
                if let Err(i) = self.open.binary_search_by_key(&tag, |(t, _)| *t) {
                    self.open.insert(i, (tag, Mark::Out));
                }
            }
            _ => self.open.push_back((tag, Mark::Out)),
        }
    }

    /// Queues the ack of `tag`; `false` once the window is closed (or the
    /// tag is not handed out here), and the caller acks it itself.
    fn ack(&mut self, tag: u64, acker: A) -> bool {
        if self.closed {
            return false;
        }
        let Some(i) = self.find(tag) else {
            return false;
        };
        if !matches!(self.open[i].1, Mark::Out) {
            return false;
        }
        self.open[i].1 = Mark::Acked(acker);
        self.advance();
        true
    }

    /// `tag` was settled with a frame of its own (already sent).
    fn done(&mut self, tag: u64) {
        if let Some(i) = self.find(tag) {
            if matches!(self.open[i].1, Mark::Out) {
                self.open[i].1 = Mark::Done;
                self.advance();
            }
        }
    }

    /// Moves the settled front into the run.
    fn advance(&mut self) {
        while let Some((_, mark)) = self.open.front() {
            if matches!(mark, Mark::Out) {
                break;
            }
            if let Some((_, Mark::Acked(a))) = self.open.pop_front() {
                self.run_end = Some(a);
            }
        }
    }

    /// Everything to send now: the run, and the acks queued behind an
    /// unsettled delivery (sent alone; their tags stay, done, until the
    /// front passes them).
    fn take(&mut self) -> Flush<A> {
        let mut singles = Vec::new();
        for (_, mark) in self.open.iter_mut() {
            if matches!(mark, Mark::Acked(_)) {
                if let Mark::Acked(a) = std::mem::replace(mark, Mark::Done) {
                    singles.push(a);
                }
            }
        }
        Flush {
            run_end: self.run_end.take(),
            singles,
        }
    }

    fn is_empty(&self) -> bool {
        self.run_end.is_none() && !self.open.iter().any(|(_, m)| matches!(m, Mark::Acked(_)))
    }
}

/// The acks of one subscription's channel, and the task that sends them.
#[derive(Debug)]
pub(crate) struct Acks {
    window: Mutex<Window<Acker>>,
    wake: Notify,
    /// How long one ack frame may take to be written.
    limit: Duration,
}

impl Acks {
    /// The acks of a new channel, with the task that sends them (it ends
    /// after [`close`](Acks::close)).
    pub(crate) fn start(limit: Duration, source: String) -> (Arc<Acks>, JoinHandle<()>) {
        let acks = Arc::new(Acks {
            window: Mutex::new(Window::default()),
            wake: Notify::new(),
            limit,
        });
        let sender = tokio::spawn(acks.clone().send_loop(source));
        (acks, sender)
    }

    /// A delivery with `tag` was handed out (in delivery order).
    pub(crate) fn opened(&self, tag: u64) {
        self.window.lock().opened(tag);
    }

    /// Queues the ack of the delivery `tag`; `false` when the caller must
    /// ack it itself (the subscription is closing or gone).
    pub(crate) fn ack(&self, tag: u64, acker: &Acker) -> bool {
        let queued = self.window.lock().ack(tag, acker.clone());
        if queued {
            self.wake.notify_one();
        }
        queued
    }

    /// The delivery `tag` was settled with a frame of its own.
    pub(crate) fn done(&self, tag: u64) {
        let mut window = self.window.lock();
        window.done(tag);
        let wake = !window.is_empty();
        drop(window);
        if wake {
            self.wake.notify_one();
        }
    }

    /// Takes no more acks; the task sends what is queued and ends.
    pub(crate) fn close(&self) {
        self.window.lock().closed = true;
        self.wake.notify_one();
    }

    async fn send_loop(self: Arc<Self>, source: String) {
        loop {
            self.wake.notified().await;
            let (flush, closed) = {
                let mut window = self.window.lock();
                (window.take(), window.closed)
            };
            let mut lost = 0usize;
            if let Some(run_end) = flush.run_end {
                let multiple = BasicAckOptions { multiple: true };
                if !self.send(&run_end, multiple).await {
                    lost += 1;
                }
            }
            for single in flush.singles {
                if !self.send(&single, BasicAckOptions::default()).await {
                    lost += 1;
                }
            }
            if lost > 0 {
                tracing::warn!(source, frames = lost,
                    "acks could not be sent (the channel is gone); the broker delivers those messages again");
            }
            if closed {
                return;
            }
        }
    }

    /// Sends one ack frame; `false` if it could not be written.
    async fn send(&self, acker: &Acker, options: BasicAckOptions) -> bool {
        let acking = async { acker.ack(options).await.map_err(|e| from_lapin(e, "ack")) };
        match within(self.limit, "ack", acking).await {
            Ok(sent) => sent,
            Err(e) => {
                tracing::debug!(error = %e, "sending an ack failed");
                false
            }
        }
    }
}

/// Closes `acks` and waits (up to `limit`) until its queued acks are sent.
pub(crate) async fn finish(acks: &Acks, sender: JoinHandle<()>, limit: Duration) {
    acks.close();
    if tokio::time::timeout(limit, sender).await.is_err() {
        tracing::debug!("queued acks were not all sent before the channel closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(tags: std::ops::RangeInclusive<u64>) -> Window<u64> {
        let mut w = Window::default();
        for t in tags {
            w.opened(t);
        }
        w
    }

    #[test]
    fn acks_in_order_leave_as_one_multiple_ack() {
        let mut w = window(1..=5);
        for t in 1..=5 {
            assert!(w.ack(t, t));
        }
        let f = w.take();
        assert_eq!(f.run_end, Some(5));
        assert!(f.singles.is_empty());
        assert!(w.open.is_empty());
        assert!(w.is_empty());
    }

    #[test]
    fn a_held_delivery_stops_the_run_and_later_acks_go_alone() {
        let mut w = window(1..=5);
        assert!(w.ack(1, 1));
        // 2 is held; 3 and 5 are acked.
        assert!(w.ack(3, 3));
        assert!(w.ack(5, 5));
        let f = w.take();
        assert_eq!(f.run_end, Some(1), "multiple never passes the held 2");
        assert_eq!(f.singles, vec![3, 5]);
        // Nothing is sent twice.
        let again = w.take();
        assert_eq!((again.run_end, again.singles.len()), (None, 0));
        // 2 is settled at last: the run passes 3 (done) and stops at 4.
        assert!(w.ack(2, 2));
        let f = w.take();
        assert_eq!(f.run_end, Some(2));
        assert!(f.singles.is_empty());
        assert_eq!(w.open.front().map(|(t, _)| *t), Some(4));
    }

    #[test]
    fn a_tag_settled_with_its_own_frame_lets_the_run_pass() {
        let mut w = window(1..=3);
        w.done(1);
        assert!(w.ack(2, 2));
        w.done(2); // a late `done` never takes back a queued ack
        let f = w.take();
        assert_eq!(f.run_end, Some(2));
        assert_eq!(w.open.front().map(|(t, _)| *t), Some(3));
    }

    #[test]
    fn a_closed_window_or_an_unknown_tag_hands_the_ack_back() {
        let mut w = window(1..=2);
        assert!(!w.ack(9, 9), "never handed out here");
        assert!(w.ack(1, 1));
        assert!(!w.ack(1, 1), "settled once");
        w.closed = true;
        assert!(!w.ack(2, 2));
        assert_eq!(w.take().run_end, Some(1), "what was queued is still sent");
    }

    proptest::proptest! {
        /// Whatever the order of settlements, the acks sent settle exactly
        /// the acked tags: a `multiple` ack only covers settled tags, and
        /// every acked tag is covered once all are settled.
        #[test]
        fn multiple_acks_cover_only_settled_tags(
            order in proptest::strategy::Strategy::prop_shuffle(
                proptest::sample::subsequence((1u64..=40).collect::<Vec<_>>(), 0..=40)),
            nacked in proptest::collection::hash_set(1u64..=40, 0..10),
            flush_every in 1usize..8,
        ) {
            use proptest::prelude::*;
            let mut w = window(1..=40);
            type Tags = std::collections::BTreeSet<u64>;
            let (mut settled, mut covered, mut named) = (Tags::new(), Tags::new(), Tags::new());
            // The broker refuses (and closes the channel on) an ack naming
            // a tag that is not unacked, `multiple` or not.
            let check = |f: Flush<u64>, settled: &Tags, covered: &mut Tags, named: &mut Tags|
                -> Result<(), TestCaseError> {
                if let Some(end) = f.run_end {
                    prop_assert!(named.insert(end), "{end} named twice");
                    for t in 1..=end {
                        prop_assert!(settled.contains(&t), "multiple ack of {end} covers unsettled {t}");
                        covered.insert(t);
                    }
                }
                for t in f.singles {
                    prop_assert!(settled.contains(&t));
                    prop_assert!(!covered.contains(&t), "{t} acked alone after a multiple ack");
                    prop_assert!(named.insert(t), "{t} named twice");
                    covered.insert(t);
                }
                Ok(())
            };
            for (i, t) in order.iter().enumerate() {
                settled.insert(*t);
                if nacked.contains(t) {
                    w.done(*t);
                } else {
                    prop_assert!(w.ack(*t, *t));
                }
                if i % flush_every == 0 {
                    check(w.take(), &settled, &mut covered, &mut named)?;
                }
            }
            check(w.take(), &settled, &mut covered, &mut named)?;
            for t in settled.iter().filter(|t| !nacked.contains(t)) {
                prop_assert!(covered.contains(t), "acked {t} was never sent");
            }
        }
    }
}
