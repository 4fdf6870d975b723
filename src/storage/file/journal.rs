//! The File schedule journal: an append-only log holding the scheduled messages themselves.
//!
//! `schedule.d/journal` is a sequence of records framed as in frame.rs (magic "hrj3"):
//! 1 added, body `ts i64, seq u64, message`; 2 removed, body `ts, seq`; 3 "sequence numbers
//! start here", body `seq` (written by compaction); 4 skipped bytes (damage neutralised);
//! 5 imported, body `id u64, first seq u64` then `(ts i64, len u32, message)` per entry: a
//! whole legacy schedule added in one record; 6 "import `id` is done", body `id` (kept by
//! compaction so an import is never applied twice). `ts` is microseconds of the naive
//! datetime since 1970-01-01, so order is exact.
//!
//! Each process keeps the live entries (`(ts, seq)` -> where the message sits) in an ordered
//! map and, under `flock` on `schedule.d/lock`, reads only the records appended since its
//! last look. add_to_schedule is one append and read_schedule one read per due message plus
//! one append.
//!
//! Damage: a record that fails its check, with good records after it, is reported (its bytes
//! go to the dead-letter queue) and overwritten with a skip record, so every good record after
//! it still counts and the next reader does not report it again. Only a torn tail (a record
//! cut short by a writer killed mid-append, with nothing good after it) is truncated.
//! read_schedule appends the removals only after the messages were delivered. When dead bytes
//! outweigh live ones the journal is rewritten under a temporary name and renamed over the
//! old one; other processes notice the new inode and read it afresh.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;

use parking_lot::Mutex;

use super::frame::{self, Damage, Found, Report};
use super::sys::{self, Context, FileError, Result, TmpDir};

const MAGIC: &[u8; 4] = b"hrj3";
const OP_ADD: u8 = 1;
const OP_REMOVE: u8 = 2;
const OP_SEQ_FLOOR: u8 = 3;
const OP_SKIP: u8 = 4;
const OP_IMPORT: u8 = 5;
const OP_IMPORTED: u8 = 6;
/// Compact once the journal is this big and mostly dead records.
const COMPACT_MIN_BYTES: u64 = 1 << 20;
const MAX_MESSAGE: usize = u32::MAX as usize - 64;

type Key = (i64, u64);

/// Where an entry's message sits in the journal.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Span {
    offset: u64,
    len: u32,
}

fn word(body: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(body.get(at..at + 8)?.try_into().ok()?))
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
    imports: BTreeSet<u64>,
}

impl View {
    fn insert(&mut self, key: Key, span: Span) {
        if let Some(old) = self.entries.insert(key, span) {
            self.live_bytes -= frame::record_len(old.len as usize + 16);
        }
        self.live_bytes += frame::record_len(span.len as usize + 16);
        self.next_seq = self.next_seq.max(key.1 + 1);
    }

    fn remove(&mut self, key: &Key) {
        if let Some(gone) = self.entries.remove(key) {
            self.live_bytes -= frame::record_len(gone.len as usize + 16);
        }
    }

    /// Apply one good record whose body starts at `body_at` in the file.
    fn apply(&mut self, kind: u8, body: &[u8], body_at: u64) {
        let (Some(ts), Some(seq)) = (word(body, 0), word(body, 8)) else {
            if kind == OP_SEQ_FLOOR || kind == OP_IMPORTED {
                if let Some(value) = word(body, 0) {
                    self.apply_short(kind, value);
                }
            }
            return;
        };
        match kind {
            OP_ADD => self.insert(
                (ts as i64, seq),
                Span {
                    offset: body_at + 16,
                    len: (body.len() - 16) as u32,
                },
            ),
            OP_REMOVE => self.remove(&(ts as i64, seq)),
            OP_SEQ_FLOOR | OP_IMPORTED => self.apply_short(kind, ts),
            OP_IMPORT => {
                let (id, mut seq) = (ts, seq);
                let mut at = 16;
                while let (Some(ts), Some(len)) = (word(body, at), body.get(at + 8..at + 12)) {
                    let len = u32::from_le_bytes(len.try_into().expect("4 bytes"));
                    let start = at + 12;
                    if start + len as usize > body.len() {
                        break;
                    }
                    let span = Span {
                        offset: body_at + start as u64,
                        len,
                    };
                    self.insert((ts as i64, seq), span);
                    seq += 1;
                    at = start + len as usize;
                }
                self.imports.insert(id);
            }
            _ => {}
        }
    }

