//! `MemoryStore`: the native half of `huey.storage.MemoryStorage`, all state behind one lock.
//!
//! Layout: a priority queue (max-heap on `(priority, -seq)`: higher priority first, first-in
//! first-out within a priority), a schedule (`crate::schedule::ScheduleHeap` keyed by
//! microsecond timestamps), a result map and a counter map keyed by a key's bytes and kind
//! (`str` and `bytes` keys stay distinct, as in a Python dict), and the dead letters (id ->
//! letter, oldest first). Two condition variables wake `dequeue_wait` when work is enqueued and
//! `wait_result` when a result is written, so neither has to poll; both wait through
//! `crate::wait`.
//!
//! Queued items, results and dead letters are held as the caller's Python objects rather than
//! copied bytes: the data is opaque to the storage, so holding a reference saves a copy each
//! way on the hot path (huey's own MemoryStorage hands back the very objects it was given).
//!
//! Lock discipline (so that the GIL and the mutex can never deadlock): nothing that can run
//! Python code happens while the mutex is held. Arguments are converted before locking; under
//! the lock we only move Rust values and take new references (`clone_ref`, an incref); Python
//! objects are built, and replaced values dropped (which may run finalizers), after unlocking.
//! Threads waiting on a condition variable release the GIL first and never need it while they
//! hold the mutex.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex, MutexGuard};
use pyo3::exceptions::{PyOverflowError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyInt, PyList};

use crate::datetime::timestamp_micros;
use crate::ffi;
use crate::schedule::ScheduleHeap;
use crate::wait;

mod keys;

use keys::{key_to_py, KeyKind, KeyMap, KeyRef};

struct QueueEntry<T = Py<PyAny>> {
    priority: f64,
    seq: u64,
    data: T,
}

impl<T> PartialEq for QueueEntry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<T> Eq for QueueEntry<T> {}

impl<T> PartialOrd for QueueEntry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for QueueEntry<T> {
    /// Greatest first out: highest priority, then lowest sequence number.
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .total_cmp(&other.priority)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

struct DeadLetter {
    data: Py<PyAny>,
    reason: String,
    time: f64,
    deliveries: u32,
}

/// A dead letter as `(id, data, reason, time, deliveries)`, as `FileStore` returns them.
type LetterTuple = (String, Py<PyAny>, String, f64, u32);

#[derive(Default)]
struct State {
    queue: BinaryHeap<QueueEntry>,
    next_seq: u64,
    schedule: ScheduleHeap<Py<PyAny>>,
    results: KeyMap<Py<PyAny>>,
    counters: KeyMap<i64>,
    dead: BTreeMap<u64, DeadLetter>,
    next_dead_id: u64,
}

/// Values taken out of the state, dropped by the caller after the lock is released.
type Taken = (Vec<QueueEntry>, Vec<Py<PyAny>>, Vec<Py<PyAny>>);

impl State {
    fn take_queue(&mut self) -> Vec<QueueEntry> {
        std::mem::take(&mut self.queue).into_vec()
    }

    /// Empties the queue, schedule, results and counters; dead letters stay (see base.py).
    fn take_all(&mut self) -> Taken {
        self.counters = KeyMap::default();
        (
            self.take_queue(),
            self.schedule.take_all(),
            self.results.take_values(),
        )
    }
}

static EMPTY_DATA: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn empty_data(py: Python<'_>) -> PyResult<&Py<PyAny>> {
    EMPTY_DATA.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.import("huey.constants")?.getattr("EmptyData")?.unbind())
    })
}

/// Looks up huey's `EmptyData` marker now (see `crate::preload`).
pub fn preload(py: Python<'_>) -> PyResult<()> {
    empty_data(py).map(|_| ())
}

/// `value`, or huey's `EmptyData` marker when there is none.
fn or_empty(py: Python<'_>, value: Option<Py<PyAny>>) -> PyResult<Py<PyAny>> {
    match value {
        Some(value) => Ok(value),
        None => Ok(empty_data(py)?.clone_ref(py)),
    }
}

/// Python's `items[:limit]` after huey's `if limit:` (None and 0 mean everything).
fn limit_to_len(limit: Option<isize>, len: usize) -> usize {
    match limit {
        None | Some(0) => len,
        Some(n) if n > 0 => (n as usize).min(len),
        Some(n) => len.saturating_sub(n.unsigned_abs()),
    }
}

fn priority_value(priority: Option<f64>) -> PyResult<f64> {
    match priority {
        None => Ok(0.0),
        Some(p) if p.is_nan() => Err(PyValueError::new_err("priority must be a number, got nan")),
        // Adding 0.0 turns -0.0 into 0.0, which total_cmp would otherwise order below 0.
        Some(p) => Ok(p + 0.0),
    }
}

