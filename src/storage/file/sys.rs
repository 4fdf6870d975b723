//! The operating-system pieces FileStorage is built from: its error type, the lock that
//! serialises threads and processes, crash-safe temporary files and the wake-up watcher.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, MutexGuard};

/// Everything that can go wrong in FileStorage; `errors.rs` maps it to Python exceptions.
#[derive(Debug)]
pub enum FileError {
    /// An operating-system error on `path`.
    Io {
        path: PathBuf,
        source: io::Error,
    },
    Priority(i64),
    Levels(i64),
    NotADirectory(PathBuf),
    BadIndex(PathBuf),
    TooLarge(usize),
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            FileError::Priority(p) if *p < 0 => {
                write!(f, "priority must be a positive number, got {p}")
            }
            FileError::Priority(p) => {
                write!(
                    f,
                    "priority must be <= {}, got {p}",
                    super::queue::MAX_PRIORITY
                )
            }
            FileError::Levels(n) => write!(f, "levels must be between 0 and 4, got {n}"),
            FileError::NotADirectory(p) => write!(f, "path \"{}\" is not a directory", p.display()),
            FileError::TooLarge(n) => {
                write!(
                    f,
                    "message of {n} bytes is too large for FileStorage (max 4 GiB)"
                )
            }
            FileError::BadIndex(p) => {
                write!(
                    f,
                    "{} is not a huey-rs queue index (wrong magic)",
                    p.display()
                )
            }
        }
    }
}

pub type Result<T> = std::result::Result<T, FileError>;

/// Attach the path an `io::Error` happened on.
pub trait Context<T> {
    fn on(self, path: &Path) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn on(self, path: &Path) -> Result<T> {
        self.map_err(|source| FileError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

fn cvt(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `flock(2)` on `file`, retried when a signal interrupts the wait.
pub fn flock(file: &File, operation: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock only reads the descriptor number, which `file` keeps open.
        match cvt(unsafe { libc::flock(file.as_raw_fd(), operation) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Mutual exclusion between threads (a mutex) and between processes (`flock` on a file).
///
/// The lock file is reopened after a fork: `flock` belongs to the open file description, which
/// a forked child shares with its parent, so sharing it would let both hold the lock at once.
pub struct DirLock {
    path: PathBuf,
    state: Mutex<LockState>,
    use_flock: bool,
}

struct LockState {
    pid: u32,
    file: Option<File>,
}

pub struct DirLockGuard<'a> {
    state: MutexGuard<'a, LockState>,
    locked: bool,
}

impl DirLock {
    pub fn new(path: PathBuf, use_flock: bool) -> DirLock {
        DirLock {
            path,
            state: Mutex::new(LockState { pid: 0, file: None }),
            use_flock,
        }
    }

    /// Block (the caller has released the GIL) until this thread and process hold the lock.
    pub fn acquire(&self) -> Result<DirLockGuard<'_>> {
        let mut state = self.state.lock();
        if !self.use_flock {
            return Ok(DirLockGuard {
                state,
                locked: false,
            });
        }
        let pid = std::process::id();
        if state.pid != pid || state.file.is_none() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.path)
                .on(&self.path)?;
            state.file = Some(file);
            state.pid = pid;
        }
        flock(state.file.as_ref().expect("opened above"), libc::LOCK_EX).on(&self.path)?;
        Ok(DirLockGuard {
            state,
            locked: true,
        })
    }
}

impl Drop for DirLockGuard<'_> {
    fn drop(&mut self) {
        if self.locked {
            if let Some(file) = self.state.file.as_ref() {
                let _ = flock(file, libc::LOCK_UN);
            }
        }
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Files are written under `tmp/` and renamed or linked into place, so a reader (or a
/// process killed mid-write) never sees a half-written file where data is expected.
#[derive(Clone)]
pub struct TmpDir {
    dir: PathBuf,
    pub fsync: bool,
}

impl TmpDir {
    pub fn new(dir: PathBuf, fsync: bool) -> TmpDir {
        TmpDir { dir, fsync }
    }

    /// A fresh, unused name in the temporary directory (`<pid>.<n>.tmp`).
    pub fn unique_name(&self) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{}.{n}.tmp", std::process::id()))
    }

    /// Write `parts` (concatenated) to a new temporary file and return its path.
    pub fn write(&self, parts: &[&[u8]]) -> Result<PathBuf> {
        loop {
            let path = self.unique_name();
            let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir_all(&self.dir).on(&self.dir)?;
                    continue;
                }
                Err(e) => return Err(e).on(&path),
            };
            // One write call: the parts are small (a header, a key, a message).
            let written = file.write_all(&parts.concat());
            let synced = written.and_then(|_| if self.fsync { file.sync_data() } else { Ok(()) });
            if let Err(e) = synced {
                let _ = fs::remove_file(&path);
                return Err(e).on(&path);
            }
            return Ok(path);
        }
    }

    /// Remove temporary files left by processes that died mid-write, once they are old
    /// enough that no live writer in another PID namespace can still own them.
    pub fn sweep(&self, older_than: Duration) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.split('.').next()?.parse::<i32>().ok())
            else {
                continue;
            };
            // SAFETY: kill with signal 0 only checks whether the process exists.
            let dead = unsafe { libc::kill(pid, 0) } < 0
                && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > older_than);
            if dead && old {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// The whole content of `path`, or None when it does not exist.
pub fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>> {
    match File::open(path) {
        Ok(mut file) => {
            let mut data =
                Vec::with_capacity(file.metadata().map(|m| m.len()).unwrap_or(0) as usize);
            file.read_to_end(&mut data).on(path)?;
            Ok(Some(data))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).on(path),
    }
}

/// Remove `path`; a file that is already gone is not an error. True when it was there.
pub fn remove_if_exists(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).on(path),
    }
}

