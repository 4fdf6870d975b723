//! FileStorage's engine: a queue, schedule, results and counters in one directory, safe for
//! many producer and consumer processes at once, for processes killed at any point, for
//! damaged bytes and for a full disk.
//!
//! Layout of `path/` (each part documents its own format):
//!
//! ```text
//! queue.d/index           head/tail per priority, memory-mapped, a cache of the segments
//!                         (index.rs)
//! queue.d/{prio}-{seg}.seg  self-checking message records (queue.rs, frame.rs)
//! queue.d/lock            flock serialising queue changes
//! schedule.d/journal      append-only log of scheduled messages and removals (journal.rs)
//! schedule.d/lock         flock serialising schedule changes
//! queue, schedule         text files keeping huey 3.5.4 out (legacy.rs)
//! import/{id}/            huey 3.5.4's queue and schedule while they are taken over
//! results/{h0}/{h1}/{h}   one result each, huey 3.5.4's place and format (kv.rs)
//! counters/{h}            one counter each, fixed-width decimal text (kv.rs)
//! dead/{id}               dead letters: undecodable messages and damaged bytes set aside,
//!                         created on first use (dead.rs)
//! inflight/{token}        reliable delivery: one message being run each, lease = mtime,
//!                         created on first use (inflight.rs); inflight/.lock serialises
//!                         renewal and recovery
//! tmp/                    files being written; renamed or linked into place when complete
//! ```
//!
//! No reader ever sees half a message: queue records become visible when one index word moves
//! past them, after they are written; schedule records count only when whole and checksummed;
//! results are written under `tmp/` and appear under their final name in one rename or link.
//! Damaged bytes are set aside in the dead-letter queue and logged (logger
//! `huey.storage.file`) by the one process that skips them; every good record around them is
//! still delivered. Every write goes through `write`/`pwrite` or into a fully written file,
//! so a full or read-only filesystem is an `OSError` naming the path, never a signal.
//! `dequeue_wait` and `wait_result` sleep on a directory watcher (watch.rs). All file I/O and
//! every wait runs with the GIL released.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

mod convert;
mod dead;
mod frame;
mod index;
mod inflight;
mod journal;
mod kv;
mod legacy;
mod queue;
mod sys;

pub use sys::FileError;

use super::watch::Watchers;
use convert::*;
use dead::DeadLetters;
use frame::{Damage, Report};
use inflight::Inflight;
use journal::ScheduleJournal;
use kv::{Counters, Results};
use queue::Queue;
use sys::{Context, TmpDir};

use crate::datetime::timestamp_micros;
use crate::wait;

/// Temporary files of dead processes are swept at open once this old.
const STALE_TMP: Duration = Duration::from_secs(600);
/// Without inotify, `dequeue_wait` polls no less often than this.
const MAX_POLL: Duration = Duration::from_millis(20);

/// The engine behind `huey.storage.FileStorage`.
pub struct FileStore {
    queue: Queue,
    schedule: ScheduleJournal,
    results: Results,
    counters: Counters,
    dead: DeadLetters,
    inflight: Inflight,
    watchers: Watchers,
}

/// Log `message` on the `huey.storage.file` logger at `level` (called without the GIL; a
/// no-op without Python).
fn log(level: &str, message: &str) {
    wait::try_attach(|py| {
        let logger = py
            .import("logging")
            .and_then(|logging| logging.call_method1("getLogger", ("huey.storage.file",)));
        if let Ok(logger) = logger {
            let _ = logger.call_method1(level, (message,));
        }
    });
}

