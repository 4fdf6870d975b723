//! FileStorage's engine: a queue, schedule, results and counters in one directory, safe for
//! many producer and consumer processes at once and for processes killed at any point.
//!
//! Layout of `path/` (each part documents its own format):
//!
//! ```text
//! queue/index             head/tail per priority, memory-mapped, changed under flock (queue.rs)
//! queue/{prio}-{seg}.seg  appended message records; dequeue reads the highest priority's head
//! schedule/journal        append-only log of scheduled messages and removals (schedule.rs)
//! schedule/lock           flock serialising schedule changes
//! results/{h0}/{h1}/{h}   one result each, huey 3.5.4's place and format (kv.rs)
//! counters/{h}            one counter each, fixed-width decimal text (kv.rs)
//! dead/{id}               dead letters: undecodable messages set aside, created on first use
//!                         (dead.rs)
//! inflight/{token}        reliable delivery: one message being run each, lease = mtime,
//!                         created on first use (inflight.rs); inflight/.lock serialises
//!                         renewal and recovery
//! tmp/                    files being written; renamed or linked into place when complete
//! ```
//!
//! No reader ever sees half a message: queue records become visible when one index word moves
//! past them, after they are written; schedule records count only when whole and checksummed;
//! results are written under `tmp/` and appear under their final name in one rename or link. Enqueue and dequeue cost one `pwrite` or `pread`
//! and a few index stores whatever the depth. `dequeue_wait` and `wait_result` sleep on inotify
//! (Linux) for the directory the awaited file will appear in, and poll elsewhere. All file
//! I/O and every wait runs with the GIL released.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

mod dead;
mod inflight;
mod kv;
mod queue;
mod schedule;
mod sys;

pub use sys::FileError;

use dead::{DeadLetter, DeadLetters};
use inflight::Inflight;
use kv::{Counters, Results};
use queue::Queue;
use schedule::Schedule;
use sys::{Context, TmpDir, Watchers};

/// Temporary files of dead processes are swept at open once this old.
const STALE_TMP: Duration = Duration::from_secs(600);
/// Without inotify, `dequeue_wait` polls no less often than this.
const MAX_POLL: Duration = Duration::from_millis(20);
/// Waits are cut into slices this long so Ctrl-C (a Python signal) is noticed.
const SIGNAL_SLICE: Duration = Duration::from_millis(100);

/// The engine behind `huey.storage.FileStorage`.
pub struct FileStore {
    queue: Queue,
    schedule: Schedule,
    results: Results,
    counters: Counters,
    dead: DeadLetters,
    inflight: Inflight,
    watchers: Watchers,
}

impl FileStore {
    pub fn open(path: PathBuf, levels: i64, use_flock: bool, fsync: bool) -> sys::Result<Self> {
        if path.exists() && !path.is_dir() {
            return Err(FileError::NotADirectory(path));
        }
        if !(0..=4).contains(&levels) {
            return Err(FileError::Levels(levels));
        }
        std::fs::create_dir_all(&path).on(&path)?;
        let tmp = TmpDir::new(path.join("tmp"), fsync);
        std::fs::create_dir_all(path.join("tmp")).on(&path.join("tmp"))?;
        tmp.sweep(STALE_TMP);
        Ok(FileStore {
            queue: Queue::open(path.join("queue"), use_flock, fsync)?,
            schedule: Schedule::open(path.join("schedule"), tmp.clone(), use_flock)?,
            results: Results::new(path.join("results"), levels as usize, tmp.clone())?,
            counters: Counters::new(path.join("counters"))?,
            dead: DeadLetters::new(path.join("dead"), tmp.clone()),
            inflight: Inflight::new(path.join("inflight"), tmp, use_flock),
            watchers: Watchers::default(),
        })
    }
}

/// Microseconds since 1970-01-01 of a naive datetime's fields (days from the civil date,
/// Howard Hinnant's algorithm), so schedule order is exactly datetime order.
pub fn naive_micros(
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
    micro: i64,
) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + hour) * 60 + minute) * 60_000_000 + second * 1_000_000 + micro
}

