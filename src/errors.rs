//! Rust errors -> Python exceptions, in one place.
//!
//! Pure-Rust modules return their own error types so they can be unit tested without an
//! interpreter; the conversions below decide which Python exception a user catches.

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::PyErr;

use crate::crontab::CronError;
use crate::framing::FramingError;

impl From<CronError> for PyErr {
    fn from(err: CronError) -> PyErr {
        PyValueError::new_err(err.0)
    }
}

impl From<FramingError> for PyErr {
    fn from(err: FramingError) -> PyErr {
        match err {
            FramingError::Io(e) => PyOSError::new_err(e.to_string()),
            other => PyValueError::new_err(other.to_string()),
        }
    }
}

impl From<crate::storage::file::FileError> for PyErr {
    fn from(err: crate::storage::file::FileError) -> PyErr {
        use crate::storage::file::FileError;
        match err {
            // OSError(errno, strerror, filename) picks the subclass (FileNotFoundError, ...).
            FileError::Io { path, source } => match source.raw_os_error() {
                Some(errno) => PyOSError::new_err((errno, source.to_string(), path)),
                None => PyOSError::new_err(format!("{}: {source}", path.display())),
            },
            other => PyValueError::new_err(other.to_string()),
        }
    }
}