/// Where damage found by the queue and the schedule goes: its bytes into the dead-letter
/// queue, its place into the log.
fn damage_sink(dead: DeadLetters) -> Report {
    Arc::new(move |damage: Damage| {
        let reason = damage.reason();
        if damage.bytes.is_empty() {
            log("warning", &reason);
        } else {
            let id = dead.put(&damage.bytes, &reason, 0)?;
            log(
                "error",
                &format!("{reason}; its bytes are set aside as dead letter {id}"),
            );
        }
        Ok(())
    })
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
        let dead = DeadLetters::new(path.join("dead"), tmp.clone());
        let report = damage_sink(dead.clone());
        let queue = Queue::open(path.join("queue.d"), fsync, use_flock, report.clone())?;
        let schedule =
            ScheduleJournal::open(path.join("schedule.d"), tmp.clone(), use_flock, report)?;
        legacy::take_over(&path, &queue, &schedule, &tmp, use_flock)?;
        Ok(FileStore {
            queue,
            schedule,
            results: Results::new(path.join("results"), levels as usize, tmp.clone())?,
            counters: Counters::new(path.join("counters"))?,
            dead,
            inflight: Inflight::new(path.join("inflight"), tmp, use_flock),
            watchers: Watchers::default(),
        })
    }
}

impl PyFileStore {
    /// Run `attempt` (GIL released) until it finds something or `timeout` passes (see
    /// `crate::wait`), sleeping on inotify for the queue directory in between. None or zero:
    /// one attempt.
    fn wait_for_queue<T: Send>(
        &self,
        py: Python<'_>,
        timeout: Option<Duration>,
        mut attempt: impl FnMut() -> sys::Result<Option<T>> + Send,
    ) -> PyResult<Option<T>> {
        if let Some(found) = wait::detach(py, &mut attempt)? {
            return Ok(Some(found));
        }
        let Some(timeout) = timeout.filter(|t| !t.is_zero()) else {
            return Ok(None);
        };
        let queue = &self.store.queue;
        // Watch before the next look, so an enqueue in between still wakes us.
        self.store.watchers.watching(queue.dir(), |watcher| {
            let mut poll = Duration::from_millis(1);
            wait::wait(py, Some(timeout), |slice| {
                if let Some(found) = attempt()? {
                    return Ok(Some(found));
                }
                match watcher {
                    Some(w) => w.wait(slice),
                    None => std::thread::sleep(slice.min(poll)),
                }
                poll = (poll * 2).min(MAX_POLL);
                attempt()
            })
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
        let store = wait::detach(py, || {
            FileStore::open(path, levels, !use_thread_lock, fsync)
        })?;
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
        Ok(wait::detach(py, || {
            self.store.queue.enqueue(data, priority)
        })?)
    }

    fn dequeue<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let data = wait::detach(py, || self.store.queue.dequeue())?;
        Ok(data.map(|d| PyBytes::new(py, &d)))
    }

    /// Dequeue, waiting up to `timeout` seconds for a message from any thread or process.
    fn dequeue_wait<'py>(
        &self,
        py: Python<'py>,
        timeout: f64,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let timeout = wait::seconds_arg("timeout", timeout)?;
        let queue = &self.store.queue;
        let data = self.wait_for_queue(py, Some(timeout), || queue.dequeue())?;
        Ok(data.map(|d| PyBytes::new(py, &d)))
    }