fn datetime_micros(ts: &Bound<'_, PyAny>) -> PyResult<i64> {
    let field = |name: &str| -> PyResult<i64> { ts.getattr(name)?.extract() };
    let fields = (|| {
        Ok::<_, PyErr>(naive_micros(
            field("year")?,
            field("month")?,
            field("day")?,
            field("hour")?,
            field("minute")?,
            field("second")?,
            field("microsecond")?,
        ))
    })();
    fields.map_err(|_| {
        PyTypeError::new_err(format!(
            "expected a datetime, got {}",
            ts.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })
}

/// A message priority from `priority_of`: None is 0, and values outside 0..=65535 are
/// clamped, because a due message must reach the queue (raising would retry it forever).
fn clamp_priority(priority: &Bound<'_, PyAny>) -> PyResult<i64> {
    if priority.is_none() {
        return Ok(0);
    }
    if priority.lt(0)? {
        return Ok(0);
    }
    if priority.gt(queue::MAX_PRIORITY)? {
        return Ok(queue::MAX_PRIORITY);
    }
    priority.call_method0("__int__")?.extract()
}

/// What `recover_expired` returns: `(requeued, [(data, deliveries, letter id)])`.
type RecoveredTuple<'py> = (usize, Vec<(Bound<'py, PyBytes>, u32, String)>);

/// An in-flight entry as `(token, consumer, deliveries, lease_until, data)`.
type InflightTuple<'py> = (String, String, u32, f64, Bound<'py, PyBytes>);

/// Keys are str (UTF-8 on disk) or bytes.
fn key_bytes(key: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(s) = key.cast::<PyString>() {
        return Ok(s.to_cow()?.as_bytes().to_vec());
    }
    if let Ok(b) = key.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    Err(PyTypeError::new_err(format!(
        "key must be str or bytes, not {}",
        key.get_type().name()?
    )))
}

fn limit_arg(limit: Option<i64>) -> PyResult<Option<usize>> {
    match limit {
        Some(n) if n < 0 => Err(PyValueError::new_err(format!(
            "limit must be >= 0, got {n}"
        ))),
        other => Ok(other.map(|n| n as usize)),
    }
}

fn bytes_list<'py>(py: Python<'py>, items: Vec<Vec<u8>>) -> PyResult<Bound<'py, PyList>> {
    PyList::new(py, items.iter().map(|item| PyBytes::new(py, item)))
}

/// A dead letter as `(id, data, reason, time, deliveries)`.
type LetterTuple<'py> = (String, Bound<'py, PyBytes>, String, f64, u32);

