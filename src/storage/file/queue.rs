//! The task queue: one file per message, named by priority and a per-priority sequence
//! number, with the head and tail of every priority in a small memory-mapped index.
//!
//! `queue/index` (created sparse, about 1 MiB, only touched pages use disk):
//!
//! ```text
//! 0      magic "HUEYRSQ1"
//! 4096   bitmap, 65536 bits: bit p set = priority p may hold messages
//! 12288  65536 x (head u64, tail u64): messages of priority p are seqs head..tail
//! ```
//!
//! A message of priority `p` and sequence `s` lives in `queue/{p:04x}-{s:016x}`. Every change
//! of the index happens under `flock` on the index file, so enqueue and dequeue cost a few
//! syscalls whatever the depth: no directory is listed and nothing is sorted.
//!
//! Crash safety, step by step:
//! - enqueue writes the message to `tmp/`, then under the lock sets the priority's bit, links
//!   the file to `{p}-{tail}` and bumps `tail`. Killed before the link: nothing is visible.
//!   Killed after the link but before the bump: the next enqueue of that priority (or the
//!   next open of the storage) finds the name taken and moves `tail` past it, so the message
//!   is kept, not overwritten.
//! - dequeue under the lock reads `{p}-{head}`, unlinks it, then bumps `head`. Killed between
//!   the unlink and the bump: the next dequeue finds the file gone and skips it. A bit set on
//!   an empty priority is cleared by the next dequeue.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::sys::{self, Context, DirLock, FileError, Result, TmpDir};

pub const MAX_PRIORITY: i64 = 0xffff;
const PRIORITIES: usize = MAX_PRIORITY as usize + 1;
const MAGIC: u64 = u64::from_le_bytes(*b"HUEYRSQ1");
const BITMAP_OFFSET: usize = 4096;
const COUNTERS_OFFSET: usize = BITMAP_OFFSET + PRIORITIES / 8;
const INDEX_LEN: usize = COUNTERS_OFFSET + PRIORITIES * 16;
const WORDS: usize = PRIORITIES / 64;

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

    fn head(&self, priority: usize) -> &AtomicU64 {
        self.word(COUNTERS_OFFSET + priority * 16)
    }

    fn tail(&self, priority: usize) -> &AtomicU64 {
        self.word(COUNTERS_OFFSET + priority * 16 + 8)
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

pub struct Queue {
    dir: PathBuf,
    lock: DirLock,
    index: Index,
    tmp: TmpDir,
}

impl Queue {
    pub fn open(dir: PathBuf, tmp: TmpDir, use_flock: bool) -> Result<Queue> {
        fs::create_dir_all(&dir).on(&dir)?;
        let index_path = dir.join("index");
        let lock = DirLock::new(index_path.clone(), use_flock);
        let _guard = lock.acquire()?;
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
        let queue = Queue {
            dir,
            lock: DirLock::new(index_path, use_flock),
            index,
            tmp,
        };
        queue.recover()?;
        drop(_guard);
        Ok(queue)
    }

    fn message_path(&self, priority: usize, seq: u64) -> PathBuf {
        self.dir.join(format!("{priority:04x}-{seq:016x}"))
    }

    /// Adopt messages linked by a process killed before it bumped the tail.
    fn recover(&self) -> Result<()> {
        let marked: Vec<usize> = self.index.marked().collect();
        for priority in marked {
            let tail = self.index.tail(priority);
            while self
                .message_path(priority, tail.load(Ordering::SeqCst))
                .exists()
            {
                tail.fetch_add(1, Ordering::SeqCst);
            }
        }
        Ok(())
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

    pub fn enqueue(&self, data: &[u8], priority: i64) -> Result<()> {
        let priority = Self::check_priority(priority)?;
        let tmp = self.tmp.write(&[data])?;
        let linked = self.link_at_tail(&tmp, priority);
        let _ = fs::remove_file(&tmp);
        linked
    }

    fn link_at_tail(&self, tmp: &Path, priority: usize) -> Result<()> {
        let _guard = self.lock.acquire()?;
        self.index.mark(priority);
        let tail = self.index.tail(priority);
        loop {
            let seq = tail.load(Ordering::SeqCst);
            let target = self.message_path(priority, seq);
            match fs::hard_link(tmp, &target) {
                Ok(()) => break,
                // Left by a process killed before it bumped the tail: keep it, move on.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    tail.store(seq + 1, Ordering::SeqCst);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && !self.dir.exists() => {
                    fs::create_dir_all(&self.dir).on(&self.dir)?;
                }
                Err(e) => return Err(e).on(&target),
            }
        }
        tail.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    pub fn dequeue(&self) -> Result<Option<Vec<u8>>> {
        let _guard = self.lock.acquire()?;
        while let Some(priority) = self.index.marked().next() {
            let head = self.index.head(priority);
            let seq = head.load(Ordering::SeqCst);
            if seq >= self.index.tail(priority).load(Ordering::SeqCst) {
                self.index.unmark(priority);
                continue;
            }
            let path = self.message_path(priority, seq);
            let data = sys::read_if_exists(&path)?;
            if data.is_some() {
                sys::remove_if_exists(&path)?;
            }
            head.store(seq + 1, Ordering::SeqCst);
            if data.is_some() {
                return Ok(data);
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
                let head = self.index.head(p).load(Ordering::SeqCst);
                self.index
                    .tail(p)
                    .load(Ordering::SeqCst)
                    .saturating_sub(head) as usize
            })
            .sum())
    }

    /// Messages in dequeue order, without removing them.
    pub fn items(&self, limit: Option<usize>) -> Result<Vec<Vec<u8>>> {
        let limit = limit.unwrap_or(usize::MAX);
        let _guard = self.lock.acquire()?;
        let mut items = Vec::new();
        for priority in self.index.marked() {
            let head = self.index.head(priority).load(Ordering::SeqCst);
            let tail = self.index.tail(priority).load(Ordering::SeqCst);
            for seq in head..tail {
                if items.len() >= limit {
                    return Ok(items);
                }
                if let Some(data) = sys::read_if_exists(&self.message_path(priority, seq))? {
                    items.push(data);
                }
            }
        }
        Ok(items)
    }

    pub fn flush(&self) -> Result<()> {
        let _guard = self.lock.acquire()?;
        let marked: Vec<usize> = self.index.marked().collect();
        for priority in marked {
            let tail = self.index.tail(priority).load(Ordering::SeqCst);
            self.index.head(priority).store(tail, Ordering::SeqCst);
            self.index.unmark(priority);
        }
        sys::remove_files(&self.dir, &|name| name == "index")
    }
}
