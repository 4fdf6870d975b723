//! The task queue: per-priority segment files of appended records, with the head and tail of
//! every priority in a small memory-mapped index changed under `flock`.
//!
//! `queue/index` (created sparse, about 2 MiB, only touched pages use disk):
//!
//! ```text
//! 0      magic "HUEYRSQ2"
//! 4096   bitmap, 65536 bits: bit p set = priority p may hold messages
//! 12288  65536 x (head u64, tail u64, dequeued u64, enqueued u64)
//! ```
//!
//! `head` and `tail` are positions `segment << 32 | offset`; one aligned 8-byte store moves
//! either, so no reader or crash can see half an update. Messages of priority `p` are the
//! records from `head` to `tail` in `queue/{p:04x}-{segment:08x}.seg`. A record is
//! `len u32, check u32 (= len ^ CHECK), data`; a record with `len = u32::MAX` ends a segment.
//! A message put back by reliable delivery's recovery (inflight.rs) is
//! `len u32, check u32 (= len ^ CHECK_REDELIVERED), deliveries u32, data`, so the next
//! reliable dequeue counts on from there; every other reader just skips the count.
//! `enqueued - dequeued` is the priority's size.
//!
//! Enqueue writes its record at `tail` and only then moves `tail` past it; dequeue reads the
//! record at `head` and then moves `head`. Both cost one write or read and a few stores
//! whatever the depth: no directory is listed and no file is created per message (creating a
//! file costs a journal transaction on most filesystems; appending does not). A segment that
//! reaches `SEGMENT_BYTES` gets an end record and the tail moves to a new segment; the reader
//! deletes a segment when it meets its end record.
//!
//! Crash safety: a process killed while writing a record has not moved `tail`, so the torn
//! bytes are invisible and the next enqueue overwrites them. One killed after moving `tail`
//! has written a whole record. A process killed while reading has not moved `head`, so the
//! message stays queued. Segment numbers are never reused, so a stale cached descriptor never
//! points at live data under a new name.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::sys::{self, Context, DirLock, FileError, Result};

pub const MAX_PRIORITY: i64 = 0xffff;
const PRIORITIES: usize = MAX_PRIORITY as usize + 1;
const MAGIC: u64 = u64::from_le_bytes(*b"HUEYRSQ2");
const BITMAP_OFFSET: usize = 4096;
const SLOTS_OFFSET: usize = BITMAP_OFFSET + PRIORITIES / 8;
const SLOT_BYTES: usize = 32;
const INDEX_LEN: usize = SLOTS_OFFSET + PRIORITIES * SLOT_BYTES;
const WORDS: usize = PRIORITIES / 64;

/// A segment takes new records until it holds this many bytes.
const SEGMENT_BYTES: u64 = 8 << 20;
const HEADER: usize = 8;
const CHECK: u32 = 0x5bd1_e995;
/// Marks a record that starts with the message's earlier delivery count.
const CHECK_REDELIVERED: u32 = 0x2f6b_52a7;
const COUNT: usize = 4;
const END_OF_SEGMENT: u32 = u32::MAX;
/// Records up to this size are read with the header in a single `pread`.
const READ_AHEAD: usize = 4096;
/// The largest message: its record must fit the 32-bit offset of a position.
const MAX_MESSAGE: usize = u32::MAX as usize - 2 * HEADER;

fn position(segment: u64, offset: u64) -> u64 {
    (segment << 32) | offset
}

fn split(position: u64) -> (u64, u64) {
    (position >> 32, position & 0xffff_ffff)
}

fn header(len: u32) -> [u8; HEADER] {
    header_marked(len, CHECK)
}

fn header_marked(len: u32, mark: u32) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(&len.to_le_bytes());
    h[4..].copy_from_slice(&(len ^ mark).to_le_bytes());
    h
}

