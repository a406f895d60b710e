//! Per-partition offset tracking: what may be committed.
//!
//! Deliveries of one partition are settled in any order, but Kafka keeps a
//! single committed offset per partition. The commit point is therefore the
//! lowest offset not yet settled (or one past the highest seen when all are
//! settled): acking later offsets never commits past an earlier unsettled
//! one, so a restart redelivers it.

use std::collections::VecDeque;
use std::time::Instant;

use mq_core::{Content, Received};
use rustc_hash::FxHashMap;

/// What is kept of a delivery handed out, for `close` and a revoke (which
/// return it to the retry topic): its shared content and its attempt. The
/// rest is the consumer's (source, group) or the partition's (topic,
/// partition, generation, offset). A clone of the whole delivery cost four
/// reference counts up and four down per record, atomic operations that
/// made up most of the application thread's own time at full speed (perf).
#[derive(Debug)]
pub(crate) struct Kept {
    pub(crate) content: Content,
    pub(crate) attempt: u32,
}

impl Kept {
    pub(crate) fn of(received: &Received) -> Self {
        Kept {
            content: received.content(),
            attempt: received.attempt(),
        }
    }
}

/// Offsets accepted and not settled yet, in increasing order. Records of a
/// partition arrive in offset order, so accepting appends and settling in
/// order pops from the front: no allocation per record (a `BTreeSet` here
/// allocated and freed tree nodes on the hot path). A settlement out of
/// order marks its entry; marked entries leave once they reach the front,
/// so the front is always the lowest unsettled offset.
#[derive(Debug, Default)]
struct Unsettled {
    /// (offset, settled), increasing offsets; the front is never settled.
    entries: VecDeque<(i64, bool)>,
}

impl Unsettled {
    fn find(&self, offset: i64) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&offset, |(o, _)| *o)
    }

    fn insert(&mut self, offset: i64) {
        match self.entries.back() {
            None => self.entries.push_back((offset, false)),
            Some((last, _)) if *last < offset => self.entries.push_back((offset, false)),
            // Fetched again after a rewind: in order, once.
            _ => match self.find(offset) {
                Ok(i) => self.entries[i].1 = false,
                Err(i) => self.entries.insert(i, (offset, false)),
            },
        }
    }

    /// Marks `offset` settled; `forget` removes its entry instead.
    fn remove(&mut self, offset: i64, forget: bool) {
        // Most settlements are of the lowest offset: no search for those.
        let at = match self.entries.front() {
            Some((first, _)) if *first == offset => Ok(0),
            _ => self.find(offset),
        };
        if let Ok(i) = at {
            if forget {
                self.entries.remove(i);
            } else {
                self.entries[i].1 = true;
            }
        }
        while self.entries.front().is_some_and(|(_, settled)| *settled) {
            self.entries.pop_front();
        }
    }

    fn first(&self) -> Option<i64> {
        self.entries.front().map(|(o, _)| *o)
    }
}

/// The state of one assigned partition.
#[derive(Debug)]
pub(crate) struct PartitionState {
    /// Which assignment this is; deliveries of an older one are stale.
    pub(crate) generation: u64,
    /// Offsets fetched and not settled yet (handed out or waiting).
    unsettled: Unsettled,
    /// Deliveries of this assignment handed out and not settled yet, by
    /// offset, kept for `close` (which returns them to the retry topic).
    /// Kept here rather than in one table of the consumer: a revoke drops
    /// them with the partition, and handing out and settling a record key
    /// on its offset alone (no topic name hashed per record).
    pub(crate) held: FxHashMap<i64, Kept>,
    /// One past the highest offset accepted.
    next: Option<i64>,
    /// The last offset committed (or being committed).
    committed: Option<i64>,
    /// Paused by us (prefetch full, retry not due, or a rewind pending).
    pub(crate) paused: bool,
    /// Fetching must restart at this offset: records at or past it were
    /// discarded (fetched while paused, not due yet, or nacked in ordered mode).
    pub(crate) rewind: Option<i64>,
    /// Not before this instant: a retry record is not due yet, or an
    /// ordered-mode nack asked for a delay.
    pub(crate) hold_until: Option<Instant>,
}