/// Remove every file under `dir` (recursively) whose name `keep` rejects, then the emptied
/// subdirectories; `dir` itself stays.
pub fn remove_files(dir: &Path, keep: &dyn Fn(&str) -> bool) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).on(dir),
    };
    for entry in entries {
        let entry = entry.on(dir)?;
        let path = entry.path();
        if entry.file_type().on(&path)?.is_dir() {
            remove_files(&path, keep)?;
            // Emptied subdirectories go too (huey leaves a flushed store empty); one that
            // another process has written into meanwhile stays.
            let _ = fs::remove_dir(&path);
        } else if !keep(&entry.file_name().to_string_lossy()) {
            remove_if_exists(&path)?;
        }
    }
    Ok(())
}

/// Inode number of `path`, or None when it does not exist.
pub fn inode(path: &Path) -> Result<Option<u64>> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some(m.ino())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).on(path),
    }
}

/// Wakes a waiter when a file appears or is written in a directory: inotify on Linux, nothing
/// elsewhere (callers then poll). The watch is added before the caller's last check, so an
/// arrival between that check and the wait is never missed.
pub struct Watcher {
    #[cfg(target_os = "linux")]
    fd: libc::c_int,
}

impl Watcher {
    #[cfg(target_os = "linux")]
    fn new() -> Option<Watcher> {
        // SAFETY: creates a descriptor that the returned Watcher owns.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        (fd >= 0).then_some(Watcher { fd })
    }

    #[cfg(not(target_os = "linux"))]
    fn new() -> Option<Watcher> {
        None
    }

    #[cfg(target_os = "linux")]
    fn add(&self, dir: &Path) -> Option<libc::c_int> {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let cpath = CString::new(dir.as_os_str().as_bytes()).ok()?;
        let mask = libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_MODIFY;
        // SAFETY: a valid descriptor and a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(self.fd, cpath.as_ptr(), mask) };
        (wd >= 0).then_some(wd)
    }

    #[cfg(target_os = "linux")]
    fn remove(&self, wd: libc::c_int) {
        // SAFETY: removes a watch this descriptor added; the IN_IGNORED event it queues is
        // drained before the watcher is used again.
        unsafe {
            libc::inotify_rm_watch(self.fd, wd);
        }
        self.drain();
    }

    #[cfg(target_os = "linux")]
    fn drain(&self) {
        let mut buf = [0u8; 4096];
        // SAFETY: reads into a local buffer of the given length from a non-blocking descriptor.
        while unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
    }

    /// Wait until something happens in the watched directory or `timeout` passes.
    #[cfg(target_os = "linux")]
    pub fn wait(&self, timeout: Duration) {
        let millis = timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
        let mut pfd = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, millis) } > 0 {
            self.drain();
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn wait(&self, timeout: Duration) {
        std::thread::sleep(timeout);
    }
}

#[cfg(target_os = "linux")]
impl Drop for Watcher {
    fn drop(&mut self) {
        // SAFETY: the descriptor is owned by this watcher and closed exactly once.
        unsafe {
            libc::close(self.fd);
        }
    }
}

/// Idle inotify instances, reused because closing one waits for the kernel to retire its
/// marks (an RCU grace period, milliseconds), which would delay every woken waiter.
#[derive(Default)]
pub struct Watchers {
    idle: Mutex<(u32, Vec<Watcher>)>,
}

impl Watchers {
    /// Run `wait_loop` with a watcher on `dir` (None when inotify is unavailable).
    pub fn watching<R>(&self, dir: &Path, wait_loop: impl FnOnce(Option<&Watcher>) -> R) -> R {
        let pid = std::process::id();
        let watcher = {
            let mut idle = self.idle.lock();
            if idle.0 != pid {
                // Inherited across fork: sharing them with the parent would steal its events.
                idle.1.clear();
                idle.0 = pid;
            }
            idle.1.pop().or_else(Watcher::new)
        };
        #[cfg(target_os = "linux")]
        let wd = watcher.as_ref().and_then(|w| w.add(dir));
        #[cfg(not(target_os = "linux"))]
        let wd: Option<()> = {
            let _ = dir;
            None
        };
        let result = wait_loop(if wd.is_some() { watcher.as_ref() } else { None });
        if let Some(watcher) = watcher {
            #[cfg(target_os = "linux")]
            if let Some(wd) = wd {
                watcher.remove(wd);
            }
            self.idle.lock().1.push(watcher);
        }
        result
    }
}
