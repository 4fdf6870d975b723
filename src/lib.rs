//! `huey._native`: the Rust core of huey-rs. This file only lists the modules and registers
//! the module's classes and functions.

// Every unsafe block lives in `ffi.rs`, each with a SAFETY comment.
#![deny(unsafe_code)]

use pyo3::prelude::*;

pub mod crontab;
pub mod datetime;
mod errors;
#[allow(unsafe_code)]
mod ffi;
pub mod schedule;
pub mod serializer;
pub mod storage;
pub mod task;
pub mod wait;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<crontab::PyCrontab>()?;
    m.add_class::<serializer::PyFraming>()?;
    m.add_function(wrap_pyfunction!(serializer::derive_signing_key, m)?)?;
    m.add_function(wrap_pyfunction!(serializer::py_signature, m)?)?;
    m.add_class::<storage::memory::MemoryStore>()?;
    #[cfg(unix)]
    m.add_class::<storage::file::PyFileStore>()?;
    m.add_class::<storage::watch::PyPathWatcher>()?;
    m.add_function(wrap_pyfunction!(task::new_task_id, m)?)?;
    m.add_function(wrap_pyfunction!(wait::check_seconds, m)?)?;
    wait::install_exit_hook(m.py())?;
    preload(m.py())
}

/// Looks up, while `huey._native` is being imported, the Python objects native code uses.
/// Looked up lazily, the first call from a worker thread would import a module or wait on a
/// once-cell, releasing and retaking the GIL inside a native call: a daemon thread doing that
/// while the interpreter exits is ended by CPython's `pthread_exit`, which cannot unwind
/// through a native frame and aborts the process (see `wait.rs`).
fn preload(py: Python<'_>) -> PyResult<()> {
    ffi::preload(py)?;
    storage::memory::preload(py)
}