/// The record length in a header and whether a delivery count follows it, or None when the
/// bytes are not a header.
fn parse_header(h: &[u8]) -> Option<(u32, bool)> {
    let len = u32::from_le_bytes(h.get(..4)?.try_into().ok()?);
    let check = u32::from_le_bytes(h.get(4..8)?.try_into().ok()?);
    if check == len ^ CHECK {
        Some((len, false))
    } else if check == len ^ CHECK_REDELIVERED && len as usize >= COUNT {
        Some((len, true))
    } else {
        None
    }
}

/// The shared index mapped into this process.
struct Index {
    ptr: *mut u8,
}

// SAFETY: the mapping is only accessed through atomics, and lives as long as the Index.
unsafe impl Send for Index {}
unsafe impl Sync for Index {}

impl Index {
    fn map(file: &File, path: &Path) -> Result<Index> {
        // SAFETY: maps INDEX_LEN bytes of a file that was sized to at least that length.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                INDEX_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error()).on(path);
        }
        Ok(Index { ptr: ptr.cast() })
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset.is_multiple_of(8) && offset + 8 <= INDEX_LEN);
        // SAFETY: in bounds and 8-byte aligned (the mapping is page aligned).
        unsafe { &*(self.ptr.add(offset) as *const AtomicU64) }
    }

    fn magic(&self) -> &AtomicU64 {
        self.word(0)
    }

    fn bits(&self, word: usize) -> &AtomicU64 {
        self.word(BITMAP_OFFSET + word * 8)
    }

    fn slot(&self, priority: usize, field: usize) -> &AtomicU64 {
        self.word(SLOTS_OFFSET + priority * SLOT_BYTES + field * 8)
    }

    fn head(&self, priority: usize) -> &AtomicU64 {
        self.slot(priority, 0)
    }

    fn tail(&self, priority: usize) -> &AtomicU64 {
        self.slot(priority, 1)
    }

    fn dequeued(&self, priority: usize) -> &AtomicU64 {
        self.slot(priority, 2)
    }

    fn enqueued(&self, priority: usize) -> &AtomicU64 {
        self.slot(priority, 3)
    }

    fn mark(&self, priority: usize) {
        self.bits(priority / 64)
            .fetch_or(1 << (priority % 64), Ordering::SeqCst);
    }

    fn unmark(&self, priority: usize) {
        self.bits(priority / 64)
            .fetch_and(!(1 << (priority % 64)), Ordering::SeqCst);
    }

    /// Marked priorities, highest first.
    fn marked(&self) -> impl Iterator<Item = usize> + '_ {
        (0..WORDS).rev().flat_map(move |w| {
            let mut bits = self.bits(w).load(Ordering::SeqCst);
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let bit = 63 - bits.leading_zeros() as usize;
                bits &= !(1 << bit);
                Some(w * 64 + bit)
            })
        })
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region mapped in `Index::map`.
        unsafe {
            libc::munmap(self.ptr.cast(), INDEX_LEN);
        }
    }
}

/// A message read from the queue: its bytes, priority and earlier deliveries (0 unless it
/// was put back by reliable delivery's recovery).
pub struct Dequeued {
    pub data: Vec<u8>,
    pub priority: usize,
    pub deliveries: u32,
}

/// What the reader found at a priority's head.
enum Found {
    /// The message, its earlier deliveries and the position after its record.
    Message(Vec<u8>, u32, u64),
    /// The segment is finished (end record, or missing or corrupt): go on with the next one.
    NextSegment,
}

/// Open segment files of this process: the one being read and the one being written, per
/// priority. Replaced as the head and tail move on, so deleted segments are not held open.
#[derive(Default)]
struct Segments {
    open: HashMap<(usize, bool), (u64, File)>,
}

pub struct Queue {
    dir: PathBuf,
    lock: DirLock,
    index: Index,
    segments: Mutex<Segments>,
    fsync: bool,
}