impl PartitionState {
    pub(crate) fn new(generation: u64) -> Self {
        PartitionState {
            generation,
            unsettled: Unsettled::default(),
            held: FxHashMap::default(),
            next: None,
            committed: None,
            paused: false,
            rewind: None,
            hold_until: None,
        }
    }

    /// A fetched record at `offset` is accepted (to be handed out).
    pub(crate) fn accept(&mut self, offset: i64) {
        self.unsettled.insert(offset);
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// The offset after the last record fetched in this assignment.
    pub(crate) fn fetched_up_to(&self) -> Option<i64> {
        self.next
    }

    /// The record at `offset` is settled.
    pub(crate) fn settle(&mut self, offset: i64) {
        self.unsettled.remove(offset, false);
    }

    /// Forgets a record that was accepted but never handed out (it will be
    /// fetched again after a rewind).
    pub(crate) fn forget(&mut self, offset: i64) {
        self.unsettled.remove(offset, true);
        self.next = self.next.map(|n| n.min(offset));
    }

    /// Records at or past `offset` will be fetched again.
    pub(crate) fn rewind_to(&mut self, offset: i64) {
        self.rewind = Some(self.rewind.map_or(offset, |r| r.min(offset)));
    }

    /// The offset to commit: everything below it is settled.
    pub(crate) fn commit_point(&self) -> Option<i64> {
        let point = self.unsettled.first().or(self.next)?;
        Some(match self.rewind {
            Some(r) => point.min(r),
            None => point,
        })
    }

    /// The offset to commit if it moved since the last commit; records it as committed.
    pub(crate) fn take_commit(&mut self) -> Option<i64> {
        let point = self.commit_point()?;
        if self.committed.is_some_and(|c| c >= point) {
            return None;
        }
        self.committed = Some(point);
        Some(point)
    }

    /// A commit failed: commit again on the next round.
    pub(crate) fn commit_failed(&mut self) {
        self.committed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_below_the_first_unsettled() {
        let mut p = PartitionState::new(1);
        assert_eq!(p.take_commit(), None, "nothing seen yet");
        for o in 10..14 {
            p.accept(o);
        }
        // Out of order: the later ones first.
        p.settle(12);
        p.settle(13);
        assert_eq!(p.take_commit(), Some(10));
        assert_eq!(p.take_commit(), None, "unchanged");
        p.settle(10);
        assert_eq!(p.take_commit(), Some(11));
        p.settle(11);
        assert_eq!(p.take_commit(), Some(14));
        p.commit_failed();
        assert_eq!(p.take_commit(), Some(14), "retried after a failure");
    }

    #[test]
    fn rewinds_hold_the_commit_point() {
        let mut p = PartitionState::new(1);
        p.accept(5);
        p.settle(5);
        p.rewind_to(6);
        p.accept(6);
        p.forget(6);
        assert_eq!(p.commit_point(), Some(6));
        p.rewind = None;
        assert_eq!(p.commit_point(), Some(6));
        p.accept(6);
        p.accept(7);
        p.forget(7);
        assert_eq!(p.commit_point(), Some(6));
        p.settle(6);
        assert_eq!(p.commit_point(), Some(7));
    }

    proptest::proptest! {
        /// The commit point is that of a plain ordered set of the unsettled
        /// offsets, whatever the order of accepts, settlements and forgets.
        #[test]
        fn commit_point_matches_an_ordered_set(
            ops in proptest::collection::vec((0u8..3, 0i64..40), 0..200)
        ) {
            let mut p = PartitionState::new(1);
            let mut model = std::collections::BTreeSet::new();
            let mut next: Option<i64> = None;
            for (op, offset) in ops {
                match op {
                    0 => {
                        p.accept(offset);
                        model.insert(offset);
                        next = Some(next.map_or(offset + 1, |n| n.max(offset + 1)));
                    }
                    1 => {
                        p.settle(offset);
                        model.remove(&offset);
                    }
                    _ => {
                        p.forget(offset);
                        model.remove(&offset);
                        next = next.map(|n| n.min(offset));
                    }
                }
                let expected = model.first().copied().or(next);
                proptest::prop_assert_eq!(p.commit_point(), expected);
            }
        }
    }
}
