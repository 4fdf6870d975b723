//! The one way native code blocks: `wait` (and `detach` for work that only runs long).
//!
//! Every blocking wait of the crate (Memory's condition variables, File's inotify waits)
//! goes through `wait`, which
//! - takes a timeout checked by `timeout_arg`: None waits forever, a finite non-negative
//!   number of seconds waits that long, and NaN, infinity or a negative number is a ValueError
//!   naming the argument;
//! - releases the GIL while it blocks, in slices of at most `SIGNAL_CHECK_INTERVAL`, and between
//!   slices runs Python's signal handlers (`py.check_signals()`), so Ctrl-C interrupts a wait
//!   with KeyboardInterrupt;
//! - never takes the GIL back once the interpreter is shutting down.
//!
//! Why the last point: when the interpreter finalizes, CPython (before 3.14) ends any daemon
//! thread that tries to take the GIL with `pthread_exit`, which unwinds the thread's stack; the
//! Rust frames of a native wait cannot be unwound that way, and the process aborts (SIGABRT).
//! So an `atexit` hook (registered when `huey._native` is imported), which runs before
//! finalization starts, raises `EXITING` and then lets go of the GIL until every thread that
//! was already on its way back into the interpreter has got there. From then on a thread that
//! finishes a slice of waiting without the GIL parks for good instead
//! of asking for it; the process exits around it. The thread running the finalization itself
//! (the one that ran the hook) is never parked.
//!
//! So native code gives up the GIL only through `detach`/`wait`, and looks up the Python
//! objects it needs while `huey._native` is imported (`crate::preload`): a lazy first lookup
//! from a worker thread (an import, a wait on a once-cell) would release and retake the GIL
//! inside a native call, outside these guards. Calls back into Python code (a user's
//! `priority` function, a log line) can still be interrupted that way; none of them runs in a
//! blocking wait.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// How long a wait stays away from the interpreter before checking for signals. Wake-ups for
/// data are immediate; this bounds only the latency of Ctrl-C.
pub const SIGNAL_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// How long the exit hook waits for threads already on their way back into the interpreter.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// A number of seconds given to a native call: finite and >= 0. `name` names the argument in
/// the error.
pub fn seconds_arg(name: &str, value: f64) -> PyResult<Duration> {
    if !value.is_finite() || value < 0.0 {
        // Spelled as Python prints floats (Rust writes NaN).
        let shown = if value.is_nan() {
            "nan".to_owned()
        } else {
            value.to_string()
        };
        return Err(PyValueError::new_err(format!(
            "{name} must be a finite number of seconds >= 0, got {shown}"
        )));
    }
    // Finite and non-negative, so only values past ~584 billion years fail; they wait forever
    // for any practical purpose.
    Ok(Duration::try_from_secs_f64(value).unwrap_or(Duration::MAX))
}

/// A wait timeout: None waits forever; otherwise as `seconds_arg`.
pub fn timeout_arg(name: &str, value: Option<f64>) -> PyResult<Option<Duration>> {
    value.map(|v| seconds_arg(name, v)).transpose()
}

/// Checks a number of seconds from Python (`huey.api` validates `lease` and `Result.get`
/// validates `timeout` with it): returns it as a float, or raises ValueError naming `name`.
#[pyfunction]
pub fn check_seconds(name: &str, value: &Bound<'_, PyAny>) -> PyResult<f64> {
    let seconds: f64 = value.extract().map_err(|_| {
        PyValueError::new_err(format!(
            "{name} must be a number of seconds, got {}",
            value.repr().map(|r| r.to_string()).unwrap_or_default()
        ))
    })?;
    seconds_arg(name, seconds)?;
    Ok(seconds)
}

