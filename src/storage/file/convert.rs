//! Python values in and out of FileStore: keys, limits, datetimes, priorities and the tuples
//! its methods return.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};

use super::dead::DeadLetter;
use super::queue;

/// A message priority from `priority_of`: None is 0, and values outside 0..=65535 are
/// clamped, because a due message must reach the queue (raising would retry it forever).
pub fn clamp_priority(priority: &Bound<'_, PyAny>) -> PyResult<i64> {
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
pub type RecoveredTuple<'py> = (usize, Vec<(Bound<'py, PyBytes>, u32, String)>);

/// An in-flight entry as `(token, consumer, deliveries, lease_until, data)`.
pub type InflightTuple<'py> = (String, String, u32, f64, Bound<'py, PyBytes>);

/// Keys are str (UTF-8 on disk) or bytes.
pub fn key_bytes(key: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
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

pub fn limit_arg(limit: Option<i64>) -> PyResult<Option<usize>> {
    match limit {
        Some(n) if n < 0 => Err(PyValueError::new_err(format!(
            "limit must be >= 0, got {n}"
        ))),
        other => Ok(other.map(|n| n as usize)),
    }
}

pub fn bytes_list<'py>(py: Python<'py>, items: Vec<Vec<u8>>) -> PyResult<Bound<'py, PyList>> {
    PyList::new(py, items.iter().map(|item| PyBytes::new(py, item)))
}

/// A dead letter as `(id, data, reason, time, deliveries)`.
pub type LetterTuple<'py> = (String, Bound<'py, PyBytes>, String, f64, u32);

pub fn letter_tuple(py: Python<'_>, letter: DeadLetter) -> LetterTuple<'_> {
    let data = PyBytes::new(py, &letter.data);
    (
        letter.id,
        data,
        letter.reason,
        letter.time,
        letter.deliveries,
    )
}
