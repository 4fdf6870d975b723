//! The task queue: per-priority segment files of self-checking records, with the head and
//! tail of every priority in a memory-mapped index (index.rs) changed under `queue.d/lock`.
//!
//! Messages of priority `p` are the records from `head` to `tail` in
//! `queue.d/{p:04x}-{segment:08x}.seg`, framed as in frame.rs (magic "hrq3"). Record kinds:
//! 1 a message; 2 a message put back by reliable delivery's recovery, its body starting
//! with its earlier delivery count (u32 LE); 3 end of segment. A record's mark byte is set to
//! `CONSUMED` after it is dequeued, so an index rebuilt from the segments starts after it.
//!
//! Enqueue writes its record at `tail` with `pwrite` and only then moves `tail` past it;
//! dequeue reads the record at `head` and then moves `head`. Both cost one write or read and
//! a few stores whatever the depth. A segment that reaches `SEGMENT_BYTES` gets an end
//! record and the tail moves to a new one; the reader deletes a segment when it passes its
//! end.
//!
//! Damage never costs more than the damaged bytes: a record that fails its check is set
//! aside (reported to the dead-letter queue with its file and offset) and the reader
//! resynchronises on the next good record; a missing or truncated segment loses only what it
//! held, and records written after it are still found. A missing, zeroed, truncated or
//! replaced index is rebuilt from the segments.
//!
//! Crash safety: a process killed while writing a record has not moved `tail`, so the torn
//! bytes are invisible and the next enqueue overwrites them. A process killed while reading
//! has not moved `head`, so the message stays queued. Segment numbers are never reused.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use parking_lot::{Mutex, MutexGuard};

use super::frame::{self, Damage, Found, Report};
pub use super::index::MAX_PRIORITY;
use super::index::{position, split, Index, MAGIC};
use super::sys::{self, Context, DirLock, DirLockGuard, FileError, Result};

pub const SEGMENT_MAGIC: &[u8; 4] = b"hrq3";
/// A segment takes new records until it holds this many bytes.
const SEGMENT_BYTES: u64 = 8 << 20;
pub const KIND_MESSAGE: u8 = 1;
pub const KIND_REDELIVERED: u8 = 2;
const KIND_END: u8 = 3;
const CONSUMED: u8 = 0xc5;
const COUNT: usize = 4;
mod import;
use import::IMPORT_PLAN;
/// The largest message: its record must fit the 32-bit offset of a position.
const MAX_MESSAGE: usize = u32::MAX as usize - 64;

/// A message read from the queue: its bytes, priority and earlier deliveries (0 unless it
/// was put back by reliable delivery's recovery).
pub struct Dequeued {
    pub data: Vec<u8>,
    pub priority: usize,
    pub deliveries: u32,
}

/// One message as a queue record.
pub fn encode_message(data: &[u8], deliveries: u32, out: &mut Vec<u8>) {
    if deliveries == 0 {
        frame::encode(SEGMENT_MAGIC, KIND_MESSAGE, &[data], out);
    } else {
        let count = deliveries.to_le_bytes();
        frame::encode(SEGMENT_MAGIC, KIND_REDELIVERED, &[&count, data], out);
    }
}

/// The message in a record's body and its earlier deliveries; None for other kinds.
fn message(kind: u8, mut body: Vec<u8>) -> Option<(Vec<u8>, u32)> {
    match kind {
        KIND_MESSAGE => Some((body, 0)),
        KIND_REDELIVERED if body.len() >= COUNT => {
            let count = u32::from_le_bytes(body[..COUNT].try_into().expect("4 bytes"));
            body.drain(..COUNT);
            Some((body, count))
        }
        _ => None,
    }
}

/// What the reader found at a priority's head.
enum Step {
    Message(frame::Record),
    /// Move the head here (past damage, or on to the next segment) and look again.
    MoveTo(u64, Option<Damage>),
}

/// Open segment files of this process, per (priority, writing).
#[derive(Default)]
struct Segments {
    open: HashMap<(usize, bool), (u64, File)>,
}

struct State {
    index: Option<Index>,
    segments: Segments,
}

pub struct Queue {
    dir: PathBuf,
    lock: DirLock,
    state: Mutex<State>,
    fsync: bool,
    report: Report,
}

/// The queue locked by this thread and process, with a valid index.
struct Locked<'a> {
    _guard: DirLockGuard<'a>,
    state: MutexGuard<'a, State>,
}