/// Blocks until `attempt` finds something or `timeout` passes (None: forever).
///
/// `attempt(slice)` runs without the GIL: it looks once, and when there is nothing it may
/// block up to `slice` for a wake-up and look again. Between slices the GIL is taken back to
/// run signal handlers (a KeyboardInterrupt ends the wait with that exception). Returns
/// `Ok(None)` at the timeout; a zero timeout makes exactly one attempt.
pub fn wait<T, E>(
    py: Python<'_>,
    timeout: Option<Duration>,
    mut attempt: impl FnMut(Duration) -> Result<Option<T>, E> + Send,
) -> PyResult<Option<T>>
where
    T: Send,
    E: Send,
    PyErr: From<E>,
{
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    loop {
        let slice = match (timeout, deadline) {
            (Some(_), Some(d)) => d.saturating_duration_since(Instant::now()),
            _ => Duration::MAX, // forever, or a deadline past the end of time
        }
        .min(SIGNAL_CHECK_INTERVAL);
        if let Some(found) = detach(py, || attempt(slice))? {
            return Ok(Some(found));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
        py.check_signals()?;
    }
}

/// `py.detach(work)` (run `work` without the GIL) that never takes the GIL back while the
/// interpreter is shutting down: a daemon thread finishing `work` then parks for good.
pub fn detach<T: Send>(py: Python<'_>, work: impl FnOnce() -> T + Send) -> T {
    let out = py.detach(|| {
        let out = work();
        returning();
        out
    });
    returned();
    out
}

/// `Python::attach(work)` from code running inside `detach` (a callback, a log line), under
/// the same rule: once the interpreter is shutting down, the thread parks instead.
pub fn attach<T>(work: impl for<'py> FnOnce(Python<'py>) -> T) -> T {
    returning();
    let out = Python::attach(work);
    returned();
    out
}

/// `attach` that does nothing (None) where no interpreter is running (Rust-only tests).
pub fn try_attach<T>(work: impl for<'py> FnOnce(Python<'py>) -> T) -> Option<T> {
    returning();
    let out = Python::try_attach(work);
    returned();
    out
}

static EXITING: AtomicBool = AtomicBool::new(false);
/// Threads between `returning` and `returned`: past the check, waiting for the GIL.
static RETURNING: AtomicUsize = AtomicUsize::new(0);
static FINALIZING_THREAD: Mutex<Option<ThreadId>> = Mutex::new(None);
static RETURNED: (Mutex<()>, Condvar) = (Mutex::new(()), Condvar::new());

/// Called without the GIL, just before asking for it back.
fn returning() {
    // SeqCst on both sides: either this thread sees EXITING, or the exit hook sees the count.
    RETURNING.fetch_add(1, Ordering::SeqCst);
    if EXITING.load(Ordering::SeqCst)
        && *FINALIZING_THREAD.lock() != Some(std::thread::current().id())
    {
        returned();
        loop {
            std::thread::park();
        }
    }
}

/// Called once the GIL is held again (or instead of taking it).
fn returned() {
    RETURNING.fetch_sub(1, Ordering::SeqCst);
    if EXITING.load(Ordering::SeqCst) {
        let _guard = RETURNED.0.lock();
        RETURNED.1.notify_all();
    }
}

/// The `atexit` hook: from now on, threads coming back from a native wait park instead.
#[pyfunction]
fn on_interpreter_exit(py: Python<'_>) {
    *FINALIZING_THREAD.lock() = Some(std::thread::current().id());
    EXITING.store(true, Ordering::SeqCst);
    // Threads that passed the check before EXITING was set are waiting for the GIL: let
    // them have it (they will park at their next return) before finalization can begin.
    py.detach(|| {
        let deadline = Instant::now() + EXIT_GRACE;
        let mut guard = RETURNED.0.lock();
        while RETURNING.load(Ordering::SeqCst) > 0 {
            if RETURNED.1.wait_until(&mut guard, deadline).timed_out() {
                break;
            }
        }
    });
}

/// A forked child has one thread: none of the parent's can be on its way back.
#[pyfunction]
fn after_fork_in_child() {
    RETURNING.store(0, Ordering::SeqCst);
}

/// Registers `on_interpreter_exit` with `atexit` and the fork hook; called once, when
/// `huey._native` is imported. Not lazily at the first wait: a daemon thread's first wait could
/// then begin after `atexit` has run, and nothing would stop it taking the GIL back during
/// finalization.
pub fn install_exit_hook(py: Python<'_>) -> PyResult<()> {
    let hook = wrap_pyfunction!(on_interpreter_exit, py)?;
    py.import("atexit")?.call_method1("register", (hook,))?;
    let child = wrap_pyfunction!(after_fork_in_child, py)?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("after_in_child", child)?;
    py.import("os")?
        .call_method("register_at_fork", (), Some(&kwargs))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_finite_and_non_negative() {
        assert_eq!(seconds_arg("t", 0.0).unwrap(), Duration::ZERO);
        assert_eq!(seconds_arg("t", 1.5).unwrap(), Duration::from_millis(1500));
        assert_eq!(seconds_arg("t", 1e300).unwrap(), Duration::MAX);
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.001] {
            assert!(seconds_arg("t", bad).is_err(), "{bad} was accepted");
        }
        assert_eq!(timeout_arg("t", None).unwrap(), None);
    }
}
