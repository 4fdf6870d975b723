//! Waking a waiter when another process writes: one watcher for FileStorage (a directory
//! where files appear) and SqliteStorage (the database's `-wal` file), exposed to Python as
//! `huey._native.PathWatcher`.
//!
//! Linux: inotify. Every other platform, or `HUEY_RS_WATCHER=poll` (how the tests force it on
//! Linux): a short poll, where `wait` sleeps a few milliseconds and `drain` compares the
//! watched file's size and mtime with the last look. Callers always recheck the real state
//! after a wake-up, so a missed or spurious event costs at most one poll interval.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use pyo3::prelude::*;

use crate::wait;

/// How long one poll-mode `wait` sleeps at most.
pub const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// What a watch is for.
#[derive(Clone, Copy, PartialEq)]
pub enum Target {
    /// A directory: wake when a file is created, moved in or written there.
    Directory,
    /// A file: wake when it is written; `drain` reports when it is deleted or moved.
    File,
}

/// Whether inotify is switched off for this process (`HUEY_RS_WATCHER=poll`).
pub fn forced_poll() -> bool {
    std::env::var_os("HUEY_RS_WATCHER").is_some_and(|v| v == "poll")
}

#[cfg(target_os = "linux")]
use crate::ffi::inotify;

/// The last size and mtime seen of a polled file; None: it did not exist.
type Snapshot = Option<(u64, SystemTime)>;

