//! The operating-system pieces FileStorage is built from: its error type, the lock that
//! serialises threads and processes, crash-safe temporary files and the wake-up watcher.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, MutexGuard};

/// The highest message priority (huey's `FileStorage.MAX_PRIORITY`).
pub const MAX_PRIORITY: i64 = 0xffff;

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
    /// A file whose content is not what we wrote there (a result, a counter).
    Damaged {
        path: PathBuf,
        what: String,
    },
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            FileError::Priority(p) if *p < 0 => {
                write!(f, "priority must be a positive number, got {p}")
            }
            FileError::Priority(p) => {
                write!(f, "priority must be <= {MAX_PRIORITY}, got {p}")
            }
            FileError::Levels(n) => write!(f, "levels must be between 0 and 4, got {n}"),
            FileError::NotADirectory(p) => write!(f, "path \"{}\" is not a directory", p.display()),
            FileError::TooLarge(n) => {
                write!(
                    f,
                    "message of {n} bytes is too large for FileStorage (max 4 GiB)"
                )
            }
            FileError::Damaged { path, what } => write!(f, "{}: {what}", path.display()),
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

/// `flock(2)` on `file`, retried when a signal interrupts the wait.
pub fn flock(file: &File, operation: libc::c_int) -> io::Result<()> {
    crate::ffi::flock(file, operation)
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
            let dead = crate::ffi::process_is_gone(pid);
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

pub use crate::ffi::local_utc_offset;

/// Inode number of `path`, or None when it does not exist.
pub fn inode(path: &Path) -> Result<Option<u64>> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some(m.ino())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).on(path),
    }
}