/// A priority as a float. Ints (the usual case) are read directly: the generic float
/// conversion goes through `int.__float__`, allocating a float object per call.
fn priority_as_f64(priority: &Bound<'_, PyAny>) -> PyResult<f64> {
    match priority.cast_exact::<PyInt>() {
        Ok(int) => ffi::int_as_f64(int),
        Err(_) => priority.extract(),
    }
}

/// Queue, schedule, results, counters and dead letters for one process, shared by threads.
#[pyclass(frozen, module = "huey._native", name = "MemoryStore")]
pub struct MemoryStore {
    state: Mutex<State>,
    queue_ready: Condvar,
    result_ready: Condvar,
}

impl MemoryStore {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Waits (see `crate::wait`) until `ready` finds something or `timeout` passes, woken
    /// through `condvar`.
    fn wait_for<T: Send>(
        &self,
        py: Python<'_>,
        condvar: &Condvar,
        timeout: Option<Duration>,
        ready: impl Fn(&mut State) -> Option<T> + Send + Sync,
    ) -> PyResult<Option<T>> {
        wait::wait(py, timeout, |slice| {
            let mut state = self.lock();
            if let Some(found) = ready(&mut state) {
                return Ok::<_, PyErr>(Some(found));
            }
            if !slice.is_zero() {
                let _ = condvar.wait_for(&mut state, slice);
            }
            Ok(ready(&mut state))
        })
    }
}

#[pymethods]
impl MemoryStore {
    #[new]
    fn new() -> Self {
        MemoryStore {
            state: Mutex::new(State::default()),
            queue_ready: Condvar::new(),
            result_ready: Condvar::new(),
        }
    }

    // ---- queue ----

    #[pyo3(signature = (data, priority=None))]
    fn enqueue(&self, data: Py<PyAny>, priority: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let priority = priority_value(priority.map(priority_as_f64).transpose()?)?;
        {
            let mut state = self.lock();
            let seq = state.next_seq;
            state.next_seq += 1;
            state.queue.push(QueueEntry {
                priority,
                seq,
                data,
            });
        }
        self.queue_ready.notify_one();
        Ok(())
    }

    fn dequeue(&self) -> Option<Py<PyAny>> {
        self.lock().queue.pop().map(|e| e.data)
    }

    /// Like `dequeue`, but waits up to `timeout` seconds (forever for None) for an item.
    #[pyo3(signature = (timeout=None))]
    fn dequeue_wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Py<PyAny>>> {
        let timeout = wait::timeout_arg("timeout", timeout)?;
        if let Some(entry) = self.lock().queue.pop() {
            return Ok(Some(entry.data));
        }
        self.wait_for(py, &self.queue_ready, timeout, |state| {
            state.queue.pop().map(|e| e.data)
        })
    }

    /// Up to `n` messages in dequeue order, taken under one lock; when the queue is empty,
    /// waits up to `timeout` seconds (None: not at all) for the next enqueue. [] when none.
    #[pyo3(signature = (n, timeout=None))]
    fn dequeue_many(
        &self,
        py: Python<'_>,
        n: isize,
        timeout: Option<f64>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let n = super::batch_arg(n)?;
        let timeout = wait::timeout_arg("timeout", timeout)?;
        let take = |state: &mut State| {
            let batch: Vec<Py<PyAny>> = std::iter::from_fn(|| state.queue.pop().map(|e| e.data))
                .take(n)
                .collect();
            (!batch.is_empty()).then_some(batch)
        };
        if let Some(batch) = take(&mut self.lock()) {
            return Ok(batch);
        }
        let Some(timeout) = timeout.filter(|t| !t.is_zero()) else {
            return Ok(Vec::new());
        };
        let batch = self.wait_for(py, &self.queue_ready, Some(timeout), take)?;
        Ok(batch.unwrap_or_default())
    }

    fn queue_size(&self) -> usize {
        self.lock().queue.len()
    }