fn snapshot(path: &Path) -> Snapshot {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

enum Backend {
    #[cfg(target_os = "linux")]
    Inotify {
        fd: Arc<inotify::Fd>,
        wd: Mutex<Option<libc::c_int>>,
    },
    Poll {
        last: Mutex<Snapshot>,
    },
}

/// One watch on one path.
pub struct Watcher {
    path: PathBuf,
    target: Target,
    backend: Backend,
}

impl Watcher {
    /// A watcher on `path`; None when the path does not exist.
    pub fn new(path: &Path, target: Target, force_poll: bool) -> Option<Watcher> {
        let backend = Self::inotify(path, target, force_poll).unwrap_or_else(|| Backend::Poll {
            last: Mutex::new(snapshot(path)),
        });
        if !path.exists() {
            return None;
        }
        Some(Watcher {
            path: path.to_path_buf(),
            target,
            backend,
        })
    }

    #[cfg(target_os = "linux")]
    fn inotify(path: &Path, target: Target, force_poll: bool) -> Option<Backend> {
        if force_poll {
            return None;
        }
        Self::on_fd(Arc::new(inotify::Fd::new()?), path, target)
    }

    /// A watch on `path` through an existing inotify instance (FileStorage reuses them).
    #[cfg(target_os = "linux")]
    fn on_fd(fd: Arc<inotify::Fd>, path: &Path, target: Target) -> Option<Backend> {
        let mask = match target {
            Target::Directory => libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_MODIFY,
            Target::File => libc::IN_MODIFY | inotify::IN_DELETE_SELF | inotify::IN_MOVE_SELF,
        };
        let wd = fd.add(path, mask)?;
        Some(Backend::Inotify {
            fd,
            wd: Mutex::new(Some(wd)),
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn inotify(_: &Path, _: Target, _: bool) -> Option<Backend> {
        None
    }

    /// Whether this watcher polls instead of sleeping on kernel events.
    pub fn polls(&self) -> bool {
        matches!(self.backend, Backend::Poll { .. })
    }

    /// Forget pending events: whether there were any, or None once the watched path is gone
    /// (deleted or moved away) or the watcher closed.
    pub fn drain(&self) -> Option<bool> {
        match &self.backend {
            #[cfg(target_os = "linux")]
            Backend::Inotify { fd, wd } => {
                wd.lock().as_ref()?;
                let masks = fd.read_masks()?;
                let gone = inotify::IN_DELETE_SELF | inotify::IN_MOVE_SELF | inotify::IN_IGNORED;
                if self.target == Target::File && masks.iter().any(|m| m & gone != 0) {
                    return None;
                }
                Some(!masks.is_empty())
            }
            Backend::Poll { last } => {
                let now = snapshot(&self.path);
                now?;
                let mut last = last.lock();
                let changed = *last != now;
                *last = now;
                Some(changed)
            }
        }
    }

    /// Sleep until something happens to the watched path or `timeout` passes (in poll mode
    /// at most `POLL_INTERVAL`: the caller looks again).
    pub fn wait(&self, timeout: Duration) {
        match &self.backend {
            #[cfg(target_os = "linux")]
            Backend::Inotify { fd, wd } => {
                if wd.lock().is_some() {
                    fd.poll(timeout);
                    // A directory's waiter looks at the directory itself after each wake-up;
                    // a file's caller drains explicitly to learn whether it was written.
                    if self.target == Target::Directory {
                        let _ = fd.read_masks();
                    }
                }
            }
            Backend::Poll { .. } => std::thread::sleep(timeout.min(POLL_INTERVAL)),
        }
    }

    /// Stop watching; a `wait` in another thread returns within its timeout.
    pub fn close(&self) {
        #[cfg(target_os = "linux")]
        if let Backend::Inotify { fd, wd } = &self.backend {
            if let Some(wd) = wd.lock().take() {
                fd.remove(wd);
            }
        }
    }
}

/// `huey._native.PathWatcher(path, directory=False)`: a watcher on a file (or directory),
/// for SqliteStorage's wake-ups on its `-wal` file.
#[pyclass(name = "PathWatcher", module = "huey._native", frozen)]
pub struct PyPathWatcher {
    watcher: Watcher,
}

#[pymethods]
impl PyPathWatcher {
    /// A watcher on `path`, or None when it does not exist (or cannot be watched).
    #[staticmethod]
    #[pyo3(signature = (path, directory = false))]
    fn create(path: PathBuf, directory: bool) -> Option<PyPathWatcher> {
        let target = if directory {
            Target::Directory
        } else {
            Target::File
        };
        Watcher::new(&path, target, forced_poll()).map(|watcher| PyPathWatcher { watcher })
    }

    /// Forget pending events: None once the path or the watcher is gone, else whether any.
    fn drain(&self, py: Python<'_>) -> Option<bool> {
        wait::detach(py, || self.watcher.drain())
    }

    /// Sleep (GIL released) until the path changes or `timeout` seconds pass, or for one
    /// signal-check interval at most: callers recheck and wait again, and Ctrl-C is seen
    /// in between.
    fn wait(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let timeout = wait::seconds_arg("timeout", timeout)?.min(wait::SIGNAL_CHECK_INTERVAL);
        wait::detach(py, || self.watcher.wait(timeout));
        py.check_signals()
    }

    fn close(&self) {
        self.watcher.close();
    }

    /// Whether this watcher polls (no inotify here, or `HUEY_RS_WATCHER=poll`).
    #[getter]
    fn polling(&self) -> bool {
        self.watcher.polls()
    }
}

/// Idle inotify instances of FileStorage, reused because closing one waits for the kernel to
/// retire its marks (milliseconds), which would delay every woken waiter.
#[derive(Default)]
pub struct Watchers {
    #[cfg(target_os = "linux")]
    idle: Mutex<(u32, Vec<Arc<inotify::Fd>>)>,
}

impl Watchers {
    /// Run `wait_loop` with a watcher on the directory `dir` (None: it cannot be watched, so
    /// the loop polls). The watch exists before the loop's first look, so an arrival between
    /// that look and the wait is never missed.
    pub fn watching<R>(&self, dir: &Path, wait_loop: impl FnOnce(Option<&Watcher>) -> R) -> R {
        #[cfg(target_os = "linux")]
        if !forced_poll() {
            let pid = std::process::id();
            let fd = {
                let mut idle = self.idle.lock();
                if idle.0 != pid {
                    // Inherited across fork: sharing them with the parent would steal its
                    // events.
                    idle.1.clear();
                    idle.0 = pid;
                }
                idle.1.pop()
            };
            if let Some(fd) = fd.or_else(|| inotify::Fd::new().map(Arc::new)) {
                let backend = Watcher::on_fd(fd.clone(), dir, Target::Directory);
                let watcher = backend.map(|backend| Watcher {
                    path: dir.to_path_buf(),
                    target: Target::Directory,
                    backend,
                });
                let result = wait_loop(watcher.as_ref());
                if let Some(watcher) = watcher {
                    watcher.close();
                    let _ = fd.read_masks(); // the IN_IGNORED the removal queued
                }
                self.idle.lock().1.push(fd);
                return result;
            }
        }
        let _ = dir;
        wait_loop(None)
    }
}