impl Locked<'_> {
    fn index(&self) -> &Index {
        self.state.index.as_ref().expect("validated when locked")
    }
}

impl Queue {
    pub fn open(dir: PathBuf, fsync: bool, use_flock: bool, report: Report) -> Result<Queue> {
        fs::create_dir_all(&dir).on(&dir)?;
        let queue = Queue {
            lock: DirLock::new(dir.join("lock"), use_flock),
            dir,
            state: Mutex::new(State {
                index: None,
                segments: Segments::default(),
            }),
            fsync,
            report,
        };
        drop(queue.locked()?);
        Ok(queue)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn check_priority(priority: i64) -> Result<usize> {
        if (0..=MAX_PRIORITY).contains(&priority) {
            Ok(priority as usize)
        } else {
            Err(FileError::Priority(priority))
        }
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index")
    }

    fn segment_path(&self, priority: usize, segment: u64) -> PathBuf {
        self.dir.join(format!("{priority:04x}-{segment:08x}.seg"))
    }

    /// Lock the queue and make sure the mapped index is whole and current, rebuilding it from
    /// the segments when it is missing, zeroed, truncated or replaced; then finish a legacy
    /// import that a killed process left half applied.
    fn locked(&self) -> Result<Locked<'_>> {
        let guard = self.lock.acquire()?;
        let mut state = self.state.lock();
        if !state.index.as_ref().is_some_and(Index::still_valid) {
            state.index = None;
            state.segments.open.clear();
            let path = self.index_path();
            let index = match Index::open(&path)? {
                Some(index) => index,
                None => {
                    Index::create(&path, &self.dir.join("index.new"), self.fsync)?;
                    Index::open(&path)?.ok_or_else(|| FileError::BadIndex(path.clone()))?
                }
            };
            state.index = Some(index);
        }
        let mut locked = Locked {
            _guard: guard,
            state,
        };
        if locked.index().magic().load(Ordering::SeqCst) != MAGIC {
            self.rebuild(&mut locked)?;
        }
        if locked.index().importing().load(Ordering::SeqCst) != 0 {
            self.finish_import(&mut locked.state)?;
        }
        Ok(locked)
    }

