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
    pub fn dir(&self) -> &Path {
        &self.dir
    }

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

/// A test's own directory under the system temp dir (`huey-rs-{name}-{pid}`), removed when
/// dropped.
#[cfg(test)]
pub struct Scratch(pub PathBuf);

#[cfg(test)]
impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!("huey-rs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Scratch(path)
    }
}

#[cfg(test)]
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Whether another open file description could take an exclusive flock on `path` now.
    fn flock_is_free(path: &Path) -> bool {
        let other = File::open(path).unwrap();
        let taken = flock(&other, libc::LOCK_EX | libc::LOCK_NB).is_ok();
        if taken {
            flock(&other, libc::LOCK_UN).unwrap();
        }
        taken
    }

    #[test]
    fn dir_lock_holds_a_flock_until_the_guard_is_dropped() {
        let scratch = Scratch::new("sys-flock");
        let path = scratch.0.join("lock");
        let lock = DirLock::new(path.clone(), true);
        let guard = lock.acquire().unwrap();
        assert!(path.is_file());
        assert!(!flock_is_free(&path));
        drop(guard);
        assert!(flock_is_free(&path));
        // Acquired again on the same (reused) file.
        let guard = lock.acquire().unwrap();
        assert!(!flock_is_free(&path));
        drop(guard);
        assert!(flock_is_free(&path));
    }

    #[test]
    fn dir_lock_excludes_other_threads_until_released() {
        let scratch = Scratch::new("sys-threads");
        for use_flock in [true, false] {
            let lock = DirLock::new(scratch.0.join("lock"), use_flock);
            let guard = lock.acquire().unwrap();
            let (sender, receiver) = mpsc::channel();
            std::thread::scope(|s| {
                s.spawn(|| {
                    let _held = lock.acquire().unwrap();
                    sender.send(()).unwrap();
                });
                // Waiting is the point here: the other thread must not get in while we hold it.
                assert!(receiver.recv_timeout(Duration::from_millis(100)).is_err());
                drop(guard);
                assert!(receiver.recv_timeout(Duration::from_secs(30)).is_ok());
            });
        }
    }

    #[test]
    fn dir_lock_without_flock_creates_no_file() {
        let scratch = Scratch::new("sys-no-flock");
        let path = scratch.0.join("lock");
        let lock = DirLock::new(path.clone(), false);
        drop(lock.acquire().unwrap());
        assert!(!path.exists());
    }

    #[test]
    fn dir_lock_in_a_missing_directory_is_an_error_naming_the_file() {
        let scratch = Scratch::new("sys-lock-missing");
        let path = scratch.0.join("absent").join("lock");
        let lock = DirLock::new(path.clone(), true);
        let outcome = lock.acquire();
        match outcome {
            Err(FileError::Io {
                path: named,
                source,
            }) => {
                assert_eq!(named, path);
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            Err(other) => panic!("expected an I/O error, got {other:?}"),
            Ok(_) => panic!("locked a file in a directory that does not exist"),
        }
    }

    #[test]
    fn tmp_dir_writes_the_parts_to_a_fresh_file_it_creates_the_dir_for() {
        let scratch = Scratch::new("sys-tmp-write");
        for fsync in [false, true] {
            let dir = scratch.0.join(format!("tmp-{fsync}"));
            let tmp = TmpDir::new(dir.clone(), fsync);
            let a = tmp.write(&[b"head", b"", b"tail"]).unwrap();
            let b = tmp.write(&[b"head", b"", b"tail"]).unwrap();
            assert_ne!(a, b);
            assert_eq!(a.parent(), Some(dir.as_path()));
            let name = a.file_name().unwrap().to_str().unwrap();
            assert!(
                name.starts_with(&format!("{}.", std::process::id())),
                "{name}"
            );
            assert!(name.ends_with(".tmp"), "{name}");
            assert_eq!(fs::read(&a).unwrap(), b"headtail");
            assert_eq!(fs::read(&b).unwrap(), b"headtail");
        }
    }

    #[test]
    fn a_renamed_tmp_file_replaces_the_target_in_one_step() {
        let scratch = Scratch::new("sys-tmp-rename");
        let tmp = TmpDir::new(scratch.0.join("tmp"), false);
        let target = scratch.0.join("data");
        fs::write(&target, b"old").unwrap();
        let written = tmp.write(&[b"new ", b"content"]).unwrap();
        // Until the rename, the target is untouched.
        assert_eq!(fs::read(&target).unwrap(), b"old");
        let before = inode(&written).unwrap();
        fs::rename(&written, &target).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new content");
        assert_eq!(inode(&target).unwrap(), before);
        assert!(!written.exists());
        assert_eq!(fs::read_dir(scratch.0.join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn sweep_removes_only_old_files_of_processes_that_are_gone() {
        let scratch = Scratch::new("sys-sweep");
        let dir = scratch.0.join("tmp");
        fs::create_dir_all(&dir).unwrap();
        let gone = i32::MAX; // above any pid_max: no such process
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        let make = |name: &str, old: bool| {
            let path = dir.join(name);
            let file = File::create(&path).unwrap();
            if old {
                file.set_modified(hour_ago).unwrap();
            }
            path
        };
        let stale = make(&format!("{gone}.1.tmp"), true);
        let fresh = make(&format!("{gone}.2.tmp"), false);
        let ours = make(&format!("{}.3.tmp", std::process::id()), true);
        let foreign = make("not-a-pid.tmp", true);

        TmpDir::new(dir.clone(), false).sweep(Duration::from_secs(60));
        assert!(!stale.exists());
        assert!(fresh.exists());
        assert!(ours.exists());
        assert!(foreign.exists());

        // A missing directory is nothing to sweep.
        TmpDir::new(scratch.0.join("absent"), false).sweep(Duration::ZERO);
    }

    #[test]
    fn read_and_remove_treat_a_missing_file_as_absent() {
        let scratch = Scratch::new("sys-missing");
        let path = scratch.0.join("file");
        assert_eq!(read_if_exists(&path).unwrap(), None);
        assert!(!remove_if_exists(&path).unwrap());
        assert!(!remove_if_exists(&scratch.0.join("no-dir").join("file")).unwrap());
        assert_eq!(inode(&path).unwrap(), None);

        fs::write(&path, b"content").unwrap();
        assert_eq!(read_if_exists(&path).unwrap(), Some(b"content".to_vec()));
        assert!(inode(&path).unwrap().is_some());
        assert!(remove_if_exists(&path).unwrap());
        assert!(!path.exists());
        assert!(!remove_if_exists(&path).unwrap());
    }

    #[test]
    fn other_failures_are_errors_naming_the_path() {
        let scratch = Scratch::new("sys-errors");
        // A directory cannot be read or unlinked as a file.
        match read_if_exists(&scratch.0) {
            Err(FileError::Io { path, .. }) => assert_eq!(path, scratch.0),
            other => panic!("expected an I/O error, got {other:?}"),
        }
        match remove_if_exists(&scratch.0) {
            Err(FileError::Io { path, .. }) => assert_eq!(path, scratch.0),
            other => panic!("expected an I/O error, got {other:?}"),
        }
        assert!(scratch.0.is_dir());
    }

    #[test]
    fn remove_files_keeps_what_it_is_told_to_and_prunes_empty_directories() {
        let scratch = Scratch::new("sys-remove-files");
        let root = scratch.0.join("store");
        assert!(remove_files(&root, &|_| false).is_ok()); // missing: nothing to do

        for rel in [
            "a",
            "keep.me",
            "sub/b",
            "sub/deeper/c",
            "mixed/d",
            "mixed/keep.too",
        ] {
            let path = root.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, rel).unwrap();
        }
        remove_files(&root, &|name| name.starts_with("keep")).unwrap();
        assert!(root.is_dir());
        assert!(root.join("keep.me").is_file());
        assert!(root.join("mixed/keep.too").is_file());
        assert!(!root.join("a").exists());
        assert!(!root.join("mixed/d").exists());
        assert!(!root.join("sub").exists());

        remove_files(&root, &|_| false).unwrap();
        assert!(root.is_dir());
        assert_eq!(fs::read_dir(&root).unwrap().count(), 0);
    }

    #[test]
    fn context_attaches_the_path_to_an_io_error() {
        let path = Path::new("/some/where");
        let failed: io::Result<()> = Err(io::Error::from(io::ErrorKind::PermissionDenied));
        match failed.on(path) {
            Err(FileError::Io {
                path: named,
                source,
            }) => {
                assert_eq!(named, path);
                assert_eq!(source.kind(), io::ErrorKind::PermissionDenied);
            }
            other => panic!("expected an I/O error, got {other:?}"),
        }
        assert_eq!(Ok::<_, io::Error>(7).on(path).unwrap(), 7);
    }
}
