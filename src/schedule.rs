//! The schedule heap: items waiting for their eta, in a min-heap keyed by timestamp.
//!
//! Timestamps are plain integers (the storages use microseconds, see `crate::datetime`), so
//! sub-second etas order correctly. Items with the same eta come out in the order they were
//! added. `pop_due(now)` removes every item due at or before `now` in O(k log n) for k items
//! due, which is what `read_schedule` needs when a consumer polls a large schedule.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

struct Entry<T> {
    eta: i64,
    seq: u64,
    item: T,
}

impl<T> Entry<T> {
    fn key(&self) -> (i64, u64) {
        (self.eta, self.seq)
    }
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// A min-heap of items keyed by eta, first-in first-out among equal etas.
pub struct ScheduleHeap<T> {
    heap: BinaryHeap<Reverse<Entry<T>>>,
    next_seq: u64,
}

impl<T> Default for ScheduleHeap<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> ScheduleHeap<T> {
    pub fn new() -> Self {
        ScheduleHeap {
            heap: BinaryHeap::new(),
            next_seq: 0,
        }
    }

    pub fn push(&mut self, eta: i64, item: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Reverse(Entry { eta, seq, item }));
    }

    /// Removes and returns, soonest first, every item whose eta is at or before `now`.
    pub fn pop_due(&mut self, now: i64) -> Vec<T> {
        let mut due = Vec::new();
        while self.heap.peek().is_some_and(|e| e.0.eta <= now) {
            if let Some(Reverse(entry)) = self.heap.pop() {
                due.push(entry.item);
            }
        }
        due
    }

    /// The eta of the soonest item.
    pub fn next_eta(&self) -> Option<i64> {
        self.heap.peek().map(|e| e.0.eta)
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The first `limit` items (all when `None`) soonest first, without removing them.
    pub fn items(&self, limit: Option<usize>) -> Vec<(i64, &T)> {
        let mut entries: Vec<&Entry<T>> = self.heap.iter().map(|e| &e.0).collect();
        let n = limit.unwrap_or(entries.len()).min(entries.len());
        if n < entries.len() {
            if n == 0 {
                return Vec::new();
            }
            entries.select_nth_unstable_by_key(n - 1, |e| e.key());
            entries.truncate(n);
        }
        entries.sort_unstable_by_key(|e| e.key());
        entries.into_iter().map(|e| (e.eta, &e.item)).collect()
    }

    /// Removes everything, handing the items back so the caller chooses where they are dropped.
    pub fn take_all(&mut self) -> Vec<T> {
        std::mem::take(&mut self.heap)
            .into_vec()
            .into_iter()
            .map(|e| e.0.item)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_due_items_in_eta_order() {
        let mut s = ScheduleHeap::new();
        for (eta, item) in [(30, "c"), (10, "a"), (20, "b"), (40, "d")] {
            s.push(eta, item);
        }
        assert_eq!(s.next_eta(), Some(10));
        assert_eq!(s.pop_due(5), Vec::<&str>::new());
        assert_eq!(s.pop_due(25), vec!["a", "b"]);
        assert_eq!(s.len(), 2);
        assert_eq!(s.pop_due(30), vec!["c"]); // at the eta counts as due
        assert_eq!(s.pop_due(i64::MAX), vec!["d"]);
        assert!(s.is_empty());
        assert_eq!(s.next_eta(), None);
    }

    #[test]
    fn equal_etas_are_first_in_first_out() {
        let mut s = ScheduleHeap::new();
        for i in 0..100 {
            s.push(7, i);
        }
        s.push(6, -1);
        let expected: Vec<i32> = std::iter::once(-1).chain(0..100).collect();
        assert_eq!(s.pop_due(7), expected);
    }

    #[test]
    fn items_are_sorted_and_limited_without_removing() {
        let mut s = ScheduleHeap::new();
        for eta in [5, 3, 9, 1, 3] {
            s.push(eta, eta * 10);
        }
        let all: Vec<(i64, i64)> = s.items(None).into_iter().map(|(e, v)| (e, *v)).collect();
        assert_eq!(all, vec![(1, 10), (3, 30), (3, 30), (5, 50), (9, 90)]);
        let two: Vec<i64> = s.items(Some(2)).into_iter().map(|(_, v)| *v).collect();
        assert_eq!(two, vec![10, 30]);
        assert!(s.items(Some(0)).is_empty());
        assert_eq!(s.items(Some(99)).len(), 5);
        assert_eq!(s.len(), 5);
    }

    #[test]
    fn take_all_empties() {
        let mut s = ScheduleHeap::new();
        s.push(1, 'x');
        s.push(2, 'y');
        let mut taken = s.take_all();
        taken.sort();
        assert_eq!(taken, vec!['x', 'y']);
        assert!(s.is_empty());
        s.push(0, 'z');
        assert_eq!(s.pop_due(0), vec!['z']);
    }

    #[test]
    fn matches_a_sorted_model() {
        // A deterministic pseudo-random workload against a sorted Vec.
        let mut s = ScheduleHeap::new();
        let mut model: Vec<(i64, u64)> = Vec::new();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for seq in 0..5_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let eta = (x % 1_000) as i64;
            s.push(eta, seq);
            model.push((eta, seq));
            if seq % 97 == 0 {
                let now = (x >> 20) as i64 % 1_000;
                model.sort();
                let split = model.partition_point(|&(e, _)| e <= now);
                let expected: Vec<u64> = model.drain(..split).map(|(_, q)| q).collect();
                assert_eq!(s.pop_due(now), expected);
            }
        }
        model.sort();
        let expected: Vec<u64> = model.iter().map(|&(_, q)| q).collect();
        assert_eq!(s.pop_due(i64::MAX), expected);
    }
}