    fn apply_short(&mut self, kind: u8, value: u64) {
        if kind == OP_SEQ_FLOOR {
            self.next_seq = self.next_seq.max(value);
        } else {
            self.imports.insert(value);
        }
    }
}

pub struct ScheduleJournal {
    journal_path: PathBuf,
    lock: sys::DirLock,
    view: Mutex<View>,
    tmp: TmpDir,
    report: Report,
}

impl ScheduleJournal {
    pub fn open(dir: PathBuf, tmp: TmpDir, use_flock: bool, report: Report) -> Result<Self> {
        fs::create_dir_all(&dir).on(&dir)?;
        Ok(ScheduleJournal {
            journal_path: dir.join("journal"),
            lock: sys::DirLock::new(dir.join("lock"), use_flock),
            view: Mutex::new(View::default()),
            tmp,
            report,
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
        loop {
            let (file, _) = view.journal.as_ref().expect("opened above");
            let len = file.metadata().on(path)?.len();
            if len <= view.offset {
                return Ok(());
            }
            let mut buf = vec![0u8; (len - view.offset) as usize];
            let n = frame::read_full_at(file, &mut buf, view.offset).on(path)?;
            buf.truncate(n);
            let mut at = 0usize;
            while let frame::Parsed::Record { kind, body, .. } = frame::parse(MAGIC, &buf[at..]) {
                let body_at = view.offset + (at + frame::HEADER) as u64;
                let next = at + frame::record_len(body.len()) as usize;
                view.apply(kind, &buf[at + body.start..at + body.end], body_at);
                at = next.min(buf.len());
            }
            view.offset += at as u64;
            if view.offset >= len {
                return Ok(());
            }
            self.skip_damage(view, len)?;
        }
    }

    /// The bytes at `view.offset` are not a good record: set them aside and step over them,
    /// or truncate them when they are a torn tail.
    fn skip_damage(&self, view: &mut View, len: u64) -> Result<()> {
        let path = &self.journal_path;
        let (file, _) = view.journal.as_ref().expect("opened by sync");
        let Found::Damaged { span, bytes } = frame::scan(file, MAGIC, view.offset, len).on(path)?
        else {
            // A good record after all (written meanwhile cannot be: we hold the lock).
            return Ok(());
        };
        if span.end >= len {
            // Nothing good follows. A record cut short by a killed writer is a torn tail and
            // goes silently; whole bytes that fail their check are set aside first.
            let torn = match frame::parse(MAGIC, &bytes) {
                frame::Parsed::Short { .. } => true,
                _ => bytes.len() < frame::HEADER,
            };
            if !torn {
                (self.report)(Damage {
                    path: path.clone(),
                    span: span.clone(),
                    bytes,
                    what: "damaged schedule record",
                })?;
            }
            file.set_len(span.start).on(path)?;
            return Ok(());
        }
        (self.report)(Damage {
            path: path.clone(),
            span: span.clone(),
            bytes,
            what: "damaged schedule record",
        })?;
        let span_len = (span.end - span.start) as usize;
        if span_len >= frame::HEADER {
            let mut skip = Vec::with_capacity(span_len);
            let zeros = vec![0u8; span_len - frame::HEADER];
            frame::encode(MAGIC, OP_SKIP, &[&zeros], &mut skip);
            file.write_all_at(&skip, span.start).on(path)?;
        }
        view.offset = span.end;
        Ok(())
    }

    fn append(&self, view: &mut View, records: &[u8]) -> Result<()> {
        let (file, _) = view.journal.as_ref().expect("synced before appending");
        if let Err(e) = file.write_all_at(records, view.offset) {
            // Leave no partial record behind for the next append to follow.
            let _ = file.set_len(view.offset);
            return Err(e).on(&self.journal_path);
        }
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
        let dead = view.offset.saturating_sub(view.live_bytes);
        if !force && (view.offset < COMPACT_MIN_BYTES || dead < view.live_bytes) {
            return Ok(());
        }
        let mut records = Vec::with_capacity(view.live_bytes as usize + 64);
        frame::encode(
            MAGIC,
            OP_SEQ_FLOOR,
            &[&view.next_seq.to_le_bytes()],
            &mut records,
        );
        for id in &view.imports {
            frame::encode(MAGIC, OP_IMPORTED, &[&id.to_le_bytes()], &mut records);
        }
        for (&(ts, seq), &span) in &view.entries {
            let data = self.read_span(view, span)?;
            let parts: [&[u8]; 3] = [&ts.to_le_bytes(), &seq.to_le_bytes(), &data];
            frame::encode(MAGIC, OP_ADD, &parts, &mut records);
        }
        let tmp = self.tmp.write(&[&records])?;
        fs::rename(&tmp, &self.journal_path).on(&self.journal_path)?;
        *view = View::default();
        self.sync(view)
    }

    /// Lock, bring this process's view up to date, and run `f` on it.
    fn with_view<T>(&self, f: impl FnOnce(&mut View) -> Result<T>) -> Result<T> {
        let mut view = self.view.lock();
        let _guard = self.lock.acquire()?;
        self.sync(&mut view)?;
        f(&mut view)
    }

    /// Append `records` and apply them to `view` by syncing (they are the only new bytes).
    fn commit(&self, view: &mut View, records: &[u8]) -> Result<()> {
        self.append(view, records)?;
        self.sync(view)
    }

    pub fn add(&self, data: &[u8], ts: i64) -> Result<()> {
        if data.len() > MAX_MESSAGE {
            return Err(FileError::TooLarge(data.len()));
        }
        self.with_view(|view| {
            let seq = view.next_seq.to_le_bytes();
            let mut record = Vec::with_capacity(frame::HEADER + 16 + data.len() + 8);
            frame::encode(MAGIC, OP_ADD, &[&ts.to_le_bytes(), &seq, data], &mut record);
            self.commit(view, &record)
        })
    }

    /// Add the entries `(ts, message)` of legacy import `id` in one record, unless that
    /// import is already in the journal (a retry after a killed import).
    pub fn import(&self, id: u64, entries: &[(i64, Vec<u8>)]) -> Result<()> {
        self.with_view(|view| {
            if view.imports.contains(&id) {
                return Ok(());
            }
            let mut body = Vec::new();
            body.extend_from_slice(&id.to_le_bytes());
            body.extend_from_slice(&view.next_seq.to_le_bytes());
            for (ts, data) in entries {
                body.extend_from_slice(&ts.to_le_bytes());
                body.extend_from_slice(&(data.len() as u32).to_le_bytes());
                body.extend_from_slice(data);
            }
            let mut record = Vec::with_capacity(body.len() + 32);
            frame::encode(MAGIC, OP_IMPORT, &[&body], &mut record);
            self.commit(view, &record)?;
            // Rewritten as plain entries at once, so nothing keeps the big record around.
            self.maybe_compact(view, true)
        })
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
        let mut removals = Vec::with_capacity(due.len() * 32);
        for &((ts, seq), _) in &due {
            let parts: [&[u8]; 2] = [&ts.to_le_bytes(), &seq.to_le_bytes()];
            frame::encode(MAGIC, OP_REMOVE, &parts, &mut removals);
        }
        self.commit(&mut view, &removals)?;
        self.maybe_compact(&mut view, false)?;
        Ok(messages)
    }

    pub fn size(&self) -> Result<usize> {
        self.with_view(|view| Ok(view.entries.len()))
    }

    pub fn items(&self, limit: Option<usize>) -> Result<Vec<Vec<u8>>> {
        self.with_view(|view| {
            let limit = limit.unwrap_or(usize::MAX);
            view.entries
                .values()
                .take(limit)
                .map(|&span| self.read_span(view, span))
                .collect()
        })
    }

    pub fn flush(&self) -> Result<()> {
        self.with_view(|view| {
            view.entries.clear();
            view.live_bytes = 0;
            self.maybe_compact(view, true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn temp_journal(name: &str) -> (PathBuf, TmpDir) {
        let dir = std::env::temp_dir().join(format!("huey-rs-sched-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        (dir.clone(), TmpDir::new(dir.join("tmp"), false))
    }

    type Reports = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

    fn open(dir: &std::path::Path, tmp: &TmpDir) -> (ScheduleJournal, Reports) {
        let reports: Reports = Arc::default();
        let sink = reports.clone();
        let report: Report = Arc::new(move |damage: Damage| {
            sink.lock().push((damage.reason(), damage.bytes));
            Ok(())
        });
        let journal = ScheduleJournal::open(dir.join("schedule.d"), tmp.clone(), true, report);
        (journal.unwrap(), reports)
    }

    #[test]
    fn due_messages_come_out_in_time_order_and_survive_reopen() {
        let (dir, tmp) = temp_journal("order");
        let (journal, _) = open(&dir, &tmp);
        for (ts, data) in [(30, b"c"), (10, b"a"), (20, b"b"), (10, b"A")] {
            journal.add(data, ts).unwrap();
        }
        let (again, _) = open(&dir, &tmp);
        assert_eq!(again.size().unwrap(), 4);
        assert_eq!(
            again.read(20).unwrap(),
            vec![b"a".to_vec(), b"A".to_vec(), b"b".to_vec()]
        );
        assert_eq!(journal.read(i64::MAX).unwrap(), vec![b"c".to_vec()]);
        assert_eq!(again.size().unwrap(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn move_due_removes_only_after_delivery_succeeded() {
        let (dir, tmp) = temp_journal("move");
        let (journal, _) = open(&dir, &tmp);
        journal.add(b"b", 2).unwrap();
        journal.add(b"a", 1).unwrap();
        journal.add(b"later", 9).unwrap();
        let failed = journal.move_due(5, |_| Err(FileError::Levels(-1)));
        assert!(failed.is_err());
        assert_eq!(journal.size().unwrap(), 3);
        let moved = journal.move_due(5, |_| -> Result<()> { Ok(()) }).unwrap();
        assert_eq!(moved, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(journal.items(None).unwrap(), vec![b"later".to_vec()]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_append_is_truncated_and_the_rest_survives() {
        let (dir, tmp) = temp_journal("torn");
        let (journal, reports) = open(&dir, &tmp);
        journal.add(b"whole", 1).unwrap();
        let path = dir.join("schedule.d/journal");
        let len = fs::metadata(&path).unwrap().len();
        let mut torn = Vec::new();
        frame::encode(MAGIC, OP_ADD, &[&[0; 16], b"never finished"], &mut torn);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&torn[..torn.len() - 9], len).unwrap();
        let (again, _) = open(&dir, &tmp);
        again.add(b"after", 3).unwrap();
        assert_eq!(
            journal.read(i64::MAX).unwrap(),
            vec![b"whole".to_vec(), b"after".to_vec()]
        );
        assert!(reports.lock().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bad_record_is_set_aside_once_and_every_later_one_kept() {
        let (dir, tmp) = temp_journal("bad");
        let (journal, _) = open(&dir, &tmp);
        for i in 0..10u8 {
            journal.add(&[i; 40], i64::from(i)).unwrap();
        }
        let path = dir.join("schedule.d/journal");
        let record = frame::record_len(16 + 40);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff], 3 * record + 30).unwrap();
        let (first, reports) = open(&dir, &tmp);
        assert_eq!(first.size().unwrap(), 9);
        assert_eq!(reports.lock().len(), 1);
        assert!(reports.lock()[0].0.contains("damaged schedule record"));
        let (second, again) = open(&dir, &tmp);
        assert_eq!(second.size().unwrap(), 9);
        assert!(again.lock().is_empty(), "reported once, then skipped");
        let due = second.read(i64::MAX).unwrap();
        assert_eq!(due.len(), 9);
        assert!(!due.contains(&vec![3u8; 40]));
        // Damage at the very end, whole but failing its check, is set aside too.
        journal.add(b"last", 50).unwrap();
        let len = fs::metadata(&path).unwrap().len();
        file.write_all_at(&[0xff], len - 8).unwrap();
        let (third, reports) = open(&dir, &tmp);
        assert_eq!(third.size().unwrap(), 0);
        assert_eq!(reports.lock().len(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_import_is_applied_once() {
        let (dir, tmp) = temp_journal("import");
        let (journal, _) = open(&dir, &tmp);
        journal.add(b"own", 5).unwrap();
        let entries = vec![(1, b"x".to_vec()), (9, b"y".to_vec())];
        journal.import(7, &entries).unwrap();
        journal.import(7, &entries).unwrap();
        let (again, _) = open(&dir, &tmp);
        again.import(7, &entries).unwrap();
        assert_eq!(
            again.items(None).unwrap(),
            vec![b"x".to_vec(), b"own".to_vec(), b"y".to_vec()]
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
