//! Every `unsafe` block of the crate: every access to CPython beyond PyO3's safe API, and
//! every system call std does not wrap (File storage's flock, mmap and utimensat, the
//! watcher's inotify).
//!
//! Each function here wraps one such access behind a safe signature; the SAFETY comment on
//! each block says why the call is sound. The rest of the crate has no `unsafe` at all
//! (`lib.rs` denies it outside this module).
//!
//! Why these exist: the extension is built for the limited API of Python 3.9 (one abi3 wheel
//! for every CPython >= 3.9), which hides three things the hot paths need:
//! - a `str`'s UTF-8 without copying it (`PyUnicode_AsUTF8AndSize`, limited API only from 3.10);
//! - an `int` as a C double without building a float object (`PyLong_AsDouble`);
//! - a `datetime`'s fields without seven attribute lookups (CPython's datetime accessor macros
//!   read the packed fields of the object; they are not part of the limited API).

use std::os::raw::c_char;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyInt, PyString, PyType};

// ---- str ----

extern "C" {
    // Exported by every CPython 3 and part of the stable ABI since 3.10; pyo3-ffi does not
    // declare it for abi3-py39 builds. It returns the UTF-8 encoding cached on the str object
    // (for an ASCII str, the string's own buffer), so reading it copies nothing.
    fn PyUnicode_AsUTF8AndSize(
        unicode: *mut ffi::PyObject,
        size: *mut ffi::Py_ssize_t,
    ) -> *const c_char;
}

/// The UTF-8 bytes of `s`, borrowed from the str object itself. Fails (UnicodeEncodeError)
/// for a str holding lone surrogates, which have no UTF-8 encoding.
pub fn str_utf8<'a>(s: &'a Bound<'_, PyString>) -> PyResult<&'a [u8]> {
    let mut size: ffi::Py_ssize_t = 0;
    // SAFETY: `s` is a live str object and `size` a valid out-pointer; the call needs the GIL,
    // which the `Bound` proves is held.
    let ptr = unsafe { PyUnicode_AsUTF8AndSize(s.as_ptr(), &mut size) };
    if ptr.is_null() {
        return Err(PyErr::fetch(s.py()));
    }
    // SAFETY: on success `ptr` points to `size` bytes of UTF-8 owned by the str object, which
    // is immutable and cached for the object's lifetime; the returned slice borrows `s`, so the
    // object outlives it.
    Ok(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), size as usize) })
}

// ---- int ----

/// An int as a float (rounded as Python's `float(value)`), without allocating a float object.
/// Ints too large for a double raise OverflowError, as `float(value)` does.
pub fn int_as_f64(value: &Bound<'_, PyInt>) -> PyResult<f64> {
    // SAFETY: `value` is a live int object and the GIL is held (the `Bound` proves it).
    let result = unsafe { ffi::PyLong_AsDouble(value.as_ptr()) };
    if result == -1.0 {
        if let Some(err) = PyErr::take(value.py()) {
            return Err(err);
        }
    }
    Ok(result)
}

// ---- datetime ----

/// The fields of a `datetime.datetime` exactly as stored (no time-zone conversion).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DateTimeParts {
    pub year: i32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub microsecond: u32,
    pub has_tzinfo: bool,
}

/// The start of CPython's `PyDateTime_DateTime`: the object header, the cached hash, the
/// tzinfo flag, then the packed fields: year (2 bytes, big-endian), month, day, hour, minute,
/// second, microsecond (3 bytes, big-endian). The same in every CPython 3.x, and checked
/// against a known datetime before it is ever trusted (see `DateTimeClass::get`).
#[repr(C)]
struct RawDateTime {
    ob_base: ffi::PyObject,
    hashcode: ffi::Py_hash_t,
    hastzinfo: c_char,
    data: [u8; 10],
}

struct DateTimeClass {
    class: Py<PyType>,
    /// True when a probe datetime read through `RawDateTime` gave back its own fields.
    layout_ok: bool,
}

static DATETIME: PyOnceLock<DateTimeClass> = PyOnceLock::new();

/// Reads the packed fields through the struct layout.
///
/// # Safety
/// `obj` must point to a live instance of `datetime.datetime` or a subclass of it.
unsafe fn read_packed(obj: *mut ffi::PyObject) -> DateTimeParts {
    let raw = &*(obj as *const RawDateTime);
    let d = &raw.data;
    DateTimeParts {
        year: (i32::from(d[0]) << 8) | i32::from(d[1]),
        month: u32::from(d[2]),
        day: u32::from(d[3]),
        hour: u32::from(d[4]),
        minute: u32::from(d[5]),
        second: u32::from(d[6]),
        microsecond: (u32::from(d[7]) << 16) | (u32::from(d[8]) << 8) | u32::from(d[9]),
        has_tzinfo: raw.hastzinfo != 0,
    }
}

