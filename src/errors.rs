//! Rust errors -> Python exceptions, in one place.
//!
//! Pure-Rust modules return their own error types so they can be unit tested without an
//! interpreter; the conversions below decide which Python exception a user catches.

use pyo3::exceptions::{PyMemoryError, PyOSError, PyValueError};
use pyo3::PyErr;

use crate::crontab::CronError;
use crate::serializer::{CompressionError, FramingError};

impl From<CronError> for PyErr {
    fn from(err: CronError) -> PyErr {
        PyValueError::new_err(err.0)
    }
}

impl From<FramingError> for PyErr {
    fn from(err: FramingError) -> PyErr {
        match err {
            // Deflate fails only when it cannot allocate its state.
            FramingError::Compression(CompressionError::Deflate(_)) => {
                PyMemoryError::new_err(err.to_string())
            }
            // Bad signatures, damaged streams and messages over the size limit: the consumer
            // sets such a message aside as a dead letter with this text as the reason.
            other => PyValueError::new_err(other.to_string()),
        }
    }
}

#[cfg(unix)]
impl From<crate::storage::file::FileError> for PyErr {
    fn from(err: crate::storage::file::FileError) -> PyErr {
        use crate::storage::file::FileError;
        match err {
            // OSError(errno, strerror, filename) picks the subclass (FileNotFoundError, ...).
            FileError::Io { path, source } => match source.raw_os_error() {
                Some(errno) => PyOSError::new_err((errno, source.to_string(), path)),
                None => PyOSError::new_err(format!("{}: {source}", path.display())),
            },
            // A file that is not what we wrote there: OSError(EBADMSG) naming it.
            FileError::Damaged { path, what } => {
                PyOSError::new_err((libc::EBADMSG, format!("damaged file: {what}"), path))
            }
            other => PyValueError::new_err(other.to_string()),
        }
    }
}