impl Queue {
    pub fn open(dir: PathBuf, use_flock: bool, fsync: bool) -> Result<Queue> {
        fs::create_dir_all(&dir).on(&dir)?;
        let index_path = dir.join("index");
        let lock = DirLock::new(index_path.clone(), use_flock);
        let guard = lock.acquire()?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&index_path)
            .on(&index_path)?;
        if (file.metadata().on(&index_path)?.len() as usize) < INDEX_LEN {
            file.set_len(INDEX_LEN as u64).on(&index_path)?;
        }
        let index = Index::map(&file, &index_path)?;
        match index.magic().load(Ordering::SeqCst) {
            0 => index.magic().store(MAGIC, Ordering::SeqCst),
            MAGIC => {}
            _ => return Err(FileError::BadIndex(index_path)),
        }
        drop(guard);
        Ok(Queue {
            dir,
            lock,
            index,
            segments: Mutex::default(),
            fsync,
        })
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

    fn segment_path(&self, priority: usize, segment: u64) -> PathBuf {
        self.dir.join(format!("{priority:04x}-{segment:08x}.seg"))
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
        if segments
            .open
            .get(&key)
            .is_none_or(|(number, _)| *number != segment)
        {
            let path = self.segment_path(priority, segment);
            let opened = OpenOptions::new()
                .read(true)
                .write(write)
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
        if data.len() > MAX_MESSAGE - COUNT {
            return Err(FileError::TooLarge(data.len()));
        }
        let mut record = Vec::with_capacity(HEADER + COUNT + data.len());
        if deliveries == 0 {
            record.extend_from_slice(&header(data.len() as u32));
        } else {
            let len = (COUNT + data.len()) as u32;
            record.extend_from_slice(&header_marked(len, CHECK_REDELIVERED));
            record.extend_from_slice(&deliveries.to_le_bytes());
        }
        record.extend_from_slice(data);
        let record_len = record.len() as u64;

        let _guard = self.lock.acquire()?;
        let mut segments = self.segments.lock();
        self.index.mark(priority);
        let (mut segment, mut offset) = split(self.index.tail(priority).load(Ordering::SeqCst));
        if offset > 0 && offset + record_len > SEGMENT_BYTES {
            let file = self
                .segment(&mut segments, priority, segment, true)?
                .expect("created");
            let path = || self.segment_path(priority, segment);
            file.write_all_at(&header(END_OF_SEGMENT), offset)
                .on(&path())?;
            (segment, offset) = (segment + 1, 0);
        }
        let file = self
            .segment(&mut segments, priority, segment, true)?
            .expect("created");
        let path = self.segment_path(priority, segment);
        file.write_all_at(&record, offset).on(&path)?;
        if self.fsync {
            file.sync_data().on(&path)?;
        }
        // The commit point: one store makes the whole record visible.
        self.index
            .tail(priority)
            .store(position(segment, offset + record_len), Ordering::SeqCst);
        self.index.enqueued(priority).fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Read the record at `head` of `priority` (which is before its tail).
    fn read_at(&self, segments: &mut Segments, priority: usize, head: u64) -> Result<Found> {
        let (segment, offset) = split(head);
        let Some(file) = self.segment(segments, priority, segment, false)? else {
            return Ok(Found::NextSegment);
        };
        let path = || self.segment_path(priority, segment);
        let mut buf = vec![0u8; HEADER + READ_AHEAD];
        let n = read_full_at(file, &mut buf, offset).on(&path())?;
        let (len, counted) = match parse_header(&buf[..n]) {
            Some((END_OF_SEGMENT, false)) | None => return Ok(Found::NextSegment),
            Some((len, counted)) => (len as usize, counted),
        };
        buf.truncate(n.min(HEADER + len));
        if buf.len() < HEADER + len {
            buf.resize(HEADER + len, 0);
            let got = read_full_at(file, &mut buf[n..], offset + n as u64).on(&path())?;
            if n + got < HEADER + len {
                return Ok(Found::NextSegment);
            }
        }
        let mut deliveries = 0;
        if counted {
            deliveries = u32::from_le_bytes(buf[HEADER..HEADER + COUNT].try_into().expect("4"));
            buf.drain(..HEADER + COUNT);
        } else {
            buf.drain(..HEADER);
        }
        Ok(Found::Message(
            buf,
            deliveries,
            position(segment, offset + (HEADER + len) as u64),
        ))
    }

    /// Move `priority`'s head to the next segment, deleting the finished one.
    fn next_segment(&self, segments: &mut Segments, priority: usize, head: u64) -> Result<()> {
        let (segment, _) = split(head);
        let tail = self.index.tail(priority).load(Ordering::SeqCst);
        if split(tail).0 <= segment {
            // Only a corrupt segment ends before the tail's: drop what is left of it.
            self.index.head(priority).store(tail, Ordering::SeqCst);
            return Ok(());
        }
        segments.open.remove(&(priority, false));
        self.index
            .head(priority)
            .store(position(segment + 1, 0), Ordering::SeqCst);
        sys::remove_if_exists(&self.segment_path(priority, segment)).map(drop)
    }

    pub fn dequeue(&self) -> Result<Option<Vec<u8>>> {
        self.dequeue_with(|message| Ok(message.data))
    }

    /// Take the next message and hand it to `keep` before it leaves the queue: the head moves
    /// only once `keep` returned Ok, under the queue lock, so a process killed inside `keep`
    /// leaves the message queued. An error from `keep` leaves it queued too.
    pub fn dequeue_with<T>(&self, keep: impl FnOnce(Dequeued) -> Result<T>) -> Result<Option<T>> {
        let _guard = self.lock.acquire()?;
        let mut segments = self.segments.lock();
        while let Some(priority) = self.index.marked().next() {
            let head = self.index.head(priority).load(Ordering::SeqCst);
            if head >= self.index.tail(priority).load(Ordering::SeqCst) {
                self.index.unmark(priority);
                let enqueued = self.index.enqueued(priority).load(Ordering::SeqCst);
                self.index
                    .dequeued(priority)
                    .store(enqueued, Ordering::SeqCst);
                continue;
            }
            match self.read_at(&mut segments, priority, head)? {
                Found::Message(data, deliveries, next) => {
                    let kept = keep(Dequeued {
                        data,
                        priority,
                        deliveries,
                    })?;
                    self.index.head(priority).store(next, Ordering::SeqCst);
                    self.index.dequeued(priority).fetch_add(1, Ordering::SeqCst);
                    return Ok(Some(kept));
                }
                Found::NextSegment => self.next_segment(&mut segments, priority, head)?,
            }
        }
        Ok(None)
    }

    pub fn size(&self) -> Result<usize> {
        let _guard = self.lock.acquire()?;
        Ok(self
            .index
            .marked()
            .map(|p| {
                let dequeued = self.index.dequeued(p).load(Ordering::SeqCst);
                self.index
                    .enqueued(p)
                    .load(Ordering::SeqCst)
                    .saturating_sub(dequeued) as usize
            })
            .sum())
    }

    /// Messages in dequeue order, without removing them.
    pub fn items(&self, limit: Option<usize>) -> Result<Vec<Vec<u8>>> {
        let limit = limit.unwrap_or(usize::MAX);
        let _guard = self.lock.acquire()?;
        // A private cache, so the shared one keeps pointing at the head segments.
        let mut segments = Segments::default();
        let mut items = Vec::new();
        for priority in self.index.marked() {
            let mut at = self.index.head(priority).load(Ordering::SeqCst);
            let tail = self.index.tail(priority).load(Ordering::SeqCst);
            while at < tail && items.len() < limit {
                match self.read_at(&mut segments, priority, at)? {
                    Found::Message(data, _, next) => {
                        items.push(data);
                        at = next;
                    }
                    Found::NextSegment => at = position(split(at).0 + 1, 0),
                }
            }
        }
        Ok(items)
    }

    pub fn flush(&self) -> Result<()> {
        let _guard = self.lock.acquire()?;
        let mut segments = self.segments.lock();
        segments.open.clear();
        let marked: Vec<usize> = self.index.marked().collect();
        for priority in marked {
            // Fresh segment numbers: descriptors other processes cache stay on the old ones.
            let (segment, _) = split(self.index.tail(priority).load(Ordering::SeqCst));
            let start = position(segment + 1, 0);
            self.index.tail(priority).store(start, Ordering::SeqCst);
            self.index.head(priority).store(start, Ordering::SeqCst);
            let enqueued = self.index.enqueued(priority).load(Ordering::SeqCst);
            self.index
                .dequeued(priority)
                .store(enqueued, Ordering::SeqCst);
            self.index.unmark(priority);
        }
        sys::remove_files(&self.dir, &|name| name == "index")
    }
}

/// `pread` until `buf` is full or the file ends; the number of bytes read.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_queue(name: &str) -> (PathBuf, Queue) {
        let dir = std::env::temp_dir().join(format!("huey-rs-queue-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let queue = Queue::open(dir.clone(), true, false).unwrap();
        (dir, queue)
    }

    #[test]
    fn headers_reject_garbage() {
        assert_eq!(parse_header(&header(5)), Some((5, false)));
        assert_eq!(
            parse_header(&header_marked(9, CHECK_REDELIVERED)),
            Some((9, true))
        );
        assert_eq!(parse_header(&header_marked(3, CHECK_REDELIVERED)), None);
        assert_eq!(parse_header(&[0u8; 8]), None);
        assert_eq!(parse_header(&[1, 2, 3]), None);
    }

    #[test]
    fn segments_roll_over_and_drained_ones_are_deleted() {
        let (dir, queue) = temp_queue("roll");
        let big = vec![7u8; (SEGMENT_BYTES / 3) as usize];
        for i in 0..7u8 {
            let mut data = big.clone();
            data[0] = i;
            queue.enqueue(&data, 1).unwrap();
        }
        queue.enqueue(b"small", 0).unwrap();
        assert_eq!(queue.size().unwrap(), 8);
        let segs = |dir: &Path| fs::read_dir(dir).unwrap().count() - 1;
        assert_eq!(segs(&dir), 5); // two records a segment: four for priority 1, one for 0
        assert_eq!(queue.items(Some(2)).unwrap().len(), 2);
        for i in 0..7u8 {
            assert_eq!(queue.dequeue().unwrap().unwrap()[0], i);
        }
        assert_eq!(queue.dequeue().unwrap().unwrap(), b"small");
        assert_eq!(queue.dequeue().unwrap(), None);
        assert_eq!(segs(&dir), 2); // the current tail segments
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn redelivered_records_carry_their_count_and_plain_readers_skip_it() {
        let (dir, queue) = temp_queue("count");
        queue.enqueue_delivered(b"again", 3, 2).unwrap();
        queue.enqueue(b"first", 3).unwrap();
        assert_eq!(
            queue.items(None).unwrap(),
            vec![b"again".to_vec(), b"first".to_vec()]
        );
        let got = queue
            .dequeue_with(|m| Ok((m.data, m.priority, m.deliveries)))
            .unwrap();
        assert_eq!(got, Some((b"again".to_vec(), 3, 2)));
        // A failing `keep` leaves the message queued.
        let failed = queue.dequeue_with(|_| -> Result<()> { Err(FileError::Levels(-1)) });
        assert!(failed.is_err());
        assert_eq!(queue.size().unwrap(), 1);
        assert_eq!(queue.dequeue().unwrap().unwrap(), b"first");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_record_past_the_tail_is_overwritten() {
        let (dir, queue) = temp_queue("torn");
        queue.enqueue(b"one", 0).unwrap();
        // What a writer killed mid-record leaves: bytes past the tail.
        let seg = queue.segment_path(0, 0);
        let file = OpenOptions::new().write(true).open(&seg).unwrap();
        file.write_all_at(&header(1000), 11).unwrap();
        assert_eq!(queue.items(None).unwrap(), vec![b"one".to_vec()]);
        queue.enqueue(b"two", 0).unwrap();
        assert_eq!(queue.dequeue().unwrap().unwrap(), b"one");
        assert_eq!(queue.dequeue().unwrap().unwrap(), b"two");
        assert_eq!(queue.dequeue().unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
