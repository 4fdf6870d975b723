//! The schedule: an append-only journal holding the scheduled messages themselves.
//!
//! `schedule/journal` is a sequence of records: a 32-byte header
//! `(ts i64, seq u64, op u32, len u32, check u64)` followed by `len` bytes of message for op 1
//! (added); op 2 (removed) and op 3 ("sequence numbers start here", written by compaction)
//! carry no data. `ts` is microseconds of the naive datetime since 1970-01-01, so order is
//! exact; `check` hashes the other fields and the data. Each process keeps the live entries
//! (`(ts, seq)` -> where the data sits) in an ordered map and, under `flock` on
//! `schedule/lock`, reads only the records appended since its last look. add_to_schedule is
//! one append and read_schedule one read per due message plus one append: no file is created
//! per message and no directory is listed.
//!
//! Crash safety: a record only counts once it is whole and its check matches; a writer killed
//! mid-append leaves a torn tail that the next lock holder truncates. read_schedule appends the
//! removals before returning, so a reader killed earlier leaves the messages scheduled. When
//! dead bytes outweigh live ones the journal is rewritten under a temporary name and renamed
//! over the old one; other processes notice the new inode and read it afresh.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;

use parking_lot::Mutex;

use super::sys::{self, Context, FileError, Result, TmpDir};

const HEADER: usize = 32;
const OP_ADD: u32 = 1;
const OP_REMOVE: u32 = 2;
const OP_SEQ_FLOOR: u32 = 3;
/// Compact once the journal is this big and mostly dead records.
const COMPACT_MIN_BYTES: u64 = 1 << 20;
const MAX_MESSAGE: usize = u32::MAX as usize;

type Key = (i64, u64);

/// Where an entry's message sits in the journal.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Span {
    offset: u64,
    len: u32,
}