impl DateTimeClass {
    fn get(py: Python<'_>) -> PyResult<&DateTimeClass> {
        DATETIME.get_or_try_init(py, || {
            let class = py
                .import("datetime")?
                .getattr("datetime")?
                .cast_into::<PyType>()?;
            let probe = class.call1((2001, 2, 3, 4, 5, 6, 789_012))?;
            // SAFETY: `probe` was just built by `datetime.datetime(...)`, so it is one.
            let read = unsafe { read_packed(probe.as_ptr()) };
            let expected = DateTimeParts {
                year: 2001,
                month: 2,
                day: 3,
                hour: 4,
                minute: 5,
                second: 6,
                microsecond: 789_012,
                has_tzinfo: false,
            };
            Ok(DateTimeClass {
                class: class.unbind(),
                layout_ok: read == expected,
            })
        })
    }
}

/// Looks up `datetime.datetime` now (see `crate::preload`).
pub fn preload(py: Python<'_>) -> PyResult<()> {
    DateTimeClass::get(py).map(|_| ())
}

/// The fields of `value` when it is a `datetime.datetime` (or a subclass), else None.
pub fn datetime_parts(value: &Bound<'_, PyAny>) -> PyResult<Option<DateTimeParts>> {
    let py = value.py();
    let dt = DateTimeClass::get(py)?;
    let class = dt.class.bind(py);
    let ty = value.get_type();
    // SAFETY: both pointers are live type objects (a `Bound` each).
    let is_datetime = ty.is(class)
        || unsafe { ffi::PyType_IsSubtype(ty.as_type_ptr(), class.as_type_ptr()) != 0 };
    if !is_datetime {
        return Ok(None);
    }
    if dt.layout_ok {
        // SAFETY: `value` is a datetime.datetime instance (checked just above) and the layout
        // was verified on a probe instance of the same class.
        return Ok(Some(unsafe { read_packed(value.as_ptr()) }));
    }
    let field = |name: &str| value.getattr(name)?.extract::<u32>();
    Ok(Some(DateTimeParts {
        year: value.getattr("year")?.extract()?,
        month: field("month")?,
        day: field("day")?,
        hour: field("hour")?,
        minute: field("minute")?,
        second: field("second")?,
        microsecond: field("microsecond")?,
        has_tzinfo: !value.getattr("tzinfo")?.is_none(),
    }))
}

// ---- files and processes (File storage) ----

/// `flock(2)` on `file`, retried when a signal interrupts the wait.
#[cfg(unix)]
pub fn flock(file: &std::fs::File, operation: libc::c_int) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    loop {
        // SAFETY: flock only reads the descriptor number, which `file` keeps open.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Whether process `pid` is known to be gone (`kill(pid, 0)` fails with ESRCH).
#[cfg(unix)]
pub fn process_is_gone(pid: i32) -> bool {
    // SAFETY: signal 0 sends nothing; it only checks whether the process exists.
    let ret = unsafe { libc::kill(pid, 0) };
    ret < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// The local time zone's offset from UTC, in seconds, at `secs` since the epoch (0 when the
/// C library cannot say).
#[cfg(unix)]
pub fn local_utc_offset(secs: i64) -> i64 {
    // `as _`: the C library's time_t (64-bit on musl >= 1.2 too), without naming the alias
    // the libc crate deprecates there.
    let time = secs as _;
    // SAFETY: an all-zero `tm` is a valid value for localtime_r to overwrite.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to locals that live across the call; localtime_r is the
    // thread-safe variant and writes only into `tm`.
    let converted = unsafe { libc::localtime_r(&time, &mut tm) };
    if converted.is_null() {
        0
    } else {
        tm.tm_gmtoff
    }
}

/// Set the modification time of `path` to `secs` since the epoch (its access time is left
/// alone). std's `File::set_modified` would need the file opened first.
#[cfg(unix)]
pub fn set_mtime(path: &std::path::Path, secs: f64) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let whole = secs.floor();
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: whole as _,
            tv_nsec: ((secs - whole) * 1e9) as libc::c_long,
        },
    ];
    // SAFETY: a NUL-terminated path and an array of two timespecs, as utimensat expects.
    let ret = unsafe { libc::utimensat(libc::AT_FDCWD, cpath.as_ptr(), times.as_ptr(), 0) };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `len` bytes of a file mapped shared and read-write, seen as 8-byte atomic words (the File
/// queue's index). Unmapped on drop.
#[cfg(unix)]
pub struct SharedWords {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is only ever read or written through atomics, and lives exactly as long
// as the SharedWords; no thread can see it unmapped.
#[cfg(unix)]
unsafe impl Send for SharedWords {}
// SAFETY: as for Send: every access is an atomic operation.
#[cfg(unix)]
unsafe impl Sync for SharedWords {}

#[cfg(unix)]
impl SharedWords {
    /// Map the first `len` bytes of `file`. The caller guarantees the file is at least `len`
    /// bytes long with every block written (not sparse), so no access can fault (SIGBUS).
    pub fn map(file: &std::fs::File, len: usize) -> std::io::Result<SharedWords> {
        use std::os::unix::io::AsRawFd;
        // SAFETY: a fresh shared mapping of an open descriptor; the kernel picks the address,
        // and failure is MAP_FAILED, checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SharedWords {
            ptr: ptr.cast(),
            len,
        })
    }

    /// The word at byte `offset` (a multiple of 8, inside the mapping; panics otherwise, which
    /// would be a bug in the caller's layout constants).
    pub fn word(&self, offset: usize) -> &std::sync::atomic::AtomicU64 {
        assert!(offset.is_multiple_of(8) && offset + 8 <= self.len);
        // SAFETY: in bounds (checked above) and 8-byte aligned (the mapping is page aligned
        // and the offset a multiple of 8); the reference lives no longer than `self`.
        unsafe { &*(self.ptr.add(offset) as *const std::sync::atomic::AtomicU64) }
    }
}

