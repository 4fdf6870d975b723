//! Results and counters: one file per key, changed only by atomic filesystem operations.
//!
//! A result for `key` lives in `results/{h[0]}/{h[1]}/.../{h}` where `h` is the hex MD5 of the
//! key and there are `levels` single-character directories, holding
//! `u32 big-endian key length + key + value`: the same place and format as huey 3.5.4.
//! - put_data writes under `tmp/` and renames over the key's file (readers see old or new).
//! - put_if_empty hard-links instead, which fails when the file exists: atomic across
//!   processes without a lock.
//! - pop_data renames the file to a private name first, so exactly one caller gets it.
//!
//! A counter lives in `counters/{h}` as decimal text padded to a fixed width (huey reads it
//! with `int()`), changed under `flock` on the counter file itself; the inode is checked after
//! locking so a concurrent delete_counter cannot split the increments between two files.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};

use super::super::watch::Watchers;
use super::sys::{self, Context, Result, TmpDir};

/// Width of a counter file: an i64 with its sign fits in 20 characters.
const COUNTER_WIDTH: usize = 20;

fn hex_md5(key: &[u8]) -> String {
    Md5::digest(key)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn is_result_name(name: &str) -> bool {
    name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

pub struct Results {
    dir: PathBuf,
    levels: usize,
    tmp: TmpDir,
}

impl Results {
    pub fn new(dir: PathBuf, levels: usize, tmp: TmpDir) -> Result<Results> {
        fs::create_dir_all(&dir).on(&dir)?;
        Ok(Results { dir, levels, tmp })
    }

    pub fn path_for_key(&self, key: &[u8]) -> PathBuf {
        let hash = hex_md5(key);
        let mut path = self.dir.clone();
        for c in hash.chars().take(self.levels) {
            path.push(c.to_string());
        }
        path.push(hash);
        path
    }

    fn write_tmp(&self, key: &[u8], value: &[u8]) -> Result<PathBuf> {
        let len = (key.len() as u32).to_be_bytes();
        self.tmp.write(&[&len, key, value])
    }

    /// Run `place(tmp, target)`, creating the key's directories when they are missing;
    /// `keeps_source`: the temporary file is still there after a successful `place` (a
    /// link, not a rename) and is removed.
    fn place(
        &self,
        key: &[u8],
        value: &[u8],
        place: fn(&Path, &Path) -> io::Result<()>,
        keeps_source: bool,
    ) -> Result<io::Result<()>> {
        let target = self.path_for_key(key);
        let tmp = self.write_tmp(key, value)?;
        let mut outcome = place(&tmp, &target);
        if matches!(&outcome, Err(e) if e.kind() == io::ErrorKind::NotFound) {
            let parent = target.parent().expect("results/<hash> has a parent");
            fs::create_dir_all(parent).on(parent)?;
            outcome = place(&tmp, &target);
        }
        if outcome.is_err() || keeps_source {
            let _ = fs::remove_file(&tmp);
        }
        Ok(outcome.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", target.display()))))
    }

    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.place(key, value, |tmp, target| fs::rename(tmp, target), false)?
            .on(&self.path_for_key(key))
    }

    pub fn put_if_empty(&self, key: &[u8], value: &[u8]) -> Result<bool> {
        match self.place(key, value, |tmp, target| fs::hard_link(tmp, target), true)? {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e).on(&self.path_for_key(key)),
        }
    }

    /// Split a stored file into key and value; None when it is corrupt.
    fn unpack(data: &[u8]) -> Option<(&[u8], &[u8])> {
        let len = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
        let key = data.get(4..4usize.checked_add(len)?)?;
        Some((key, &data[4 + len..]))
    }

    /// The value in the file stored for `key`, or an error naming the file when it does not
    /// hold that key (damaged or replaced): never a silent "no result".
    fn value_of(path: &Path, key: &[u8], data: &[u8]) -> Result<Vec<u8>> {
        match Self::unpack(data) {
            Some((stored, value)) if stored == key => Ok(value.to_vec()),
            _ => Err(sys::FileError::Damaged {
                path: path.to_path_buf(),
                what: format!(
                    "the result file for key {:?} does not hold that key ({} bytes)",
                    String::from_utf8_lossy(key),
                    data.len()
                ),
            }),
        }
    }

    pub fn peek(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let path = self.path_for_key(key);
        match sys::read_if_exists(&path)? {
            Some(data) => Self::value_of(&path, key, &data).map(Some),
            None => Ok(None),
        }
    }

    pub fn pop(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let path = self.path_for_key(key);
        let claimed = self.tmp.unique_name();
        let mut renamed = fs::rename(&path, &claimed);
        if matches!(&renamed, Err(e) if e.kind() == io::ErrorKind::NotFound) && path.exists() {
            // No `tmp/` to claim it into (removed under a running store): make it, once more.
            fs::create_dir_all(self.tmp.dir()).on(self.tmp.dir())?;
            renamed = fs::rename(&path, &claimed);
        }
        match renamed {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).on(&path),
        }
        let data = sys::read_if_exists(&claimed)?.unwrap_or_default();
        match Self::value_of(&path, key, &data) {
            Ok(value) => {
                sys::remove_if_exists(&claimed)?;
                Ok(Some(value))
            }
            Err(damaged) => {
                // Put it back for inspection, unless a new result took its place meanwhile.
                if fs::hard_link(&claimed, &path).is_ok() || path.exists() {
                    let _ = fs::remove_file(&claimed);
                }
                Err(damaged)
            }
        }
    }

    /// Remove `key`'s value; false when there was none.
    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        sys::remove_if_exists(&self.path_for_key(key))
    }

    pub fn has(&self, key: &[u8]) -> bool {
        self.path_for_key(key).exists()
    }

    /// Wait until `key` holds a value: inotify on its directory, else polling with backoff.
    pub fn wait(
        &self,
        watchers: &Watchers,
        key: &[u8],
        timeout: Duration,
        backoff: f64,
        max_delay: f64,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        let path = self.path_for_key(key);
        let parent = path.parent().expect("results/<hash> has a parent");
        let _ = fs::create_dir_all(parent);
        watchers.watching(parent, |watcher| {
            let mut delay = 0.001f64;
            let max_delay = Duration::from_secs_f64(max_delay.max(0.001));
            loop {
                if path.exists() {
                    return true;
                }
                let now = Instant::now();
                if now >= deadline {
                    return false;
                }
                match watcher {
                    // A missed event would cost at most max_delay: the file is the truth.
                    Some(w) => w.wait(max_delay.min(deadline - now)),
                    None => {
                        let step = Duration::from_secs_f64(delay).min(max_delay);
                        std::thread::sleep(step.min(deadline - now));
                    }
                }
                delay *= backoff.max(1.0);
            }
        })
    }

    /// Every stored (key, value), in no particular order. A file that is not a result for
    /// the key its name hashes is left out, as huey 3.5.4 does (`peek`/`pop` of its key
    /// report it).
    pub fn items(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut items = Vec::new();
        self.walk(&self.dir, &mut |path| {
            if let Some(data) = sys::read_if_exists(path)? {
                let named = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if let Some((key, value)) = Self::unpack(&data) {
                    if hex_md5(key) == named {
                        items.push((key.to_vec(), value.to_vec()));
                    }
                }
            }
            Ok(())
        })?;
        Ok(items)
    }

    pub fn size(&self) -> Result<usize> {
        let mut count = 0;
        self.walk(&self.dir, &mut |_| {
            count += 1;
            Ok(())
        })?;
        Ok(count)
    }

    fn walk(&self, dir: &Path, visit: &mut dyn FnMut(&Path) -> Result<()>) -> Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).on(dir),
        };
        for entry in entries {
            let entry = entry.on(dir)?;
            let path = entry.path();
            if entry.file_type().on(&path)?.is_dir() {
                self.walk(&path, visit)?;
            } else if is_result_name(&entry.file_name().to_string_lossy()) {
                // Not huey 3.5.4's `.tmp` files of a write in progress (or left by a crash).
                visit(&path)?;
            }
        }
        Ok(())
    }

    pub fn flush(&self) -> Result<()> {
        sys::remove_files(&self.dir, &|_| false)
    }
}

