//! `MemoryStorage`: huey's in-process storage, all state behind one lock.
//!
//! Layout: a priority queue (max-heap on `(priority, -seq)`: higher priority first, first-in
//! first-out within a priority), a schedule (`crate::schedule::ScheduleHeap` keyed by
//! microsecond timestamps), a result map and a counter map, both keyed by `str` or `bytes`
//! keys exactly as given. Two condition variables wake `dequeue_wait` when work is enqueued
//! and `wait_result` when a result is written, so neither has to poll.
//!
//! Queued items and results are held as the caller's Python objects rather than copied bytes:
//! the data is opaque to the storage, so holding a reference saves a copy each way.
//!
//! Lock discipline (so that the GIL and the mutex can never deadlock): nothing that can run
//! Python code happens while the mutex is held. Arguments are converted before locking; under
//! the lock we only move Rust values and take new references (`clone_ref`, an incref); Python
//! objects are built, and replaced values dropped (which may run finalizers), after unlocking.
//! Threads waiting on a condition variable release the GIL first and never need it while they
//! hold the mutex.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyInt, PyList, PyString, PyTuple};

use crate::datetime::timestamp_micros;
use crate::schedule::ScheduleHeap;

/// How long a waiting thread stays away from the interpreter before checking for signals
/// (Ctrl-C). Wake-ups for data are immediate; this bounds only signal latency.
const SIGNAL_CHECK_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Str,
    Bytes,
}

/// A result or counter key as stored: `str` and `bytes` keys are distinct, as in a Python
/// dict. The hash is Python's own (cached on `str` and `bytes` objects, and randomised per
/// process), so a lookup hashes nothing and, through `KeyRef`, allocates nothing.
#[derive(Debug, Clone)]
struct Key {
    hash: isize,
    kind: KeyKind,
    data: Box<[u8]>,
}

/// A borrowed key: what lookups hash and compare.
#[derive(Clone, Copy)]
struct KeyRef<'a> {
    hash: isize,
    kind: KeyKind,
    data: &'a [u8],
}

/// Lets `HashMap<Key, _>` be searched with a `KeyRef` (std has no raw-entry API yet).
trait AsKeyRef {
    fn key_ref(&self) -> KeyRef<'_>;
}

impl AsKeyRef for Key {
    fn key_ref(&self) -> KeyRef<'_> {
        KeyRef {
            hash: self.hash,
            kind: self.kind,
            data: &self.data,
        }
    }
}

impl AsKeyRef for KeyRef<'_> {
    fn key_ref(&self) -> KeyRef<'_> {
        *self
    }
}

impl<'a> Borrow<dyn AsKeyRef + 'a> for Key {
    fn borrow(&self) -> &(dyn AsKeyRef + 'a) {
        self
    }
}

impl Hash for dyn AsKeyRef + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_isize(self.key_ref().hash);
    }
}

impl PartialEq for dyn AsKeyRef + '_ {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.key_ref(), other.key_ref());
        // The hash first: it is in the table entry, the bytes are behind another pointer.
        a.hash == b.hash && a.kind == b.kind && a.data == b.data
    }
}

impl Eq for dyn AsKeyRef + '_ {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self as &dyn AsKeyRef).hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        (self as &dyn AsKeyRef) == (other as &dyn AsKeyRef)
    }
}

impl Eq for Key {}

impl KeyRef<'_> {
    fn to_owned(self) -> Key {
        Key {
            hash: self.hash,
            kind: self.kind,
            data: self.data.into(),
        }
    }
}

impl Key {
    fn to_py<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        match self.kind {
            // Only ever built from a Python str's UTF-8, so this cannot fail.
            KeyKind::Str => PyString::new(py, &String::from_utf8_lossy(&self.data)).into_any(),
            KeyKind::Bytes => PyBytes::new(py, &self.data).into_any(),
        }
    }
}

/// Python's hash is already well mixed; spreading it once more keeps the top bits (which the
/// table uses as tags) varied even for small integer-like hashes.
#[derive(Default)]
struct PythonHash(u64);