#[cfg(unix)]
impl Drop for SharedWords {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region mapped in `map`, after which nothing refers to it
        // (every reference borrowed `self`).
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

// ---- inotify (the watcher) ----

#[cfg(target_os = "linux")]
pub mod inotify {
    //! The inotify calls of `storage/watch.rs`.
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;
    use std::time::Duration;

    pub const IN_DELETE_SELF: u32 = libc::IN_DELETE_SELF;
    pub const IN_MOVE_SELF: u32 = libc::IN_MOVE_SELF;
    pub const IN_IGNORED: u32 = libc::IN_IGNORED;

    /// An inotify descriptor, closed on drop.
    pub struct Fd(libc::c_int);

    impl Fd {
        pub fn new() -> Option<Fd> {
            // SAFETY: creates a descriptor that the returned Fd owns.
            let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
            (fd >= 0).then_some(Fd(fd))
        }

        pub fn add(&self, path: &Path, mask: u32) -> Option<libc::c_int> {
            let cpath = CString::new(path.as_os_str().as_bytes()).ok()?;
            // SAFETY: a valid descriptor and a NUL-terminated path.
            let wd = unsafe { libc::inotify_add_watch(self.0, cpath.as_ptr(), mask) };
            (wd >= 0).then_some(wd)
        }

        pub fn remove(&self, wd: libc::c_int) {
            // SAFETY: removes a watch this descriptor added (an error for a watch the kernel
            // already dropped is harmless).
            unsafe {
                libc::inotify_rm_watch(self.0, wd);
            }
        }

        /// The masks of every pending event; None once the descriptor is unusable.
        pub fn read_masks(&self) -> Option<Vec<u32>> {
            let mut masks = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                // SAFETY: reads into a local buffer of the given length from a non-blocking
                // descriptor this Fd owns.
                let n = unsafe { libc::read(self.0, buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    let again =
                        std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock;
                    return (n == 0 || again).then_some(masks);
                }
                // Event header: wd i32, mask u32, cookie u32, len u32, then a name.
                let mut at = 0;
                while at + 16 <= n as usize {
                    let word = |i: usize| u32::from_ne_bytes(buf[i..i + 4].try_into().expect("4"));
                    masks.push(word(at + 4));
                    at += 16 + word(at + 12) as usize;
                }
            }
        }

        /// Sleep until an event is pending or `timeout` passes.
        pub fn poll(&self, timeout: Duration) {
            let millis = timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
            let mut pfd = libc::pollfd {
                fd: self.0,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd on the stack.
            unsafe {
                libc::poll(&mut pfd, 1, millis);
            }
        }
    }

    impl Drop for Fd {
        fn drop(&mut self) {
            // SAFETY: the descriptor is owned by this Fd and closed exactly once.
            unsafe {
                libc::close(self.0);
            }
        }
    }
}
