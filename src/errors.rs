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

// Building a `PyErr` is lazy and inspecting one needs an interpreter, which the Rust-only
// tests never start (it would change `wait::try_attach` for every other test in the binary).
// These tests pin the part decided in Rust: the text each conversion hands to Python, and
// the errno an `OSError` is built from. The Python tests check the exception classes.
#[cfg(test)]
mod tests {
    use crate::crontab::{parse_field, Field};
    use crate::serializer::{derive_key, CompressionError, Framing, FramingError};

    #[test]
    fn a_cron_error_becomes_its_message_unchanged() {
        let err = parse_field("61", Field::Minute, false).unwrap_err();
        assert_eq!(err.0, "61 is not a valid minute (0-59)");
        assert_eq!(err.to_string(), err.0);
        let err = parse_field("1,x", Field::Hour, true).unwrap_err();
        assert_eq!(err.to_string(), "'x' is not a valid hour");
    }

    fn framing(compression: bool, key: Option<[u8; 20]>) -> Framing {
        Framing {
            compression,
            level: 6,
            use_zlib: false,
            key,
            max_decompressed_size: 64,
        }
    }

    #[test]
    fn framing_errors_say_what_was_wrong_with_the_message() {
        let key = Some(derive_key(b"secret", b"salt"));
        let signed = framing(false, key);
        let err = signed.decode(b"no separator here").unwrap_err();
        assert_eq!(err, FramingError::MissingSeparator);
        assert_eq!(
            err.to_string(),
            "signed message has no \":\" separator before its signature"
        );
        let mut tampered = signed.encode(b"payload").unwrap();
        tampered[0] ^= 1;
        let err = signed.decode(&tampered).unwrap_err();
        assert_eq!(err.to_string(), "message signature does not match");

        let compressed = framing(true, None);
        let err = compressed.decode(b"\x1f\x8bnot really gzip").unwrap_err();
        assert!(matches!(
            err,
            FramingError::Compression(CompressionError::Corrupt(_))
        ));
        assert!(
            err.to_string()
                .starts_with("could not decompress message: "),
            "{err}"
        );
        let bomb = compressed.encode(&[0u8; 1000]).unwrap();
        let err = compressed.decode(&bomb).unwrap_err();
        assert_eq!(
            err.to_string(),
            "compressed message inflates to more than 64 bytes (the serializer's \
             max_decompressed_size); not decompressed"
        );
    }

    #[test]
    fn a_deflate_failure_reads_as_a_compression_failure() {
        // The one framing error that becomes MemoryError rather than ValueError.
        let err = FramingError::Compression(CompressionError::Deflate("out of memory"));
        assert_eq!(err.to_string(), "could not compress message: out of memory");
    }

    #[cfg(unix)]
    mod file {
        use std::io;
        use std::path::PathBuf;

        use crate::storage::file::FileError;

        #[test]
        fn an_os_failure_keeps_its_errno_for_oserror() {
            let path =
                std::env::temp_dir().join(format!("huey-rs-errors-{}/missing", std::process::id()));
            let source = std::fs::File::open(&path).unwrap_err();
            // OSError(errno, strerror, filename): the errno picks FileNotFoundError.
            assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
            let err = FileError::Io {
                path: path.clone(),
                source,
            };
            let text = err.to_string();
            assert!(text.starts_with(&format!("{}: ", path.display())), "{text}");

            // Without an errno, the message names the path instead.
            let source = io::Error::new(io::ErrorKind::InvalidData, "counter overflows");
            assert_eq!(source.raw_os_error(), None);
            let err = FileError::Io {
                path: PathBuf::from("/store/counters/c"),
                source,
            };
            assert_eq!(err.to_string(), "/store/counters/c: counter overflows");
        }

        #[test]
        fn value_errors_describe_the_bad_setting() {
            let cases = [
                (
                    FileError::Priority(-1),
                    "priority must be a positive number, got -1",
                ),
                (
                    FileError::Priority(0x10000),
                    "priority must be <= 65535, got 65536",
                ),
                (
                    FileError::Levels(5),
                    "levels must be between 0 and 4, got 5",
                ),
                (
                    FileError::NotADirectory(PathBuf::from("/a/file")),
                    "path \"/a/file\" is not a directory",
                ),
                (
                    FileError::TooLarge(5_000_000_000),
                    "message of 5000000000 bytes is too large for FileStorage (max 4 GiB)",
                ),
                (
                    FileError::BadIndex(PathBuf::from("/q/index")),
                    "/q/index is not a huey-rs queue index (wrong magic)",
                ),
            ];
            for (err, message) in cases {
                assert_eq!(err.to_string(), message);
            }
        }

        #[test]
        fn a_damaged_file_names_the_file_and_the_damage() {
            let err = FileError::Damaged {
                path: PathBuf::from("/store/results/ab"),
                what: "not a result".into(),
            };
            assert_eq!(err.to_string(), "/store/results/ab: not a result");
        }
    }
}