impl Hasher for PythonHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_isize(&mut self, value: isize) {
        self.0 = (value as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type KeyMap<V> = HashMap<Key, V, BuildHasherDefault<PythonHash>>;

extern "C" {
    // Part of the stable ABI since 3.10 and exported by every CPython 3 (pyo3-ffi hides it
    // for abi3-py39). Unlike `PyUnicode_AsUTF8String` it returns the UTF-8 cached on the str
    // (for ASCII, the string's own buffer), so reading a key copies nothing.
    fn PyUnicode_AsUTF8AndSize(
        unicode: *mut pyo3::ffi::PyObject,
        size: *mut pyo3::ffi::Py_ssize_t,
    ) -> *const std::os::raw::c_char;
}

/// A key argument: an exact `str` or `bytes` object with its hash and its bytes.
struct PyKey<'py> {
    /// Keeps the object that `ptr` points into alive.
    _obj: Bound<'py, PyAny>,
    hash: isize,
    kind: KeyKind,
    ptr: *const u8,
    len: usize,
}

impl<'py> PyKey<'py> {
    fn new(key: &Bound<'py, PyAny>) -> PyResult<Self> {
        let py = key.py();
        let (obj, kind) = if key.is_exact_instance_of::<PyString>() {
            (key.clone(), KeyKind::Str)
        } else if key.is_exact_instance_of::<PyBytes>() {
            (key.clone(), KeyKind::Bytes)
        } else if let Ok(s) = key.cast::<PyString>() {
            // Subclasses may override __hash__; key on the plain value instead.
            (PyString::new(py, &s.to_cow()?).into_any(), KeyKind::Str)
        } else if let Ok(b) = key.cast::<PyBytes>() {
            (PyBytes::new(py, b.as_bytes()).into_any(), KeyKind::Bytes)
        } else {
            let type_name = key
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default();
            return Err(PyTypeError::new_err(format!(
                "storage keys must be str or bytes, got {type_name}"
            )));
        };
        let (ptr, len) = match kind {
            KeyKind::Str => {
                let mut size: pyo3::ffi::Py_ssize_t = 0;
                // SAFETY: `obj` is an exact str; the returned buffer lives as long as it does.
                let ptr = unsafe { PyUnicode_AsUTF8AndSize(obj.as_ptr(), &mut size) };
                if ptr.is_null() {
                    return Err(PyErr::fetch(py));
                }
                (ptr.cast::<u8>(), size as usize)
            }
            KeyKind::Bytes => {
                let bytes = obj.cast::<PyBytes>()?.as_bytes();
                (bytes.as_ptr(), bytes.len())
            }
        };
        let hash = obj.hash()?;
        Ok(PyKey {
            _obj: obj,
            hash,
            kind,
            ptr,
            len,
        })
    }

    fn key_ref(&self) -> KeyRef<'_> {
        KeyRef {
            hash: self.hash,
            kind: self.kind,
            // SAFETY: `ptr`/`len` point into `self.obj`, an immutable str or bytes kept alive
            // by `self._obj`.
            data: unsafe { std::slice::from_raw_parts(self.ptr, self.len) },
        }
    }

    fn to_key(&self) -> Key {
        self.key_ref().to_owned()
    }
}

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

#[derive(Default)]
struct State {
    queue: BinaryHeap<QueueEntry>,
    next_seq: u64,
    schedule: ScheduleHeap<Py<PyAny>>,
    results: KeyMap<Py<PyAny>>,
    counters: KeyMap<i64>,
}

/// Values taken out of the state, dropped by the caller after the lock is released.
type Taken = (Vec<QueueEntry>, Vec<Py<PyAny>>, Vec<Py<PyAny>>);

impl State {
    fn take_queue(&mut self) -> Vec<QueueEntry> {
        std::mem::take(&mut self.queue).into_vec()
    }

    fn take_results(&mut self) -> Vec<Py<PyAny>> {
        std::mem::take(&mut self.results).into_values().collect()
    }

    fn take_all(&mut self) -> Taken {
        self.counters.clear();
        (
            self.take_queue(),
            self.schedule.take_all(),
            self.take_results(),
        )
    }
}

fn empty_data(py: Python<'_>) -> PyResult<&Py<PyAny>> {
    static EMPTY_DATA: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    EMPTY_DATA.get_or_try_init(py, || {
        Ok(py.import("huey.constants")?.getattr("EmptyData")?.unbind())
    })
}

/// Python's `items[:limit]` after huey's `if limit:` (None and 0 mean everything).
fn limit_to_len(limit: Option<isize>, len: usize) -> usize {
    match limit {
        None | Some(0) => len,
        Some(n) if n > 0 => (n as usize).min(len),
        Some(n) => len.saturating_sub(n.unsigned_abs()),
    }
}