fn letter_tuple(py: Python<'_>, letter: DeadLetter) -> LetterTuple<'_> {
    let data = PyBytes::new(py, &letter.data);
    (
        letter.id,
        data,
        letter.reason,
        letter.time,
        letter.deliveries,
    )
}

impl PyFileStore {
    /// Run `attempt` (GIL released) until it finds something or `timeout` seconds pass,
    /// sleeping on inotify for the queue directory in between. None or <= 0: one attempt.
    fn wait_for_queue<T: Send>(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
        mut attempt: impl FnMut() -> sys::Result<Option<T>> + Send,
    ) -> PyResult<Option<T>> {
        if let Some(found) = py.detach(&mut attempt)? {
            return Ok(Some(found));
        }
        let timeout = match timeout {
            Some(t) if t > 0.0 => t,
            _ => return Ok(None),
        };
        let deadline = Instant::now() + Duration::from_secs_f64(timeout.min(1e9));
        let queue = &self.store.queue;
        // Watch before the next look, so an enqueue in between still wakes us.
        self.store.watchers.watching(queue.dir(), |watcher| {
            let mut poll = Duration::from_millis(1);
            loop {
                if let Some(found) = py.detach(&mut attempt)? {
                    return Ok(Some(found));
                }
                let now = Instant::now();
                if now >= deadline {
                    return Ok(None);
                }
                let step = (deadline - now).min(SIGNAL_SLICE);
                py.detach(|| match watcher {
                    Some(w) => w.wait(step),
                    None => std::thread::sleep(step.min(poll)),
                });
                poll = (poll * 2).min(MAX_POLL);
                py.check_signals()?;
            }
        })
    }
}

/// `huey._native.FileStore`: the native half of `huey.storage.FileStorage`.
#[pyclass(frozen, module = "huey._native", name = "FileStore")]
pub struct PyFileStore {
    store: FileStore,
}

#[pymethods]
impl PyFileStore {
    #[new]
    #[pyo3(signature = (path, levels = 2, use_thread_lock = false, fsync = false))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        levels: i64,
        use_thread_lock: bool,
        fsync: bool,
    ) -> PyResult<Self> {
        let store = py.detach(|| FileStore::open(path, levels, !use_thread_lock, fsync))?;
        Ok(PyFileStore { store })
    }

    fn enqueue(&self, py: Python<'_>, data: &[u8], priority: &Bound<'_, PyAny>) -> PyResult<()> {
        // Out-of-range ints of any size get the same ValueError as small ones.
        let priority = match priority.extract::<i64>() {
            Ok(p) => p,
            Err(_) if priority.lt(0)? => {
                return Err(PyValueError::new_err(format!(
                    "priority must be a positive number, got {priority}"
                )))
            }
            Err(_) => {
                return Err(PyValueError::new_err(format!(
                    "priority must be <= {}, got {priority}",
                    queue::MAX_PRIORITY
                )))
            }
        };
        Queue::check_priority(priority)?;
        Ok(py.detach(|| self.store.queue.enqueue(data, priority))?)
    }

    fn dequeue<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let data = py.detach(|| self.store.queue.dequeue())?;
        Ok(data.map(|d| PyBytes::new(py, &d)))
    }

    /// Dequeue, waiting up to `timeout` seconds for a message from any thread or process.
    fn dequeue_wait<'py>(
        &self,
        py: Python<'py>,
        timeout: f64,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let queue = &self.store.queue;
        let data = self.wait_for_queue(py, Some(timeout), || queue.dequeue())?;
        Ok(data.map(|d| PyBytes::new(py, &d)))
    }

    /// Move the next message in flight under `token` with a lease of `lease` seconds;
    /// `(data, deliveries)` or None. `timeout` waits as `dequeue_wait`.
    #[pyo3(signature = (consumer, token, lease, timeout = None))]
    fn dequeue_reliable<'py>(
        &self,
        py: Python<'py>,
        consumer: &str,
        token: &str,
        lease: f64,
        timeout: Option<f64>,
    ) -> PyResult<Option<(Bound<'py, PyBytes>, u32)>> {
        if !inflight::is_token(token) {
            return Err(PyValueError::new_err(format!(
                "token must be 1-128 letters, digits, '-' or '_', got {token:?}"
            )));
        }
        if !lease.is_finite() || lease < 0.0 {
            return Err(PyValueError::new_err(format!(
                "lease must be a finite number of seconds >= 0, got {lease}"
            )));
        }
        let store = &self.store;
        let got = self.wait_for_queue(py, timeout, || {
            store.inflight.take(&store.queue, consumer, token, lease)
        })?;
        Ok(got.map(|(data, deliveries)| (PyBytes::new(py, &data), deliveries)))
    }

    /// Extend the leases of `tokens` to `lease` seconds from now; how many are in flight.
    fn renew_leases(&self, py: Python<'_>, tokens: Vec<String>, lease: f64) -> PyResult<usize> {
        Ok(py.detach(|| self.store.inflight.renew(&tokens, lease))?)
    }

    /// Remove the in-flight entry `token`; False when it is gone (recovered meanwhile).
    fn ack(&self, py: Python<'_>, token: &str) -> PyResult<bool> {
        Ok(py.detach(|| self.store.inflight.ack(token))?)
    }

    /// Requeue entries whose lease ended before `now`; those delivered `max_deliveries`
    /// times move to the dead-letter queue with `reason` (its `%d`: the deliveries):
    /// `(requeued, [(data, deliveries, letter id)])`.
    fn recover_expired<'py>(
        &self,
        py: Python<'py>,
        max_deliveries: u32,
        now: f64,
        reason: &str,
    ) -> PyResult<RecoveredTuple<'py>> {
        let store = &self.store;
        let recovered = py.detach(|| {
            store
                .inflight
                .recover(&store.queue, max_deliveries, now, |data, deliveries| {
                    let why = reason.replace("%d", &deliveries.to_string());
                    store.dead.put(data, &why, deliveries)
                })
        })?;
        let dead = recovered
            .dead
            .into_iter()
            .map(|(data, deliveries, id)| (PyBytes::new(py, &data), deliveries, id))
            .collect();
        Ok((recovered.requeued, dead))
    }

    /// In-flight entries, soonest lease expiry first.
    fn inflight_items<'py>(&self, py: Python<'py>) -> PyResult<Vec<InflightTuple<'py>>> {
        let items = py.detach(|| self.store.inflight.items())?;
        Ok(items
            .into_iter()
            .map(|e| {
                let data = PyBytes::new(py, &e.data);
                (e.token, e.consumer, e.deliveries, e.lease_until, data)
            })
            .collect())
    }

    /// Move every message due at `ts` from the schedule to the queue (each at
    /// `priority_of(data)`); returns them in due order. See `Schedule::move_due` for why a
    /// crash can duplicate but not lose one.
    #[pyo3(signature = (ts, priority_of = None))]
    fn move_due_to_queue<'py>(
        &self,
        py: Python<'py>,
        ts: &Bound<'py, PyAny>,
        priority_of: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let micros = datetime_micros(ts)?;
        let store = &self.store;
        let moved = py.detach(|| {
            store.schedule.move_due(micros, |messages| -> PyResult<()> {
                // Every priority first (the callback may fail or exit), then every enqueue.
                let priorities = match &priority_of {
                    None => vec![0; messages.len()],
                    Some(priority_of) => Python::attach(|py| {
                        let priority_of = priority_of.bind(py);
                        messages
                            .iter()
                            .map(|m| clamp_priority(&priority_of.call1((PyBytes::new(py, m),))?))
                            .collect::<PyResult<Vec<i64>>>()
                    })?,
                };
                for (message, priority) in messages.iter().zip(priorities) {
                    store.queue.enqueue(message, priority)?;
                }
                Ok(())
            })
        })?;
        bytes_list(py, moved)
    }

    fn queue_size(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(py.detach(|| self.store.queue.size())?)
    }

    #[pyo3(signature = (limit = None))]
    fn enqueued_items<'py>(
        &self,
        py: Python<'py>,
        limit: Option<i64>,
    ) -> PyResult<Bound<'py, PyList>> {
        let limit = limit_arg(limit)?;
        let items = py.detach(|| self.store.queue.items(limit))?;
        bytes_list(py, items)
    }

    fn flush_queue(&self, py: Python<'_>) -> PyResult<()> {
        Ok(py.detach(|| self.store.queue.flush())?)
    }

    fn add_to_schedule(&self, py: Python<'_>, data: &[u8], ts: &Bound<'_, PyAny>) -> PyResult<()> {
        let micros = datetime_micros(ts)?;
        Ok(py.detach(|| self.store.schedule.add(data, micros))?)
    }

    fn read_schedule<'py>(
        &self,
        py: Python<'py>,
        ts: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let micros = datetime_micros(ts)?;
        let items = py.detach(|| self.store.schedule.read(micros))?;
        bytes_list(py, items)
    }

    fn schedule_size(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(py.detach(|| self.store.schedule.size())?)
    }

    #[pyo3(signature = (limit = None))]
    fn scheduled_items<'py>(
        &self,
        py: Python<'py>,
        limit: Option<i64>,
    ) -> PyResult<Bound<'py, PyList>> {
        let limit = limit_arg(limit)?;
        let items = py.detach(|| self.store.schedule.items(limit))?;
        bytes_list(py, items)
    }

    fn flush_schedule(&self, py: Python<'_>) -> PyResult<()> {
        Ok(py.detach(|| self.store.schedule.flush())?)
    }

    fn put_data(&self, py: Python<'_>, key: &Bound<'_, PyAny>, value: &[u8]) -> PyResult<()> {
        let key = key_bytes(key)?;
        Ok(py.detach(|| self.store.results.put(&key, value))?)
    }

    /// Delete `delete_key`'s value, then store `value` at `key` (one GIL release; the
    /// consumer stores a result this way, dropping the task's revocation flag).
    fn delete_and_put(
        &self,
        py: Python<'_>,
        delete_key: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
        value: &[u8],
    ) -> PyResult<()> {
        let delete_key = key_bytes(delete_key)?;
        let key = key_bytes(key)?;
        let results = &self.store.results;
        Ok(py.detach(|| {
            results.delete(&delete_key)?;
            results.put(&key, value)
        })?)
    }

    /// Remove `key`'s value; False when there was none.
    fn delete_data(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let key = key_bytes(key)?;
        Ok(py.detach(|| self.store.results.delete(&key))?)
    }

    /// The values at `keys` (None where there is none), in order.
    fn peek_many<'py>(
        &self,
        py: Python<'py>,
        keys: Vec<Bound<'py, PyAny>>,
    ) -> PyResult<Vec<Option<Bound<'py, PyBytes>>>> {
        let keys = keys.iter().map(key_bytes).collect::<PyResult<Vec<_>>>()?;
        let results = &self.store.results;
        let values = py.detach(|| {
            keys.iter()
                .map(|key| results.peek(key))
                .collect::<sys::Result<Vec<_>>>()
        })?;
        Ok(values
            .into_iter()
            .map(|value| value.map(|d| PyBytes::new(py, &d)))
            .collect())
    }

    /// Store `value` unless `key` holds one; atomic across processes.
    fn put_if_empty(&self, py: Python<'_>, key: &Bound<'_, PyAny>, value: &[u8]) -> PyResult<bool> {
        let key = key_bytes(key)?;
        Ok(py.detach(|| self.store.results.put_if_empty(&key, value))?)
    }

    /// The value at `key`, or None when there is none.
    fn peek_data<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let key = key_bytes(key)?;
        let data = py.detach(|| self.store.results.peek(&key))?;
        Ok(data.map(|d| PyBytes::new(py, &d)))
    }

    fn pop_data<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let key = key_bytes(key)?;
        let data = py.detach(|| self.store.results.pop(&key))?;
        Ok(data.map(|d| PyBytes::new(py, &d)))
    }

    fn has_data_for_key(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let key = key_bytes(key)?;
        Ok(py.detach(|| self.store.results.has(&key)))
    }

    #[pyo3(signature = (key, timeout = None, backoff = 1.15, max_delay = 1.0))]
    fn wait_result(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        timeout: Option<f64>,
        backoff: f64,
        max_delay: f64,
    ) -> PyResult<bool> {
        let key = key_bytes(key)?;
        let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.clamp(0.0, 1e9)));
        loop {
            let slice = match deadline {
                Some(d) => d
                    .saturating_duration_since(Instant::now())
                    .min(SIGNAL_SLICE),
                None => SIGNAL_SLICE,
            };
            let done = py.detach(|| {
                let store = &self.store;
                store
                    .results
                    .wait(&store.watchers, &key, slice, backoff, max_delay)
            });
            if done {
                return Ok(true);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            py.check_signals()?;
        }
    }

    fn incr(&self, py: Python<'_>, key: &Bound<'_, PyAny>, amount: i64) -> PyResult<i64> {
        let key = key_bytes(key)?;
        Ok(py.detach(|| self.store.counters.incr(&key, amount))?)
    }

    fn delete_counter(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let key = key_bytes(key)?;
        Ok(py.detach(|| self.store.counters.delete(&key))?)
    }

    fn result_store_size(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(py.detach(|| self.store.results.size())?)
    }

    /// Every result as {key (str): value (bytes)}.
    fn result_items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let items = py.detach(|| self.store.results.items())?;
        let dict = PyDict::new(py);
        for (key, value) in items {
            let key = String::from_utf8_lossy(&key);
            dict.set_item(key.as_ref(), PyBytes::new(py, &value))?;
        }
        Ok(dict)
    }

    fn flush_results(&self, py: Python<'_>) -> PyResult<()> {
        Ok(py.detach(|| self.store.results.flush())?)
    }

    fn flush_counters(&self, py: Python<'_>) -> PyResult<()> {
        Ok(py.detach(|| self.store.counters.flush())?)
    }

    /// Set `data` aside under `dead/`; returns the letter's id.
    #[pyo3(signature = (data, reason, deliveries = 1))]
    fn put_dead_letter(
        &self,
        py: Python<'_>,
        data: &[u8],
        reason: &str,
        deliveries: u32,
    ) -> PyResult<String> {
        Ok(py.detach(|| self.store.dead.put(data, reason, deliveries))?)
    }

    /// Dead letters oldest first, as `(id, data, reason, time, deliveries)` tuples.
    #[pyo3(signature = (limit = None))]
    fn dead_letters<'py>(
        &self,
        py: Python<'py>,
        limit: Option<i64>,
    ) -> PyResult<Vec<LetterTuple<'py>>> {
        let limit = limit_arg(limit)?;
        let letters = py.detach(|| self.store.dead.list(limit))?;
        Ok(letters.into_iter().map(|l| letter_tuple(py, l)).collect())
    }

    fn pop_dead_letter<'py>(
        &self,
        py: Python<'py>,
        id: &str,
    ) -> PyResult<Option<LetterTuple<'py>>> {
        let letter = py.detach(|| self.store.dead.pop(id))?;
        Ok(letter.map(|l| letter_tuple(py, l)))
    }

    fn dead_letter_count(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(py.detach(|| self.store.dead.count())?)
    }

    fn flush_dead_letters(&self, py: Python<'_>) -> PyResult<()> {
        Ok(py.detach(|| self.store.dead.flush())?)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyFileStore>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naive_micros_counts_from_the_epoch() {
        assert_eq!(naive_micros(1970, 1, 1, 0, 0, 0, 0), 0);
        assert_eq!(naive_micros(1970, 1, 2, 0, 0, 0, 1), 86_400_000_001);
        assert_eq!(naive_micros(2000, 3, 1, 0, 0, 0, 0), 951_868_800_000_000);
        assert_eq!(naive_micros(1969, 12, 31, 23, 59, 59, 999_999), -1);
    }
}
