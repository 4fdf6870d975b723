//! Dead letters: queued messages that could not be decoded, one file each in `dead/`.
//!
//! A letter's id is its file name, `{unix micros:016x}.{pid}.{n}`, so names sort oldest first
//! and two processes never pick the same one. The file holds
//! `b"HRDL" + version 1 + f64 BE time + u32 BE deliveries + u32 BE reason length + reason
//! (UTF-8) + the original message bytes`. It is written under `tmp/` and renamed into place,
//! so a listing never sees half a letter; a pop renames it to a private name first, so
//! exactly one caller gets it.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::sys::{self, Context, Result, TmpDir};

const MAGIC: &[u8; 5] = b"HRDL\x01";
const HEADER: usize = MAGIC.len() + 8 + 4 + 4;

static LETTER_COUNTER: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub id: String,
    pub data: Vec<u8>,
    pub reason: String,
    pub time: f64,
    pub deliveries: u32,
}

#[derive(Clone)]
pub struct DeadLetters {
    dir: PathBuf,
    tmp: TmpDir,
}

/// Whether `id` could be a letter's file name (and so cannot name anything outside `dead/`).
fn is_letter_id(id: &str) -> bool {
    !id.is_empty()
        && !id.starts_with('.')
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'.')
}

/// Everything in a letter's file before the message bytes.
fn header(time: f64, deliveries: u32, reason: &str) -> Vec<u8> {
    let mut header = Vec::with_capacity(HEADER + reason.len());
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&time.to_be_bytes());
    header.extend_from_slice(&deliveries.to_be_bytes());
    header.extend_from_slice(&(reason.len() as u32).to_be_bytes());
    header.extend_from_slice(reason.as_bytes());
    header
}

fn unpack(id: String, file: &[u8]) -> Option<DeadLetter> {
    if file.len() < HEADER || &file[..MAGIC.len()] != MAGIC {
        return None;
    }
    let mut at = MAGIC.len();
    let time = f64::from_be_bytes(file[at..at + 8].try_into().ok()?);
    at += 8;
    let deliveries = u32::from_be_bytes(file[at..at + 4].try_into().ok()?);
    at += 4;
    let reason_len = u32::from_be_bytes(file[at..at + 4].try_into().ok()?) as usize;
    at += 4;
    let reason = file.get(at..at.checked_add(reason_len)?)?;
    Some(DeadLetter {
        id,
        reason: String::from_utf8_lossy(reason).into_owned(),
        data: file[at + reason_len..].to_vec(),
        time,
        deliveries,
    })
}

impl DeadLetters {
    /// `dir` is created by the first letter: most stores never have one.
    pub fn new(dir: PathBuf, tmp: TmpDir) -> DeadLetters {
        DeadLetters { dir, tmp }
    }

    pub fn put(&self, data: &[u8], reason: &str, deliveries: u32) -> Result<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let header = header(now.as_secs_f64(), deliveries, reason);
        let tmp = self.tmp.write(&[&header, data])?;
        let n = LETTER_COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:016x}.{}.{n}", now.as_micros(), std::process::id());
        let target = self.dir.join(&id);
        let mut placed = fs::rename(&tmp, &target);
        if matches!(&placed, Err(e) if e.kind() == io::ErrorKind::NotFound) {
            // The first letter (or `dead/` was removed meanwhile).
            fs::create_dir_all(&self.dir).on(&self.dir)?;
            placed = fs::rename(&tmp, &target);
        }
        if let Err(e) = placed {
            let _ = fs::remove_file(&tmp);
            return Err(e).on(&target);
        }
        Ok(id)
    }

    /// Letter ids, oldest first.
    fn ids(&self) -> Result<Vec<String>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).on(&self.dir),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.on(&self.dir)?;
            if let Some(name) = entry.file_name().to_str() {
                if is_letter_id(name) {
                    ids.push(name.to_owned());
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    pub fn list(&self, limit: Option<usize>) -> Result<Vec<DeadLetter>> {
        let mut letters = Vec::new();
        for id in self.ids()? {
            if limit.is_some_and(|n| letters.len() >= n) {
                break;
            }
            // A letter popped meanwhile is simply not listed.
            if let Some(file) = sys::read_if_exists(&self.dir.join(&id))? {
                if let Some(letter) = unpack(id, &file) {
                    letters.push(letter);
                }
            }
        }
        Ok(letters)
    }

    pub fn pop(&self, id: &str) -> Result<Option<DeadLetter>> {
        if !is_letter_id(id) {
            return Ok(None);
        }
        let path = self.dir.join(id);
        let claimed = self.tmp.unique_name();
        match fs::rename(&path, &claimed) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).on(&path),
        }
        let file = sys::read_if_exists(&claimed)?;
        sys::remove_if_exists(&claimed)?;
        Ok(file.and_then(|f| unpack(id.to_owned(), &f)))
    }

    pub fn count(&self) -> Result<usize> {
        Ok(self.ids()?.len())
    }

    pub fn flush(&self) -> Result<()> {
        for id in self.ids()? {
            sys::remove_if_exists(&self.dir.join(id))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letters() -> (tempdir::Dir, DeadLetters) {
        let dir = tempdir::Dir::new();
        let tmp = TmpDir::new(dir.path.join("tmp"), false);
        let letters = DeadLetters::new(dir.path.join("dead"), tmp);
        (dir, letters)
    }

    mod tempdir {
        pub struct Dir {
            pub path: std::path::PathBuf,
        }
        impl Dir {
            pub fn new() -> Dir {
                static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let path =
                    std::env::temp_dir().join(format!("huey-dead-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&path).unwrap();
                Dir { path }
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.path);
            }
        }
    }

    #[test]
    fn put_list_pop_round_trip() {
        let (_dir, letters) = letters();
        let a = letters.put(b"\x00bad", "ValueError: nope", 1).unwrap();
        let b = letters.put(b"", "", 3).unwrap();
        assert_eq!(letters.count().unwrap(), 2);
        let listed = letters.list(None).unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].id, a);
        assert_eq!(listed[0].data, b"\x00bad");
        assert_eq!(listed[0].reason, "ValueError: nope");
        assert_eq!(listed[1].deliveries, 3);
        assert_eq!(letters.list(Some(1)).unwrap().len(), 1);
        assert_eq!(letters.pop(&b).unwrap().unwrap().data, b"");
        assert_eq!(letters.pop(&b).unwrap(), None);
        letters.flush().unwrap();
        assert_eq!(letters.count().unwrap(), 0);
        assert!(letters.pop(&a).unwrap().is_none());
    }

    #[test]
    fn ids_cannot_leave_the_directory() {
        let (_dir, letters) = letters();
        for id in ["../tmp", "/etc/passwd", ".", "..", "", "a/b"] {
            assert_eq!(letters.pop(id).unwrap(), None);
        }
    }

    #[test]
    fn truncated_files_are_not_letters() {
        assert!(unpack("1".into(), b"HRDL\x01").is_none());
        let mut file = header(1.5, 2, "why");
        file.truncate(file.len() - 1);
        assert!(unpack("1".into(), &file).is_none());
    }
}