/// A wait timeout in seconds: `None` (or infinity) waits forever; negative means don't wait.
fn deadline(timeout: Option<f64>) -> PyResult<Option<Instant>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_nan() => Err(PyValueError::new_err("timeout must be a number, got nan")),
        Some(t) => Ok(Duration::try_from_secs_f64(t.max(0.0))
            .ok()
            .and_then(|d| Instant::now().checked_add(d))),
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
    if priority.is_exact_instance_of::<PyInt>() {
        // SAFETY: `priority` is a live int object.
        let value = unsafe { pyo3::ffi::PyLong_AsDouble(priority.as_ptr()) };
        if value == -1.0 {
            if let Some(err) = PyErr::take(priority.py()) {
                return Err(err);
            }
        }
        return Ok(value);
    }
    priority.extract()
}

/// Queue, schedule, results and counters for one process, safe to share between threads.
#[pyclass(subclass, frozen, module = "huey._native", name = "MemoryStorage")]
pub struct MemoryStorage {
    state: Mutex<State>,
    queue_ready: Condvar,
    result_ready: Condvar,
}

impl MemoryStorage {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Waits with the GIL released until `ready` finds something or `deadline` passes,
    /// checking for signals every `SIGNAL_CHECK_INTERVAL`.
    fn wait_for<T: Send>(
        &self,
        py: Python<'_>,
        condvar: &Condvar,
        deadline: Option<Instant>,
        ready: impl Fn(&mut State) -> Option<T> + Send + Sync,
    ) -> PyResult<Option<T>> {
        loop {
            let slice_end = Instant::now() + SIGNAL_CHECK_INTERVAL;
            let until = deadline.map_or(slice_end, |d| d.min(slice_end));
            let found = py.detach(|| {
                let mut state = self.lock();
                loop {
                    if let Some(value) = ready(&mut state) {
                        return Some(value);
                    }
                    if condvar.wait_until(&mut state, until).timed_out() {
                        return ready(&mut state);
                    }
                }
            });
            if found.is_some() {
                return Ok(found);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            py.check_signals()?;
        }
    }
}

#[pymethods]
impl MemoryStorage {
    /// Accepts and ignores huey's storage arguments; `BaseStorage.__init__` stores the name.
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        MemoryStorage {
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
        if let Some(entry) = self.lock().queue.pop() {
            return Ok(Some(entry.data));
        }
        let deadline = deadline(timeout)?;
        self.wait_for(py, &self.queue_ready, deadline, |state| {
            state.queue.pop().map(|e| e.data)
        })
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
            let len = state.schedule.len();
            let n = limit_to_len(limit, len);
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

    #[pyo3(signature = (key, value, is_result=false))]
    fn put_data(&self, key: &Bound<'_, PyAny>, value: Py<PyAny>, is_result: bool) -> PyResult<()> {
        let _ = is_result;
        let key = PyKey::new(key)?.to_key();
        let replaced = self.lock().results.insert(key, value);
        self.result_ready.notify_all();
        drop(replaced);
        Ok(())
    }

    /// Stores `value` only when `key` holds nothing; True when it was stored. `ttl` is
    /// accepted for interface compatibility and ignored, as in huey.
    #[pyo3(signature = (key, value, ttl=None))]
    fn put_if_empty(
        &self,
        key: &Bound<'_, PyAny>,
        value: Py<PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let _ = ttl;
        let key = PyKey::new(key)?.to_key();
        let stored = {
            let mut state = self.lock();
            match state.results.entry(key) {
                std::collections::hash_map::Entry::Occupied(_) => None,
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(value);
                    Some(())
                }
            }
        };
        if stored.is_some() {
            self.result_ready.notify_all();
        }
        Ok(stored.is_some())
    }

    fn peek_data(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let key = PyKey::new(key)?;
        let found = self
            .lock()
            .results
            .get(&key.key_ref() as &dyn AsKeyRef)
            .map(|v| v.clone_ref(py));
        match found {
            Some(value) => Ok(value),
            None => Ok(empty_data(py)?.clone_ref(py)),
        }
    }

    /// A dict of key -> value for those of `keys` that hold a value (keys as given).
    fn peek_many<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let mut given = Vec::new();
        for key in keys.try_iter()? {
            let key = key?;
            let parsed = PyKey::new(&key)?;
            given.push((key, parsed));
        }
        let found: Vec<Option<Py<PyAny>>> = {
            let state = self.lock();
            given
                .iter()
                .map(|(_, k)| {
                    let k = k.key_ref();
                    state
                        .results
                        .get(&k as &dyn AsKeyRef)
                        .map(|v| v.clone_ref(py))
                })
                .collect()
        };
        let out = PyDict::new(py);
        for ((key, _), value) in given.into_iter().zip(found) {
            if let Some(value) = value {
                out.set_item(key, value)?;
            }
        }
        Ok(out)
    }

