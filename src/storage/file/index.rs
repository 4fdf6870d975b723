//! `queue.d/index`: the head and tail of every priority, memory-mapped and changed under the
//! queue lock. It is a cache of what the segments hold: when it is missing, zeroed,
//! truncated or replaced, `Queue` rebuilds it from the segment files.
//!
//! ```text
//! 0      magic "HUEYRSQ3"
//! 8      importing: nonzero while queue.d/import holds a legacy import being applied
//! 4096   bitmap, 65536 bits: bit p set = priority p may hold messages
//! 12288  65536 x (head u64, tail u64, dequeued u64, enqueued u64)
//! ```
//!
//! `head` and `tail` are positions `segment << 32 | offset`; one aligned 8-byte store moves
//! either, so no reader or crash sees half an update.
//!
//! The file is written in full (zeros) under a temporary name before it is renamed into
//! place and mapped, so every mapped page has disk space behind it: a full disk fails the
//! creation with ENOSPC instead of killing a process with SIGBUS on its first store.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(unix)]
use std::os::unix::fs::MetadataExt;

use super::sys::{Context, Result};
use crate::ffi::SharedWords;

pub use super::sys::MAX_PRIORITY;
pub const PRIORITIES: usize = MAX_PRIORITY as usize + 1;
pub const MAGIC: u64 = u64::from_le_bytes(*b"HUEYRSQ3");
const IMPORTING_OFFSET: usize = 8;
const BITMAP_OFFSET: usize = 4096;
const SLOTS_OFFSET: usize = BITMAP_OFFSET + PRIORITIES / 8;
const SLOT_BYTES: usize = 32;
pub const INDEX_LEN: usize = SLOTS_OFFSET + PRIORITIES * SLOT_BYTES;
const WORDS: usize = PRIORITIES / 64;

pub fn position(segment: u64, offset: u64) -> u64 {
    (segment << 32) | offset
}

pub fn split(position: u64) -> (u64, u64) {
    (position >> 32, position & 0xffff_ffff)
}

/// The shared index mapped into this process, with the file it maps.
pub struct Index {
    words: SharedWords,
    file: File,
}

impl Index {
    /// Write a zeroed index of full length under `tmp` and rename it to `path`.
    pub fn create(path: &Path, tmp: &Path, fsync: bool) -> Result<()> {
        let written = (|| {
            let mut file = File::create(tmp)?;
            let zeros = vec![0u8; 1 << 20];
            let mut left = INDEX_LEN;
            while left > 0 {
                let n = left.min(zeros.len());
                file.write_all(&zeros[..n])?;
                left -= n;
            }
            if fsync {
                file.sync_all()?;
            }
            fs::rename(tmp, path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(tmp);
        }
        written.on(path)
    }

    /// Map the index at `path`; None when it is missing or shorter than a whole index.
    pub fn open(path: &Path) -> Result<Option<Index>> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).on(path),
        };
        let meta = file.metadata().on(path)?;
        if (meta.len() as usize) < INDEX_LEN {
            return Ok(None);
        }
        // Every block of the file was written when it was created (see `create`).
        let words = SharedWords::map(&file, INDEX_LEN).on(path)?;
        Ok(Some(Index { words, file }))
    }

    /// Whether the mapped file is still a whole index in place: not truncated, nor unlinked
    /// or renamed over (its link count drops to 0). One `fstat`, under the lock before every
    /// use, so no access touches a page past the end of a truncated file.
    pub fn still_valid(&self) -> bool {
        self.file
            .metadata()
            .is_ok_and(|m| m.nlink() > 0 && m.len() as usize >= INDEX_LEN)
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        self.words.word(offset)
    }

    pub fn magic(&self) -> &AtomicU64 {
        self.word(0)
    }

    pub fn importing(&self) -> &AtomicU64 {
        self.word(IMPORTING_OFFSET)
    }

    fn bits(&self, word: usize) -> &AtomicU64 {
        self.word(BITMAP_OFFSET + word * 8)
    }

    fn slot(&self, priority: usize, field: usize) -> &AtomicU64 {
        self.word(SLOTS_OFFSET + priority * SLOT_BYTES + field * 8)
    }

    pub fn head(&self, priority: usize) -> &AtomicU64 {
        self.slot(priority, 0)
    }

    pub fn tail(&self, priority: usize) -> &AtomicU64 {
        self.slot(priority, 1)
    }

    pub fn dequeued(&self, priority: usize) -> &AtomicU64 {
        self.slot(priority, 2)
    }

    pub fn enqueued(&self, priority: usize) -> &AtomicU64 {
        self.slot(priority, 3)
    }

    pub fn mark(&self, priority: usize) {
        self.bits(priority / 64)
            .fetch_or(1 << (priority % 64), Ordering::SeqCst);
    }

    pub fn unmark(&self, priority: usize) {
        self.bits(priority / 64)
            .fetch_and(!(1 << (priority % 64)), Ordering::SeqCst);
    }

    /// Marked priorities, highest first.
    pub fn marked(&self) -> impl Iterator<Item = usize> + '_ {
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

    /// Forget every priority's positions and counts (before a rebuild).
    pub fn clear(&self) {
        for offset in (8..INDEX_LEN).step_by(8) {
            self.word(offset).store(0, Ordering::SeqCst);
        }
    }
}