    /// The open file of `segment`, creating it when writing. None: it does not exist.
    fn segment<'a>(
        &self,
        segments: &'a mut Segments,
        priority: usize,
        segment: u64,
        write: bool,
    ) -> Result<Option<&'a File>> {
        let key = (priority, write);
        // A segment deleted under a writer must not swallow what it writes next: the writer
        // notices (one fstat) and writes to a new file under the segment's name.
        let stale = |(number, file): &(u64, File)| {
            *number != segment || (write && file.metadata().is_ok_and(|m| m.nlink() == 0))
        };
        if segments.open.get(&key).is_none_or(stale) {
            let path = self.segment_path(priority, segment);
            // Readers write too: the consumed mark after each dequeue.
            let opened = OpenOptions::new()
                .read(true)
                .write(true)
                .create(write)
                .truncate(false)
                .open(&path);
            let file = match opened {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound && !write => {
                    segments.open.remove(&key);
                    return Ok(None);
                }
                Err(e) => return Err(e).on(&path),
            };
            segments.open.insert(key, (segment, file));
        }
        Ok(segments.open.get(&key).map(|(_, file)| file))
    }

    pub fn enqueue(&self, data: &[u8], priority: i64) -> Result<()> {
        self.enqueue_delivered(data, priority, 0)
    }

    /// Enqueue a message that was delivered `deliveries` times before (0: never).
    pub fn enqueue_delivered(&self, data: &[u8], priority: i64, deliveries: u32) -> Result<()> {
        let priority = Self::check_priority(priority)?;
        if data.len() > MAX_MESSAGE {
            return Err(FileError::TooLarge(data.len()));
        }
        let mut record = Vec::with_capacity(frame::HEADER + COUNT + data.len() + 8);
        encode_message(data, deliveries, &mut record);
        let mut locked = self.locked()?;
        self.append(&mut locked.state, priority, &record, 1)
    }

    /// Write `records` (holding `count` messages) at `priority`'s tail and move the tail past
    /// them: the commit point is that one store.
    fn append(&self, state: &mut State, priority: usize, records: &[u8], count: u64) -> Result<()> {
        let State { index, segments } = state;
        let index = index.as_ref().expect("validated when locked");
        let (mut segment, mut offset) = split(index.tail(priority).load(Ordering::SeqCst));
        let len = records.len() as u64;
        if offset > 0 && offset + len > SEGMENT_BYTES {
            let mut end = Vec::new();
            frame::encode(SEGMENT_MAGIC, KIND_END, &[], &mut end);
            let file = self.segment(segments, priority, segment, true)?;
            let file = file.expect("created");
            file.write_all_at(&end, offset)
                .on(&self.segment_path(priority, segment))?;
            (segment, offset) = (segment + 1, 0);
        }
        if offset + len > u32::MAX as u64 {
            return Err(FileError::TooLarge(records.len()));
        }
        let path = self.segment_path(priority, segment);
        let file = self.segment(segments, priority, segment, true)?;
        let file = file.expect("created");
        file.write_all_at(records, offset).on(&path)?;
        if self.fsync {
            file.sync_data().on(&path)?;
        }
        index.mark(priority);
        index
            .tail(priority)
            .store(position(segment, offset + len), Ordering::SeqCst);
        index.enqueued(priority).fetch_add(count, Ordering::SeqCst);
        Ok(())
    }

    /// What lies at `head` of `priority`: a message, or where to move the head instead.
    fn step(&self, segments: &mut Segments, index: &Index, priority: usize) -> Result<Step> {
        let head = index.head(priority).load(Ordering::SeqCst);
        let tail = index.tail(priority).load(Ordering::SeqCst);
        let ((segment, offset), (tail_segment, tail_offset)) = (split(head), split(tail));
        let path = self.segment_path(priority, segment);
        let Some(file) = self.segment(segments, priority, segment, false)? else {
            let damage = |end| Damage {
                path: path.clone(),
                span: offset..end,
                bytes: Vec::new(),
                what: "missing queue segment",
            };
            return Ok(if segment < tail_segment {
                Step::MoveTo(position(segment + 1, 0), Some(damage(u64::MAX)))
            } else {
                Step::MoveTo(tail, Some(damage(tail_offset)))
            });
        };
        let end = if segment < tail_segment {
            file.metadata().on(&path)?.len()
        } else {
            tail_offset
        };
        match frame::scan(file, SEGMENT_MAGIC, offset, end).on(&path)? {
            Found::Record(record) if record.kind == KIND_END && segment < tail_segment => {
                Ok(Step::MoveTo(position(segment + 1, 0), None))
            }
            Found::Record(record) if record.kind == KIND_END => Ok(Step::MoveTo(
                position(segment, record.next),
                Some(Damage {
                    path,
                    span: record.at..record.next,
                    bytes: Vec::new(),
                    what: "end-of-segment record before the tail",
                }),
            )),
            Found::Record(record) => Ok(Step::Message(record)),
            Found::Damaged { span, mut bytes } => {
                let what = if bytes.iter().all(|b| *b == 0) {
                    bytes.clear(); // nothing worth keeping: a hole where records were lost
                    "lost (zeroed or cut off) queue records"
                } else if bytes.len() as u64 == span.end - span.start {
                    "damaged queue record"
                } else {
                    "truncated queue segment"
                };
                let next = position(segment, span.end);
                let damage = Damage {
                    path,
                    span,
                    bytes,
                    what,
                };
                Ok(Step::MoveTo(next, Some(damage)))
            }
            // A segment before the tail's that ends without its end record.
            Found::End if segment < tail_segment => {
                Ok(Step::MoveTo(position(segment + 1, 0), None))
            }
            Found::End => Ok(Step::MoveTo(tail, None)),
        }
    }

    pub fn dequeue(&self) -> Result<Option<Vec<u8>>> {
        self.dequeue_with(|message| Ok(message.data))
    }

    /// Take the next message and hand it to `keep` before it leaves the queue: the head moves
    /// only once `keep` returned Ok, under the queue lock, so a process killed inside `keep`
    /// leaves the message queued. An error from `keep` leaves it queued too.
    pub fn dequeue_with<T>(&self, keep: impl FnOnce(Dequeued) -> Result<T>) -> Result<Option<T>> {
        let mut locked = self.locked()?;
        let State { index, segments } = &mut *locked.state;
        let index = index.as_ref().expect("validated when locked");
        self.take(segments, index, keep)
    }

    /// Up to `n` messages in dequeue order, under one hold of the queue lock.
    pub fn dequeue_many(&self, n: usize) -> Result<Vec<Vec<u8>>> {
        let mut locked = self.locked()?;
        let State { index, segments } = &mut *locked.state;
        let index = index.as_ref().expect("validated when locked");
        let mut batch = Vec::new();
        while batch.len() < n {
            match self.take(segments, index, |message| Ok(message.data))? {
                Some(data) => batch.push(data),
                None => break,
            }
        }
        Ok(batch)
    }

    /// `dequeue_with`'s work, with the queue lock held by the caller.
    fn take<T>(
        &self,
        segments: &mut Segments,
        index: &Index,
        keep: impl FnOnce(Dequeued) -> Result<T>,
    ) -> Result<Option<T>> {
        while let Some(priority) = index.marked().next() {
            let head = index.head(priority).load(Ordering::SeqCst);
            if head >= index.tail(priority).load(Ordering::SeqCst) {
                index.unmark(priority);
                let enqueued = index.enqueued(priority).load(Ordering::SeqCst);
                index.dequeued(priority).store(enqueued, Ordering::SeqCst);
                continue;
            }
            match self.step(segments, index, priority)? {
                Step::Message(record) => {
                    let Some((data, deliveries)) = message(record.kind, record.body) else {
                        // A good record of a kind this version does not know: step over it.
                        let (segment, _) = split(head);
                        let next = position(segment, record.next);
                        index.head(priority).store(next, Ordering::SeqCst);
                        continue;
                    };
                    let kept = keep(Dequeued {
                        data,
                        priority,
                        deliveries,
                    })?;
                    let (segment, _) = split(head);
                    let next = position(segment, record.next);
                    index.head(priority).store(next, Ordering::SeqCst);
                    index.dequeued(priority).fetch_add(1, Ordering::SeqCst);
                    // A hint for an index rebuilt from the segments; losing it costs nothing
                    // but a redelivery after the index itself is lost.
                    if let Some(file) = self.segment(segments, priority, segment, false)? {
                        let _ = file.write_all_at(&[CONSUMED], record.at + 9);
                    }
                    return Ok(Some(kept));
                }
                Step::MoveTo(next, damage) => {
                    if let Some(damage) = damage {
                        (self.report)(damage)?;
                        index.dequeued(priority).fetch_add(1, Ordering::SeqCst);
                    }
                    let (segment, _) = split(head);
                    if split(next).0 > segment {
                        segments.open.remove(&(priority, false));
                        sys::remove_if_exists(&self.segment_path(priority, segment))?;
                    }
                    index.head(priority).store(next, Ordering::SeqCst);
                }
            }
        }
        Ok(None)
    }

    pub fn size(&self) -> Result<usize> {
        let locked = self.locked()?;
        let index = locked.index();
        Ok(index
            .marked()
            .map(|p| {
                let dequeued = index.dequeued(p).load(Ordering::SeqCst);
                index
                    .enqueued(p)
                    .load(Ordering::SeqCst)
                    .saturating_sub(dequeued) as usize
            })
            .sum())
    }

    /// Messages in dequeue order, without removing them (damaged records are skipped here and
    /// reported by the dequeue that reaches them).
    pub fn items(&self, limit: Option<usize>) -> Result<Vec<Vec<u8>>> {
        let limit = limit.unwrap_or(usize::MAX);
        let locked = self.locked()?;
        let index = locked.index();
        // A private cache, so the shared one keeps pointing at the head segments.
        let mut segments = Segments::default();
        let mut items = Vec::new();
        for priority in index.marked() {
            let mut at = index.head(priority).load(Ordering::SeqCst);
            let tail = index.tail(priority).load(Ordering::SeqCst);
            let tail_segment = split(tail).0;
            while at < tail && items.len() < limit {
                let (segment, offset) = split(at);
                let Some(file) = self.segment(&mut segments, priority, segment, false)? else {
                    at = position(segment + 1, 0).min(tail);
                    continue;
                };
                let path = self.segment_path(priority, segment);
                let end = if segment < tail_segment {
                    file.metadata().on(&path)?.len()
                } else {
                    split(tail).1
                };
                at = match frame::scan(file, SEGMENT_MAGIC, offset, end).on(&path)? {
                    Found::Record(record) if record.kind == KIND_END => position(segment + 1, 0),
                    Found::Record(record) => {
                        items.extend(message(record.kind, record.body).map(|(data, _)| data));
                        position(segment, record.next)
                    }
                    Found::Damaged { span, .. } => position(segment, span.end),
                    Found::End => position(segment + 1, 0).min(tail),
                };
            }
        }
        Ok(items)
    }

    pub fn flush(&self) -> Result<()> {
        let mut locked = self.locked()?;
        let State { index, segments } = &mut *locked.state;
        let index = index.as_ref().expect("validated when locked");
        segments.open.clear();
        let marked: Vec<usize> = index.marked().collect();
        for priority in marked {
            // Fresh segment numbers: descriptors other processes cache stay on the old ones.
            let (segment, _) = split(index.tail(priority).load(Ordering::SeqCst));
            let start = position(segment + 1, 0);
            index.tail(priority).store(start, Ordering::SeqCst);
            index.head(priority).store(start, Ordering::SeqCst);
            let enqueued = index.enqueued(priority).load(Ordering::SeqCst);
            index.dequeued(priority).store(enqueued, Ordering::SeqCst);
            index.unmark(priority);
        }
        sys::remove_files(&self.dir, &|name| parse_segment_name(name).is_none())
    }

    /// Rebuild the index from the segment files: each priority's head is its first record
    /// not marked consumed (or the first damage, so the dequeue that reaches it reports it),
    /// its tail the end of its last good record.
    fn rebuild(&self, locked: &mut Locked<'_>) -> Result<()> {
        let State { index, segments } = &mut *locked.state;
        let index = index.as_ref().expect("validated when locked");
        segments.open.clear();
        index.clear();
        let mut by_priority: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        for entry in fs::read_dir(&self.dir).on(&self.dir)? {
            let name = entry.on(&self.dir)?.file_name();
            if let Some((priority, segment)) = name.to_str().and_then(parse_segment_name) {
                by_priority.entry(priority).or_default().push(segment);
            }
        }
        let mut found = 0u64;
        for (&priority, numbers) in by_priority.iter_mut() {
            numbers.sort_unstable();
            let mut head = None;
            let mut tail = position(numbers[0], 0);
            let mut live = 0u64;
            for &segment in numbers.iter() {
                let path = self.segment_path(priority, segment);
                let file = match File::open(&path) {
                    Ok(file) => file,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e).on(&path),
                };
                let len = file.metadata().on(&path)?.len();
                let mut at = 0;
                loop {
                    match frame::scan(&file, SEGMENT_MAGIC, at, len).on(&path)? {
                        Found::Record(record) if record.kind == KIND_END => {
                            tail = position(segment + 1, 0);
                            break;
                        }
                        Found::Record(record) => {
                            if head.is_none() && record.mark != CONSUMED {
                                head = Some(position(segment, at));
                            }
                            live += u64::from(head.is_some());
                            at = record.next;
                            tail = position(segment, at);
                        }
                        Found::Damaged { span, .. } => {
                            head = head.or(Some(position(segment, span.start)));
                            at = span.end;
                        }
                        Found::End => break,
                    }
                }
            }
            let head = head.unwrap_or(tail).min(tail);
            index.head(priority).store(head, Ordering::SeqCst);
            index.tail(priority).store(tail, Ordering::SeqCst);
            index.enqueued(priority).store(live, Ordering::SeqCst);
            if head < tail {
                index.mark(priority);
            }
            found += live;
        }
        let pending_import = self.dir.join(IMPORT_PLAN).exists();
        index
            .importing()
            .store(u64::from(pending_import), Ordering::SeqCst);
        index.magic().store(MAGIC, Ordering::SeqCst);
        if !by_priority.is_empty() {
            (self.report)(Damage {
                path: self.index_path(),
                span: 0..0,
                bytes: Vec::new(),
                what: if found == 1 {
                    "queue index rebuilt from the segments (1 message)"
                } else {
                    "queue index rebuilt from the segments"
                },
            })?;
        }
        Ok(())
    }
}

fn parse_segment_name(name: &str) -> Option<(usize, u64)> {
    let stem = name.strip_suffix(".seg")?;
    let (priority, segment) = stem.split_once('-')?;
    if priority.len() != 4 || segment.len() != 8 {
        return None;
    }
    Some((
        usize::from_str_radix(priority, 16).ok()?,
        u64::from_str_radix(segment, 16).ok()?,
    ))
}

#[cfg(test)]
mod tests;