    fn pop_data(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let key = PyKey::new(key)?;
        let popped = self.lock().results.remove(&key.key_ref() as &dyn AsKeyRef);
        match popped {
            Some(value) => Ok(value),
            None => Ok(empty_data(py)?.clone_ref(py)),
        }
    }

    fn delete_data(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let key = PyKey::new(key)?;
        let removed = self.lock().results.remove(&key.key_ref() as &dyn AsKeyRef);
        Ok(removed.is_some())
    }

    fn has_data_for_key(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let key = PyKey::new(key)?;
        Ok(self
            .lock()
            .results
            .contains_key(&key.key_ref() as &dyn AsKeyRef))
    }

    /// Waits until `key` holds a value; False when `timeout` seconds pass first. Woken by the
    /// write itself, so `backoff` and `max_delay` (polling parameters) are accepted and unused.
    #[pyo3(signature = (key, timeout=None, backoff=1.15, max_delay=1.0))]
    fn wait_result(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        timeout: Option<f64>,
        backoff: f64,
        max_delay: f64,
    ) -> PyResult<bool> {
        let _ = (backoff, max_delay);
        let key = PyKey::new(key)?.to_key();
        if self.lock().results.contains_key(&key) {
            return Ok(true);
        }
        let deadline = deadline(timeout)?;
        let found = self.wait_for(py, &self.result_ready, deadline, |state| {
            state.results.contains_key(&key).then_some(())
        })?;
        Ok(found.is_some())
    }

    fn result_store_size(&self) -> usize {
        self.lock().results.len()
    }

    fn result_items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let items: Vec<(Key, Py<PyAny>)> = {
            let state = self.lock();
            state
                .results
                .iter()
                .map(|(k, v)| (k.clone(), v.clone_ref(py)))
                .collect()
        };
        let out = PyDict::new(py);
        for (key, value) in items {
            out.set_item(key.to_py(py), value)?;
        }
        Ok(out)
    }

    fn flush_results(&self) {
        let taken = self.lock().take_results();
        drop(taken);
    }

    // ---- counters ----

    /// Adds `amount` to the counter at `key` (starting from 0) and returns the new value.
    #[pyo3(signature = (key, amount=1))]
    fn incr(&self, key: &Bound<'_, PyAny>, amount: i64) -> PyResult<i64> {
        let key = PyKey::new(key)?;
        let mut state = self.lock();
        let counter = match state.counters.get_mut(&key.key_ref() as &dyn AsKeyRef) {
            Some(counter) => counter,
            None => state.counters.entry(key.to_key()).or_insert(0),
        };
        let value = counter.checked_add(amount).ok_or_else(|| {
            PyOverflowError::new_err(format!("counter {counter} + {amount} overflows 64 bits"))
        })?;
        *counter = value;
        Ok(value)
    }

    fn delete_counter(&self, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let key = PyKey::new(key)?;
        self.lock().counters.remove(&key.key_ref() as &dyn AsKeyRef);
        Ok(())
    }

    fn flush_counters(&self) {
        self.lock().counters.clear();
    }

    /// A snapshot of the counters as a dict (huey's own tests read this attribute).
    #[getter(_counters)]
    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let items: Vec<(Key, i64)> = {
            let state = self.lock();
            state
                .counters
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect()
        };
        let out = PyDict::new(py);
        for (key, value) in items {
            out.set_item(key.to_py(py), value)?;
        }
        Ok(out)
    }

    fn flush_all(&self) {
        let taken = self.lock().take_all();
        drop(taken);
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<MemoryStorage>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_borrowed_view_and_kind() {
        let key = |kind, data: &'static [u8]| KeyRef {
            hash: 7, // equal hashes force the comparison of kind and bytes
            kind,
            data,
        };
        let mut map: KeyMap<u32> = KeyMap::default();
        map.insert(key(KeyKind::Str, b"a").to_owned(), 1);
        map.insert(key(KeyKind::Bytes, b"a").to_owned(), 2);
        map.insert(key(KeyKind::Str, b"b").to_owned(), 3);
        assert_eq!(map.len(), 3);
        let get = |k: KeyRef<'_>| map.get(&k as &dyn AsKeyRef).copied();
        assert_eq!(get(key(KeyKind::Str, b"a")), Some(1));
        assert_eq!(get(key(KeyKind::Bytes, b"a")), Some(2));
        assert_eq!(get(key(KeyKind::Str, b"b")), Some(3));
        assert_eq!(get(key(KeyKind::Bytes, b"b")), None);
    }

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