    #[pyo3(signature = (limit=None))]
    fn enqueued_items<'py>(
        &self,
        py: Python<'py>,
        limit: Option<isize>,
    ) -> PyResult<Bound<'py, PyList>> {
        let items: Vec<Py<PyAny>> = {
            let state = self.lock();
            let mut entries: Vec<&QueueEntry> = state.queue.iter().collect();
            entries.sort_unstable_by(|a, b| b.cmp(a));
            let n = limit_to_len(limit, entries.len());
            entries[..n].iter().map(|e| e.data.clone_ref(py)).collect()
        };
        PyList::new(py, items)
    }

    fn flush_queue(&self) {
        let taken = self.lock().take_queue();
        drop(taken);
    }

    // ---- schedule ----

    fn add_to_schedule(&self, data: Py<PyAny>, ts: &Bound<'_, PyAny>) -> PyResult<()> {
        let eta = timestamp_micros(ts, "ts")?;
        self.lock().schedule.push(eta, data);
        Ok(())
    }

    /// Removes and returns every scheduled item due at or before `ts`, soonest first.
    fn read_schedule<'py>(
        &self,
        py: Python<'py>,
        ts: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let now = timestamp_micros(ts, "ts")?;
        let due = self.lock().schedule.pop_due(now);
        PyList::new(py, due)
    }

    fn schedule_size(&self) -> usize {
        self.lock().schedule.len()
    }

    #[pyo3(signature = (limit=None))]
    fn scheduled_items<'py>(
        &self,
        py: Python<'py>,
        limit: Option<isize>,
    ) -> PyResult<Bound<'py, PyList>> {
        let items: Vec<Py<PyAny>> = {
            let state = self.lock();
            let n = limit_to_len(limit, state.schedule.len());
            state
                .schedule
                .items(Some(n))
                .into_iter()
                .map(|(_, data)| data.clone_ref(py))
                .collect()
        };
        PyList::new(py, items)
    }

    fn flush_schedule(&self) {
        let taken = self.lock().schedule.take_all();
        drop(taken);
    }

    // ---- results ----

    /// Stores `value` at `key`. `is_result` (huey's storage signature) changes nothing here.
    #[pyo3(signature = (key, value, is_result=false))]
    fn put_data(&self, key: &Bound<'_, PyAny>, value: Py<PyAny>, is_result: bool) -> PyResult<()> {
        let _ = is_result;
        let key = KeyRef::new(key)?;
        let replaced = self.lock().results.insert(key, value);
        self.result_ready.notify_all();
        drop(replaced);
        Ok(())
    }

    /// Stores `value` only when `key` holds nothing; True when it was stored.
    fn put_if_empty(&self, key: &Bound<'_, PyAny>, value: Py<PyAny>) -> PyResult<bool> {
        let key = KeyRef::new(key)?;
        let stored = {
            let mut state = self.lock();
            !state.results.contains(key) && state.results.insert(key, value).is_none()
        };
        if stored {
            self.result_ready.notify_all();
        }
        Ok(stored)
    }

    /// The value at `key`, or `huey.constants.EmptyData` when there is none (None is a value
    /// like any other here).
    fn peek_data(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let key = KeyRef::new(key)?;
        let found = self.lock().results.get(key).map(|v| v.clone_ref(py));
        or_empty(py, found)
    }

    /// A dict of key -> value for those of `keys` that hold a value (keys as given).
    fn peek_many<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let given: Vec<Bound<'py, PyAny>> = keys.try_iter()?.collect::<PyResult<_>>()?;
        let refs: Vec<KeyRef<'_>> = given.iter().map(KeyRef::new).collect::<PyResult<_>>()?;
        let found: Vec<Option<Py<PyAny>>> = {
            let state = self.lock();
            refs.iter()
                .map(|k| state.results.get(*k).map(|v| v.clone_ref(py)))
                .collect()
        };
        let out = PyDict::new(py);
        for (key, value) in given.iter().zip(found) {
            if let Some(value) = value {
                out.set_item(key, value)?;
            }
        }
        Ok(out)
    }

    /// Removes and returns the value at `key`, or `EmptyData` when there is none.
    fn pop_data(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let key = KeyRef::new(key)?;
        let popped = self.lock().results.remove(key);
        or_empty(py, popped)
    }

    fn delete_data(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let key = KeyRef::new(key)?;
        let removed = self.lock().results.remove(key);
        Ok(removed.is_some())
    }

    fn has_data_for_key(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let key = KeyRef::new(key)?;
        Ok(self.lock().results.contains(key))
    }

    /// Waits until `key` holds a value; False when `timeout` seconds pass first. Woken by the
    /// write itself, so there is no polling.
    #[pyo3(signature = (key, timeout=None))]
    fn wait_result(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<bool> {
        let timeout = wait::timeout_arg("timeout", timeout)?;
        let key = KeyRef::new(key)?;
        if self.lock().results.contains(key) {
            return Ok(true);
        }
        let (kind, bytes) = (key.kind, key.bytes.to_vec());
        let found = self.wait_for(py, &self.result_ready, timeout, |state| {
            let key = KeyRef {
                kind,
                bytes: &bytes,
            };
            state.results.contains(key).then_some(())
        })?;
        Ok(found.is_some())
    }

    fn result_store_size(&self) -> usize {
        self.lock().results.len()
    }

    fn result_items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let items: Vec<(KeyKind, Vec<u8>, Py<PyAny>)> = {
            let state = self.lock();
            state
                .results
                .iter()
                .map(|(kind, key, v)| (kind, key.to_vec(), v.clone_ref(py)))
                .collect()
        };
        let out = PyDict::new(py);
        for (kind, key, value) in items {
            out.set_item(key_to_py(py, kind, &key), value)?;
        }
        Ok(out)
    }

    fn flush_results(&self) {
        let taken = self.lock().results.take_values();
        drop(taken);
    }

    // ---- counters ----

    /// Adds `amount` to the counter at `key` (starting from 0) and returns the new value.
    #[pyo3(signature = (key, amount=1))]
    fn incr(&self, key: &Bound<'_, PyAny>, amount: i64) -> PyResult<i64> {
        let key = KeyRef::new(key)?;
        let mut state = self.lock();
        let counter = state.counters.get_or_insert_with(key, || 0);
        let value = counter.checked_add(amount).ok_or_else(|| {
            PyOverflowError::new_err(format!("counter {counter} + {amount} overflows 64 bits"))
        })?;
        *counter = value;
        Ok(value)
    }

    fn delete_counter(&self, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let key = KeyRef::new(key)?;
        self.lock().counters.remove(key);
        Ok(())
    }

    fn flush_counters(&self) {
        self.lock().counters = KeyMap::default();
    }

    /// The counters as a dict (huey's own tests read `storage._counters`).
    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let items: Vec<(KeyKind, Vec<u8>, i64)> = {
            let state = self.lock();
            state
                .counters
                .iter()
                .map(|(kind, key, v)| (kind, key.to_vec(), *v))
                .collect()
        };
        let out = PyDict::new(py);
        for (kind, key, value) in items {
            out.set_item(key_to_py(py, kind, &key), value)?;
        }
        Ok(out)
    }

    /// Empties the queue, schedule, results and counters; dead letters stay.
    fn flush_all(&self) {
        let taken = self.lock().take_all();
        drop(taken);
    }

    // ---- dead letters ----

    /// Sets `data` aside with `reason`; returns the letter's id.
    #[pyo3(signature = (data, reason, deliveries=1))]
    fn put_dead_letter(&self, data: Py<PyAny>, reason: String, deliveries: u32) -> String {
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut state = self.lock();
        state.next_dead_id += 1;
        let id = state.next_dead_id;
        state.dead.insert(
            id,
            DeadLetter {
                data,
                reason,
                time,
                deliveries,
            },
        );
        id.to_string()
    }

    /// Dead letters oldest first (at most `limit`), as `(id, data, reason, time, deliveries)`.
    #[pyo3(signature = (limit=None))]
    fn dead_letters(&self, py: Python<'_>, limit: Option<usize>) -> Vec<LetterTuple> {
        let state = self.lock();
        state
            .dead
            .iter()
            .take(limit.unwrap_or(usize::MAX))
            .map(|(id, l)| letter_tuple(py, *id, l))
            .collect()
    }

    /// Removes and returns the letter `id`, or None when there is no such letter.
    fn pop_dead_letter(&self, py: Python<'_>, id: &str) -> Option<LetterTuple> {
        let id: u64 = id.parse().ok()?;
        let letter = self.lock().dead.remove(&id)?;
        let tuple = letter_tuple(py, id, &letter);
        Some(tuple)
    }

    fn dead_letter_count(&self) -> usize {
        self.lock().dead.len()
    }

    fn flush_dead_letters(&self) {
        let taken = std::mem::take(&mut self.lock().dead);
        drop(taken);
    }
}