fn check(ts: i64, seq: u64, op: u32, data: &[u8]) -> u64 {
    // FNV-1a over the fields and the data: enough to tell a whole record from a torn one.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let fields = [ts as u64, seq, (u64::from(op) << 32) | data.len() as u64];
    for byte in fields
        .iter()
        .flat_map(|f| f.to_le_bytes())
        .chain(data.iter().copied())
    {
        h = (h ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn encode(ts: i64, seq: u64, op: u32, data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&ts.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&op.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&check(ts, seq, op, data).to_le_bytes());
    out.extend_from_slice(data);
}

/// A whole, valid record at the start of `buf`: (ts, seq, op, data).
fn decode(buf: &[u8]) -> Option<(i64, u64, u32, &[u8])> {
    let head = buf.get(..HEADER)?;
    let ts = i64::from_le_bytes(head[0..8].try_into().ok()?);
    let seq = u64::from_le_bytes(head[8..16].try_into().ok()?);
    let op = u32::from_le_bytes(head[16..20].try_into().ok()?);
    let len = u32::from_le_bytes(head[20..24].try_into().ok()?) as usize;
    let sum = u64::from_le_bytes(head[24..32].try_into().ok()?);
    let data = buf.get(HEADER..HEADER + len)?;
    let valid = (OP_ADD..=OP_SEQ_FLOOR).contains(&op) && sum == check(ts, seq, op, data);
    valid.then_some((ts, seq, op, data))
}

/// This process's view of the journal, brought up to date under the lock.
#[derive(Default)]
struct View {
    journal: Option<(File, u64)>,
    /// Bytes of the journal already applied.
    offset: u64,
    live_bytes: u64,
    entries: BTreeMap<Key, Span>,
    next_seq: u64,
}

pub struct Schedule {
    journal_path: PathBuf,
    lock: sys::DirLock,
    view: Mutex<View>,
    tmp: TmpDir,
}

impl Schedule {
    pub fn open(dir: PathBuf, tmp: TmpDir, use_flock: bool) -> Result<Schedule> {
        fs::create_dir_all(&dir).on(&dir)?;
        Ok(Schedule {
            journal_path: dir.join("journal"),
            lock: sys::DirLock::new(dir.join("lock"), use_flock),
            view: Mutex::new(View::default()),
            tmp,
        })
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
        let mut at = 0usize;
        while let Some((ts, seq, op, data)) = decode(&buf[at..]) {
            let span = Span {
                offset: view.offset + (at + HEADER) as u64,
                len: data.len() as u32,
            };
            match op {
                OP_ADD => {
                    view.entries.insert((ts, seq), span);
                    view.live_bytes += (HEADER + data.len()) as u64;
                    view.next_seq = view.next_seq.max(seq + 1);
                }
                OP_REMOVE => {
                    if let Some(gone) = view.entries.remove(&(ts, seq)) {
                        view.live_bytes -= HEADER as u64 + u64::from(gone.len);
                    }
                }
                _ => view.next_seq = view.next_seq.max(seq),
            }
            at += HEADER + data.len();
        }
        view.offset += at as u64;
        if view.offset < len {
            // A writer was killed mid-append; drop its torn record so the next append follows
            // the last whole one.
            file.set_len(view.offset).on(path)?;
        }
        Ok(())
    }

    fn append(&self, view: &mut View, records: &[u8]) -> Result<()> {
        let (file, _) = view.journal.as_ref().expect("synced before appending");
        if let Err(e) = file.write_all_at(records, view.offset) {
            // Leave no partial record behind for the next append to follow.
            let _ = file.set_len(view.offset);
            return Err(e).on(&self.journal_path);
        }
        view.offset += records.len() as u64;
        Ok(())
    }

    fn read_span(&self, view: &View, span: Span) -> Result<Vec<u8>> {
        let (file, _) = view.journal.as_ref().expect("synced before reading");
        let mut data = vec![0u8; span.len as usize];
        file.read_exact_at(&mut data, span.offset)
            .on(&self.journal_path)?;
        Ok(data)
    }

    /// Rewrite the journal with only the live entries when it is mostly dead records.
    fn maybe_compact(&self, view: &mut View, force: bool) -> Result<()> {
        let dead = view.offset - view.live_bytes;
        if !force && (view.offset < COMPACT_MIN_BYTES || dead < view.live_bytes) {
            return Ok(());
        }
        let mut records = Vec::with_capacity(view.live_bytes as usize + HEADER);
        encode(0, view.next_seq, OP_SEQ_FLOOR, &[], &mut records);
        for (&(ts, seq), &span) in &view.entries {
            encode(ts, seq, OP_ADD, &self.read_span(view, span)?, &mut records);
        }
        let tmp = self.tmp.write(&[&records])?;
        fs::rename(&tmp, &self.journal_path).on(&self.journal_path)?;
        *view = View::default();
        self.sync(view)
    }

    pub fn add(&self, data: &[u8], ts: i64) -> Result<()> {
        if data.len() > MAX_MESSAGE {
            return Err(FileError::TooLarge(data.len()));
        }
        let mut view = self.view.lock();
        let _guard = self.lock.acquire()?;
        self.sync(&mut view)?;
        let seq = view.next_seq;
        let mut record = Vec::with_capacity(HEADER + data.len());
        encode(ts, seq, OP_ADD, data, &mut record);
        let offset = view.offset;
        self.append(&mut view, &record)?;
        view.next_seq += 1;
        view.live_bytes += record.len() as u64;
        let span = Span {
            offset: offset + HEADER as u64,
            len: data.len() as u32,
        };
        view.entries.insert((ts, seq), span);
        Ok(())
    }

    /// Remove and return every message due at or before `ts`, in due order.
    pub fn read(&self, ts: i64) -> Result<Vec<Vec<u8>>> {
        self.move_due(ts, |_| Ok::<(), FileError>(()))
    }

    /// Hand every message due at or before `ts` to `deliver` (which puts them in the queue)
    /// and remove them from the schedule only once it returned Ok, all under the schedule
    /// lock. A process killed inside `deliver` leaves them scheduled, so the worst case is
    /// a message both queued and still scheduled (delivered twice), never one in neither.
    pub fn move_due<E: From<FileError>>(
        &self,
        ts: i64,
        deliver: impl FnOnce(&[Vec<u8>]) -> std::result::Result<(), E>,
    ) -> std::result::Result<Vec<Vec<u8>>, E> {
        let mut view = self.view.lock();
        let _guard = self.lock.acquire()?;
        self.sync(&mut view)?;
        let due: Vec<(Key, Span)> = view
            .entries
            .range(..=(ts, u64::MAX))
            .map(|(k, s)| (*k, *s))
            .collect();
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let messages = due
            .iter()
            .map(|&(_, span)| self.read_span(&view, span))
            .collect::<Result<Vec<_>>>()?;
        deliver(&messages)?;
        let mut removals = Vec::with_capacity(due.len() * HEADER);
        for &((ts, seq), _) in &due {
            encode(ts, seq, OP_REMOVE, &[], &mut removals);
        }
        self.append(&mut view, &removals)?;
        for &(key, span) in &due {
            view.entries.remove(&key);
            view.live_bytes -= HEADER as u64 + u64::from(span.len);
        }
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
        let limit = limit.unwrap_or(usize::MAX);
        view.entries
            .values()
            .take(limit)
            .map(|&span| self.read_span(&view, span))
            .collect()
    }

    pub fn flush(&self) -> Result<()> {
        let mut view = self.view.lock();
        let _guard = self.lock.acquire()?;
        self.sync(&mut view)?;
        view.entries.clear();
        view.live_bytes = 0;
        self.maybe_compact(&mut view, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_schedule(name: &str) -> (PathBuf, TmpDir) {
        let dir = std::env::temp_dir().join(format!("huey-rs-sched-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        (dir.clone(), TmpDir::new(dir.join("tmp"), false))
    }

    #[test]
    fn records_round_trip_and_torn_records_fail_their_check() {
        let mut buf = Vec::new();
        encode(-5, 7, OP_ADD, b"data", &mut buf);
        assert_eq!(buf.len(), HEADER + 4);
        assert_eq!(decode(&buf), Some((-5, 7, OP_ADD, &b"data"[..])));
        assert_eq!(decode(&buf[..buf.len() - 1]), None);
        buf[HEADER] ^= 1;
        assert_eq!(decode(&buf), None);
        assert_eq!(decode(&[0u8; HEADER]), None);
    }

    #[test]
    fn due_messages_come_out_in_time_order_and_survive_reopen() {
        let (dir, tmp) = temp_schedule("order");
        let schedule = Schedule::open(dir.join("schedule"), tmp.clone(), true).unwrap();
        for (ts, data) in [(30, b"c"), (10, b"a"), (20, b"b"), (10, b"A")] {
            schedule.add(data, ts).unwrap();
        }
        let again = Schedule::open(dir.join("schedule"), tmp, true).unwrap();
        assert_eq!(again.size().unwrap(), 4);
        assert_eq!(
            again.read(20).unwrap(),
            vec![b"a".to_vec(), b"A".to_vec(), b"b".to_vec()]
        );
        assert_eq!(schedule.read(i64::MAX).unwrap(), vec![b"c".to_vec()]);
        assert_eq!(again.size().unwrap(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn move_due_removes_only_after_delivery_succeeded() {
        let (dir, tmp) = temp_schedule("move");
        let schedule = Schedule::open(dir.join("schedule"), tmp, true).unwrap();
        schedule.add(b"b", 2).unwrap();
        schedule.add(b"a", 1).unwrap();
        schedule.add(b"later", 9).unwrap();
        let failed = schedule.move_due(5, |_| Err(FileError::Levels(-1)));
        assert!(failed.is_err());
        assert_eq!(schedule.size().unwrap(), 3);
        let mut seen = Vec::new();
        let moved = schedule
            .move_due(5, |m| -> Result<()> {
                seen = m.to_vec();
                Ok(())
            })
            .unwrap();
        assert_eq!(moved, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(seen, moved);
        assert_eq!(schedule.items(None).unwrap(), vec![b"later".to_vec()]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_append_is_truncated_and_the_rest_survives() {
        let (dir, tmp) = temp_schedule("torn");
        let schedule = Schedule::open(dir.join("schedule"), tmp.clone(), true).unwrap();
        schedule.add(b"whole", 1).unwrap();
        let mut torn = Vec::new();
        encode(2, 1, OP_ADD, b"never finished", &mut torn);
        let journal = OpenOptions::new()
            .append(true)
            .open(dir.join("schedule/journal"))
            .unwrap();
        journal.write_all_at(&torn[..torn.len() - 3], 0).unwrap();
        let again = Schedule::open(dir.join("schedule"), tmp, true).unwrap();
        again.add(b"after", 3).unwrap();
        assert_eq!(
            schedule.read(i64::MAX).unwrap(),
            vec![b"whole".to_vec(), b"after".to_vec()]
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
