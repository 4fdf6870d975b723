//! The schedule: one file per message plus an append-only journal that orders them.
//!
//! `schedule/{ts}-{seq}` holds a message due at `ts` (microseconds of the naive datetime
//! since 1970-01-01, exact). `schedule/journal` is a list of fixed 32-byte records,
//! `(ts i64, seq u64, op u64, check u64)`, op 1 = added, 2 = removed, 3 = "sequence numbers
//! start here" (written by compaction). Each process keeps the live entries in an ordered set
//! and, under `flock` on `schedule/lock`, reads only the records appended since its last look,
//! so `read_schedule` costs O(due + new records), not a directory listing.
//!
//! Crash safety: add appends its record before renaming the message into place (a record
//! whose file never appeared is skipped and dropped); read_schedule reads and unlinks the due
//! files before appending their removal (a removed file whose record is missing is skipped).
//! A torn trailing record (a writer killed mid-append) fails its check and is truncated by
//! the next lock holder. When dead records outnumber live ones the journal is rewritten to a
//! temporary name and renamed over the old one; other processes notice the new inode.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::sys::{self, Context, DirLock, Result, TmpDir};

const RECORD: usize = 32;
const OP_ADD: u64 = 1;
const OP_REMOVE: u64 = 2;
const OP_SEQ_FLOOR: u64 = 3;
const CHECK_SALT: u64 = 0x9e37_79b9_7f4a_7c15;
/// Compact when the journal holds this many records and four times the live ones.
const COMPACT_MIN: u64 = 4096;

type Entry = (i64, u64);

fn check(ts: i64, seq: u64, op: u64) -> u64 {
    let mut h = CHECK_SALT;
    for v in [ts as u64, seq, op] {
        h = (h ^ v).wrapping_mul(0x0100_0000_01b3).rotate_left(29);
    }
    h
}

fn encode(ts: i64, seq: u64, op: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&ts.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&op.to_le_bytes());
    out.extend_from_slice(&check(ts, seq, op).to_le_bytes());
}

fn decode(record: &[u8]) -> Option<(i64, u64, u64)> {
    let word = |i: usize| u64::from_le_bytes(record[i * 8..i * 8 + 8].try_into().unwrap());
    let (ts, seq, op) = (word(0) as i64, word(1), word(2));
    (word(3) == check(ts, seq, op) && (OP_ADD..=OP_SEQ_FLOOR).contains(&op))
        .then_some((ts, seq, op))
}

/// This process's view of the journal, brought up to date under the lock.
#[derive(Default)]
struct View {
    journal: Option<(File, u64)>,
    offset: u64,
    records: u64,
    entries: BTreeSet<Entry>,
    next_seq: u64,
}

pub struct Schedule {
    dir: PathBuf,
    journal_path: PathBuf,
    lock: DirLock,
    view: Mutex<View>,
    tmp: TmpDir,
}

impl Schedule {
    pub fn open(dir: PathBuf, tmp: TmpDir, use_flock: bool) -> Result<Schedule> {
        fs::create_dir_all(&dir).on(&dir)?;
        Ok(Schedule {
            journal_path: dir.join("journal"),
            lock: DirLock::new(dir.join("lock"), use_flock),
            dir,
            view: Mutex::new(View::default()),
            tmp,
        })
    }

    fn message_path(&self, (ts, seq): Entry) -> PathBuf {
        self.dir.join(format!("{ts}-{seq}"))
    }

    /// Bring `view` up to date with the journal on disk. Caller holds the lock.
    fn sync(&self, view: &mut View) -> Result<()> {
        let path = &self.journal_path;
        let current = sys::inode(path)?;
        if current.is_none() || view.journal.as_ref().map(|(_, ino)| *ino) != current {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .on(path)?;
            let ino = file.metadata().on(path)?.ino();
            *view = View {
                journal: Some((file, ino)),
                ..View::default()
            };
        }
        let (file, _) = view.journal.as_ref().expect("opened above");
        let len = file.metadata().on(path)?.len();
        if len <= view.offset {
            return Ok(());
        }
        let mut buf = vec![0u8; (len - view.offset) as usize];
        file.read_exact_at(&mut buf, view.offset).on(path)?;
        let mut good = 0;
        for record in buf.chunks_exact(RECORD) {
            let Some((ts, seq, op)) = decode(record) else {
                break;
            };
            match op {
                OP_ADD => {
                    view.entries.insert((ts, seq));
                }
                OP_REMOVE => {
                    view.entries.remove(&(ts, seq));
                }
                _ => {
                    view.next_seq = view.next_seq.max(seq);
                    good += RECORD as u64;
                    continue;
                }
            }
            view.next_seq = view.next_seq.max(seq + 1);
            good += RECORD as u64;
        }
        view.records += good / RECORD as u64;
        view.offset += good;
        if view.offset < len {
            // A writer was killed mid-append; drop its torn record so appends stay aligned.
            file.set_len(view.offset).on(path)?;
        }
        Ok(())
    }

    fn append(&self, view: &mut View, records: &[u8]) -> Result<()> {
        let (file, _) = view.journal.as_ref().expect("synced before appending");
        file.write_all_at(records, view.offset)
            .on(&self.journal_path)?;
        view.offset += records.len() as u64;
        view.records += (records.len() / RECORD) as u64;
        Ok(())
    }

