//! Storages implemented in Rust, one module per Python module in `huey/storage/`.

#[cfg(unix)]
pub mod file;
pub mod memory;
pub mod watch;

use pyo3::exceptions::PyValueError;
use pyo3::PyResult;

/// Checks `dequeue_many`'s `n` (how many messages one call may take): a positive integer.
pub fn batch_arg(n: isize) -> PyResult<usize> {
    if n < 1 {
        return Err(PyValueError::new_err(format!(
            "n must be a positive number of messages, got {n}"
        )));
    }
    Ok(n as usize)
}