    /// Up to `n` messages in dequeue order with one hold of the queue lock; when the queue
    /// is empty, waits up to `timeout` seconds (None: not at all) as `dequeue_wait` does.
    #[pyo3(signature = (n, timeout = None))]
    fn dequeue_many<'py>(
        &self,
        py: Python<'py>,
        n: isize,
        timeout: Option<f64>,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let n = super::batch_arg(n)?;
        let timeout = wait::timeout_arg("timeout", timeout)?;
        let queue = &self.store.queue;
        let batch = self.wait_for_queue(py, timeout, || {
            let batch = queue.dequeue_many(n)?;
            Ok((!batch.is_empty()).then_some(batch))
        })?;
        let batch = batch.unwrap_or_default();
        Ok(batch.iter().map(|data| PyBytes::new(py, data)).collect())
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
        let timeout = wait::timeout_arg("timeout", timeout)?;
        let store = &self.store;
        let got = self.wait_for_queue(py, timeout, || {
            store.inflight.take(&store.queue, consumer, token, lease)
        })?;
        Ok(got.map(|(data, deliveries)| (PyBytes::new(py, &data), deliveries)))
    }

    /// The task of in-flight entry `token` starts: charge its delivery. False when gone.
    fn mark_started(&self, py: Python<'_>, token: &str) -> PyResult<bool> {
        Ok(py.detach(|| self.store.inflight.start(token))?)
    }

    /// Extend the leases of `tokens` to `lease` seconds from now; how many are in flight.
    fn renew_leases(&self, py: Python<'_>, tokens: Vec<String>, lease: f64) -> PyResult<usize> {
        Ok(wait::detach(py, || {
            self.store.inflight.renew(&tokens, lease)
        })?)
    }

    /// Remove the in-flight entry `token`; False when it is gone (recovered meanwhile).
    fn ack(&self, py: Python<'_>, token: &str) -> PyResult<bool> {
        Ok(wait::detach(py, || self.store.inflight.ack(token))?)
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
        let recovered = wait::detach(py, || {
            store.inflight.recover(
                &store.queue,
                max_deliveries,
                now,
                |data, deliveries, bad| {
                    let why = bad.unwrap_or_else(|| reason.replace("%d", &deliveries.to_string()));
                    store.dead.put(data, &why, deliveries)
                },
            )
        })?;
        for (why, id) in &recovered.bad {
            log("error", &format!("{why}; set aside as dead letter {id}"));
        }
        let dead = recovered
            .dead
            .into_iter()
            .map(|(data, deliveries, id)| (PyBytes::new(py, &data), deliveries, id))
            .collect();
        Ok((recovered.requeued, dead))
    }

    /// In-flight entries, soonest lease expiry first.
    fn inflight_items<'py>(&self, py: Python<'py>) -> PyResult<Vec<InflightTuple<'py>>> {
        let items = wait::detach(py, || self.store.inflight.items())?;
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
        let micros = timestamp_micros(ts, "ts")?;
        let store = &self.store;
        let moved = wait::detach(py, || {
            store.schedule.move_due(micros, |messages| -> PyResult<()> {
                // Every priority first (the callback may fail or exit), then every enqueue.
                let priorities = match &priority_of {
                    None => vec![0; messages.len()],
                    Some(priority_of) => wait::attach(|py| {
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
        Ok(wait::detach(py, || self.store.queue.size())?)
    }

    #[pyo3(signature = (limit = None))]
    fn enqueued_items<'py>(
        &self,
        py: Python<'py>,
        limit: Option<i64>,
    ) -> PyResult<Bound<'py, PyList>> {
        let limit = limit_arg(limit)?;
        let items = wait::detach(py, || self.store.queue.items(limit))?;
        bytes_list(py, items)
    }

    fn flush_queue(&self, py: Python<'_>) -> PyResult<()> {
        Ok(wait::detach(py, || self.store.queue.flush())?)
    }

    fn add_to_schedule(&self, py: Python<'_>, data: &[u8], ts: &Bound<'_, PyAny>) -> PyResult<()> {
        let micros = timestamp_micros(ts, "ts")?;
        Ok(wait::detach(py, || self.store.schedule.add(data, micros))?)
    }

    fn read_schedule<'py>(
        &self,
        py: Python<'py>,
        ts: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let micros = timestamp_micros(ts, "ts")?;
        let items = wait::detach(py, || self.store.schedule.read(micros))?;
        bytes_list(py, items)
    }

    fn schedule_size(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(wait::detach(py, || self.store.schedule.size())?)
    }

    #[pyo3(signature = (limit = None))]
    fn scheduled_items<'py>(
        &self,
        py: Python<'py>,
        limit: Option<i64>,
    ) -> PyResult<Bound<'py, PyList>> {
        let limit = limit_arg(limit)?;
        let items = wait::detach(py, || self.store.schedule.items(limit))?;
        bytes_list(py, items)
    }

    fn flush_schedule(&self, py: Python<'_>) -> PyResult<()> {
        Ok(wait::detach(py, || self.store.schedule.flush())?)
    }

    fn put_data(&self, py: Python<'_>, key: &Bound<'_, PyAny>, value: &[u8]) -> PyResult<()> {
        let key = key_bytes(key)?;
        Ok(wait::detach(py, || self.store.results.put(&key, value))?)
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
        Ok(wait::detach(py, || {
            results.delete(&delete_key)?;
            results.put(&key, value)
        })?)
    }

    /// Remove `key`'s value; False when there was none.
    fn delete_data(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let key = key_bytes(key)?;
        Ok(wait::detach(py, || self.store.results.delete(&key))?)
    }

    /// The values at `keys` (None where there is none), in order.
    fn peek_many<'py>(
        &self,
        py: Python<'py>,
        keys: Vec<Bound<'py, PyAny>>,
    ) -> PyResult<Vec<Option<Bound<'py, PyBytes>>>> {
        let keys = keys.iter().map(key_bytes).collect::<PyResult<Vec<_>>>()?;
        let results = &self.store.results;
        let values = wait::detach(py, || {
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
        Ok(wait::detach(py, || {
            self.store.results.put_if_empty(&key, value)
        })?)
    }

    /// The value at `key`, or None when there is none.
    fn peek_data<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let key = key_bytes(key)?;
        let data = wait::detach(py, || self.store.results.peek(&key))?;
        Ok(data.map(|d| PyBytes::new(py, &d)))
    }

    fn pop_data<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let key = key_bytes(key)?;
        let data = wait::detach(py, || self.store.results.pop(&key))?;
        Ok(data.map(|d| PyBytes::new(py, &d)))
    }

    fn has_data_for_key(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let key = key_bytes(key)?;
        Ok(wait::detach(py, || self.store.results.has(&key)))
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
        let timeout = wait::timeout_arg("timeout", timeout)?;
        // Each wait below lasts one slice at most, so a longer max_delay changes nothing.
        let max_delay = wait::seconds_arg("max_delay", max_delay)?
            .min(wait::SIGNAL_CHECK_INTERVAL)
            .as_secs_f64();
        let store = &self.store;
        let done = wait::wait(py, timeout, |slice| {
            let done = store
                .results
                .wait(&store.watchers, &key, slice, backoff, max_delay);
            Ok::<_, PyErr>(done.then_some(()))
        })?;
        Ok(done.is_some())
    }

    fn incr(&self, py: Python<'_>, key: &Bound<'_, PyAny>, amount: i64) -> PyResult<i64> {
        let key = key_bytes(key)?;
        Ok(wait::detach(py, || self.store.counters.incr(&key, amount))?)
    }

    fn delete_counter(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let key = key_bytes(key)?;
        Ok(wait::detach(py, || self.store.counters.delete(&key))?)
    }

    fn result_store_size(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(wait::detach(py, || self.store.results.size())?)
    }

    /// Every result as {key (str): value (bytes)}.
    fn result_items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let items = wait::detach(py, || self.store.results.items())?;
        let dict = PyDict::new(py);
        for (key, value) in items {
            let key = String::from_utf8_lossy(&key);
            dict.set_item(key.as_ref(), PyBytes::new(py, &value))?;
        }
        Ok(dict)
    }

    fn flush_results(&self, py: Python<'_>) -> PyResult<()> {
        Ok(wait::detach(py, || self.store.results.flush())?)
    }

    fn flush_counters(&self, py: Python<'_>) -> PyResult<()> {
        Ok(wait::detach(py, || self.store.counters.flush())?)
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
        Ok(wait::detach(py, || {
            self.store.dead.put(data, reason, deliveries)
        })?)
    }

    /// Dead letters oldest first, as `(id, data, reason, time, deliveries)` tuples.
    #[pyo3(signature = (limit = None))]
    fn dead_letters<'py>(
        &self,
        py: Python<'py>,
        limit: Option<i64>,
    ) -> PyResult<Vec<LetterTuple<'py>>> {
        let limit = limit_arg(limit)?;
        let letters = wait::detach(py, || self.store.dead.list(limit))?;
        Ok(letters.into_iter().map(|l| letter_tuple(py, l)).collect())
    }

    fn pop_dead_letter<'py>(
        &self,
        py: Python<'py>,
        id: &str,
    ) -> PyResult<Option<LetterTuple<'py>>> {
        let letter = wait::detach(py, || self.store.dead.pop(id))?;
        Ok(letter.map(|l| letter_tuple(py, l)))
    }

    fn dead_letter_count(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(wait::detach(py, || self.store.dead.count())?)
    }

    fn flush_dead_letters(&self, py: Python<'_>) -> PyResult<()> {
        Ok(wait::detach(py, || self.store.dead.flush())?)
    }
}