    /// Rewrite the journal with only the live entries when it is mostly dead records.
    fn maybe_compact(&self, view: &mut View, force: bool) -> Result<()> {
        if !force && (view.records < COMPACT_MIN || view.records < 4 * view.entries.len() as u64) {
            return Ok(());
        }
        let mut records = Vec::with_capacity((view.entries.len() + 1) * RECORD);
        encode(0, view.next_seq, OP_SEQ_FLOOR, &mut records);
        for &(ts, seq) in &view.entries {
            encode(ts, seq, OP_ADD, &mut records);
        }
        let tmp = self.tmp.write(&[&records])?;
        fs::rename(&tmp, &self.journal_path).on(&self.journal_path)?;
        let entries = std::mem::take(&mut view.entries);
        let next_seq = view.next_seq;
        *view = View::default();
        self.sync(view)?;
        debug_assert_eq!(view.entries, entries);
        view.next_seq = view.next_seq.max(next_seq);
        Ok(())
    }

    pub fn add(&self, data: &[u8], ts: i64) -> Result<()> {
        let tmp = self.tmp.write(&[data])?;
        let added = self.add_locked(&tmp, ts);
        if added.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        added
    }

    fn add_locked(&self, tmp: &Path, ts: i64) -> Result<()> {
        let mut view = self.view.lock();
        let _guard = self.lock.acquire()?;
        self.sync(&mut view)?;
        let entry = (ts, view.next_seq);
        let mut record = Vec::with_capacity(RECORD);
        encode(ts, entry.1, OP_ADD, &mut record);
        self.append(&mut view, &record)?;
        view.next_seq += 1;
        view.entries.insert(entry);
        let target = self.message_path(entry);
        fs::rename(tmp, &target).on(&target)
    }

    /// Remove and return every message due at or before `ts`, in due order.
    pub fn read(&self, ts: i64) -> Result<Vec<Vec<u8>>> {
        let mut view = self.view.lock();
        let _guard = self.lock.acquire()?;
        self.sync(&mut view)?;
        let due: Vec<Entry> = view.entries.range(..=(ts, u64::MAX)).copied().collect();
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let mut messages = Vec::with_capacity(due.len());
        let mut records = Vec::with_capacity(due.len() * RECORD);
        for &entry in &due {
            let path = self.message_path(entry);
            if let Some(data) = sys::read_if_exists(&path)? {
                sys::remove_if_exists(&path)?;
                messages.push(data);
            }
            encode(entry.0, entry.1, OP_REMOVE, &mut records);
            view.entries.remove(&entry);
        }
        self.append(&mut view, &records)?;
        self.maybe_compact(&mut view, false)?;
        Ok(messages)
    }

    pub fn size(&self) -> Result<usize> {
        let mut view = self.view.lock();
        let _guard = self.lock.acquire()?;
        self.sync(&mut view)?;
        Ok(view.entries.len())
    }

    pub fn items(&self, limit: Option<usize>) -> Result<Vec<Vec<u8>>> {
        let mut view = self.view.lock();
        let _guard = self.lock.acquire()?;
        self.sync(&mut view)?;
        let mut items = Vec::new();
        for &entry in view.entries.iter() {
            if items.len() >= limit.unwrap_or(usize::MAX) {
                break;
            }
            if let Some(data) = sys::read_if_exists(&self.message_path(entry))? {
                items.push(data);
            }
        }
        Ok(items)
    }

    pub fn flush(&self) -> Result<()> {
        let mut view = self.view.lock();
        let _guard = self.lock.acquire()?;
        self.sync(&mut view)?;
        view.entries.clear();
        self.maybe_compact(&mut view, true)?;
        sys::remove_files(&self.dir, &|name| name == "journal" || name == "lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_torn_records_fail_their_check() {
        let mut buf = Vec::new();
        encode(-5, 7, OP_ADD, &mut buf);
        assert_eq!(buf.len(), RECORD);
        assert_eq!(decode(&buf), Some((-5, 7, OP_ADD)));
        buf[30] ^= 1;
        assert_eq!(decode(&buf), None);
        assert_eq!(decode(&[0u8; RECORD]), None);
    }

    #[test]
    fn due_messages_come_out_in_time_order_and_survive_reopen() {
        let dir = std::env::temp_dir().join(format!("huey-rs-sched-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let tmp = || TmpDir::new(dir.join("tmp"), false);
        let schedule = Schedule::open(dir.join("schedule"), tmp(), true).unwrap();
        for (ts, data) in [(30, b"c"), (10, b"a"), (20, b"b"), (10, b"A")] {
            schedule.add(data, ts).unwrap();
        }
        let again = Schedule::open(dir.join("schedule"), tmp(), true).unwrap();
        assert_eq!(again.size().unwrap(), 4);
        assert_eq!(
            again.read(20).unwrap(),
            vec![b"a".to_vec(), b"A".to_vec(), b"b".to_vec()]
        );
        assert_eq!(schedule.read(i64::MAX).unwrap(), vec![b"c".to_vec()]);
        assert_eq!(again.size().unwrap(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }
}