fn letter_tuple(py: Python<'_>, id: u64, letter: &DeadLetter) -> LetterTuple {
    (
        id.to_string(),
        letter.data.clone_ref(py),
        letter.reason.clone(),
        letter.time,
        letter.deliveries,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_python_slicing() {
        assert_eq!(limit_to_len(None, 5), 5);
        assert_eq!(limit_to_len(Some(0), 5), 5);
        assert_eq!(limit_to_len(Some(2), 5), 2);
        assert_eq!(limit_to_len(Some(9), 5), 5);
        assert_eq!(limit_to_len(Some(-2), 5), 3);
        assert_eq!(limit_to_len(Some(-9), 5), 0);
    }

    #[test]
    fn priorities_order_high_first_then_fifo() {
        let mut heap = BinaryHeap::new();
        let priorities = [
            None,
            Some(-0.0),
            Some(2.5),
            Some(-1.0),
            Some(0.0),
            Some(2.5),
        ];
        for (seq, p) in priorities.into_iter().enumerate() {
            heap.push(QueueEntry {
                priority: priority_value(p).unwrap(),
                seq: seq as u64,
                data: seq,
            });
        }
        let order: Vec<usize> = std::iter::from_fn(|| heap.pop().map(|e| e.data)).collect();
        assert_eq!(order, [2, 5, 0, 1, 4, 3]);
        assert!(priority_value(Some(f64::NAN)).is_err());
    }
}