pub struct Counters {
    dir: PathBuf,
}

impl Counters {
    pub fn new(dir: PathBuf) -> Result<Counters> {
        fs::create_dir_all(&dir).on(&dir)?;
        Ok(Counters { dir })
    }

    fn path_for_key(&self, key: &[u8]) -> PathBuf {
        self.dir.join(hex_md5(key))
    }

    /// Open and lock the counter file that is currently linked at `path`.
    fn open_locked(&self, path: &Path) -> Result<File> {
        loop {
            let file = match OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
            {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir_all(&self.dir).on(&self.dir)?;
                    continue;
                }
                other => other.on(path)?,
            };
            sys::flock(&file, libc::LOCK_EX).on(path)?;
            // A delete_counter between our open and our lock leaves us on an unlinked inode.
            if sys::inode(path)? == Some(file.metadata().on(path)?.ino()) {
                return Ok(file);
            }
        }
    }

    pub fn incr(&self, key: &[u8], amount: i64) -> Result<i64> {
        let path = self.path_for_key(key);
        let file = self.open_locked(&path)?;
        let mut buf = [0u8; 64];
        let n = file.read_at(&mut buf, 0).on(&path)?;
        let text = std::str::from_utf8(&buf[..n]).map(str::trim);
        let current = match text {
            Ok("") => Some(0),
            Ok(text) => text.parse::<i64>().ok(),
            Err(_) => None,
        };
        let current = current.ok_or_else(|| sys::FileError::Damaged {
            path: path.clone(),
            what: format!(
                "not a counter: {:?}",
                String::from_utf8_lossy(&buf[..n.min(40)])
            ),
        })?;
        let value = current
            .checked_add(amount)
            .ok_or_else(|| sys::FileError::Io {
                path: path.clone(),
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    "counter overflows a 64-bit int",
                ),
            })?;
        // Fixed width: one small write replaces the whole value, never leaving a stale tail.
        let text = format!("{value:>COUNTER_WIDTH$}");
        file.write_all_at(text.as_bytes(), 0).on(&path)?;
        if n > COUNTER_WIDTH {
            file.set_len(COUNTER_WIDTH as u64).on(&path)?;
        }
        Ok(value)
    }

    pub fn delete(&self, key: &[u8]) -> Result<()> {
        sys::remove_if_exists(&self.path_for_key(key)).map(drop)
    }

    pub fn flush(&self) -> Result<()> {
        sys::remove_files(&self.dir, &|_| false)
    }
}

#[cfg(test)]
mod tests;
