//! Taking huey 3.5.4's queued messages into the queue exactly once (legacy.rs claims them).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::{encode_message, position, split, Queue, State, MAX_PRIORITY};
use crate::storage::file::frame::{self, Damage};
use crate::storage::file::index::Index;
use crate::storage::file::sys::{self, Context, Result};

/// The plan of an import being applied (see `Queue::import`), and its records' magic and
/// kinds.
pub const IMPORT_PLAN: &str = "import";
const PLAN_MAGIC: &[u8; 4] = b"hrp3";
const PLAN_CLAIM: u8 = 1;
const PLAN_PRIORITY: u8 = 2;

impl Queue {
    /// Append `messages` (priority, bytes), claimed from huey 3.5.4's queue files under
    /// `claim`, exactly once even if this process is killed part way: the whole import is
    /// first written as a plan (`queue.d/import`, renamed into place) holding each priority's
    /// tail and count before it, then the index's `importing` word is set. From then on the
    /// next process to lock the queue (this one, or any other if this one dies) applies the
    /// plan before anything else can move a tail: a priority whose tail still equals the
    /// planned one gets its records, one that moved already has them. The claimed files are
    /// removed before the plan, and the plan before the word is cleared.
    pub fn import(&self, messages: &[(usize, Vec<u8>)], claim: &Path) -> Result<()> {
        let mut locked = self.locked()?;
        self.plan_import(locked.index(), messages, claim)?;
        self.finish_import(&mut locked.state)
    }

    /// What a process killed between planning an import and applying it leaves behind.
    #[cfg(test)]
    pub(in crate::storage::file) fn import_killed_after_planning(
        &self,
        messages: &[(usize, Vec<u8>)],
        claim: &Path,
    ) -> Result<()> {
        let locked = self.locked()?;
        self.plan_import(locked.index(), messages, claim)
    }

    /// The first half of `import`: write its plan and set the `importing` word.
    fn plan_import(
        &self,
        index: &Index,
        messages: &[(usize, Vec<u8>)],
        claim: &Path,
    ) -> Result<()> {
        let mut by_priority: BTreeMap<usize, (Vec<u8>, u64)> = BTreeMap::new();
        for (priority, data) in messages {
            let (records, count) = by_priority.entry(*priority).or_default();
            encode_message(data, 0, records);
            *count += 1;
        }
        let mut plan = Vec::new();
        let claim_bytes = claim.as_os_str().as_encoded_bytes();
        frame::encode(PLAN_MAGIC, PLAN_CLAIM, &[claim_bytes], &mut plan);
        for (priority, (records, count)) in &by_priority {
            let tail = index.tail(*priority).load(Ordering::SeqCst);
            let enqueued = index.enqueued(*priority).load(Ordering::SeqCst);
            let head = [
                (*priority as u64).to_le_bytes(),
                tail.to_le_bytes(),
                enqueued.to_le_bytes(),
                count.to_le_bytes(),
            ]
            .concat();
            frame::encode(PLAN_MAGIC, PLAN_PRIORITY, &[&head, records], &mut plan);
        }
        let path = self.dir.join(IMPORT_PLAN);
        let tmp = self.dir.join("import.new");
        let written = fs::write(&tmp, &plan).and_then(|_| {
            if self.fsync {
                File::open(&tmp)?.sync_all()?;
            }
            fs::rename(&tmp, &path)
        });
        written.on(&path)?;
        index.importing().store(1, Ordering::SeqCst);
        Ok(())
    }

    /// Finish an import that a killed process left half applied (locking does it).
    pub fn settle_import(&self) -> Result<()> {
        self.locked().map(drop)
    }

    /// Apply the plan of an import whose `importing` word is set (see `import`).
    pub(super) fn finish_import(&self, state: &mut State) -> Result<()> {
        let path = self.dir.join(IMPORT_PLAN);
        let plan = sys::read_if_exists(&path)?.unwrap_or_default();
        let mut at = 0;
        let mut claim = None;
        let mut parts = Vec::new();
        while at < plan.len() {
            match frame::parse(PLAN_MAGIC, &plan[at..]) {
                frame::Parsed::Record { kind, body, .. } => {
                    let body = &plan[at + body.start..at + body.end];
                    if kind == PLAN_CLAIM {
                        claim = Some(PathBuf::from(String::from_utf8_lossy(body).into_owned()));
                    } else if kind == PLAN_PRIORITY && body.len() >= 32 {
                        let word = |i: usize| {
                            u64::from_le_bytes(body[i * 8..i * 8 + 8].try_into().expect("8"))
                        };
                        parts.push((word(0) as usize, word(1), word(2), word(3), &body[32..]));
                    }
                    at += frame::record_len(body.len()) as usize;
                }
                _ => {
                    // Written under a temporary name and renamed: only tampering gets here.
                    (self.report)(Damage {
                        path: path.clone(),
                        span: at as u64..plan.len() as u64,
                        bytes: plan[at..].to_vec(),
                        what: "damaged legacy import plan (its rest is not imported)",
                    })?;
                    break;
                }
            }
        }
        for (priority, tail, enqueued, count, records) in parts {
            let priority = priority.min(MAX_PRIORITY as usize);
            let index = state.index.as_ref().expect("validated when locked");
            if index.tail(priority).load(Ordering::SeqCst) == tail {
                let (segment, offset) = split(tail);
                let segment_path = self.segment_path(priority, segment);
                let file = self.segment(&mut state.segments, priority, segment, true)?;
                let file = file.expect("created");
                file.write_all_at(records, offset).on(&segment_path)?;
                if self.fsync {
                    file.sync_data().on(&segment_path)?;
                }
                index.mark(priority);
                let end = position(segment, offset + records.len() as u64);
                index.tail(priority).store(end, Ordering::SeqCst);
            }
            let index = state.index.as_ref().expect("validated when locked");
            index
                .enqueued(priority)
                .store(enqueued + count, Ordering::SeqCst);
        }
        if let Some(claim) = claim {
            sys::remove_files(&claim, &|name| {
                !crate::storage::file::legacy::is_queue_name(name)
            })?;
            let _ = fs::remove_dir(&claim);
        }
        sys::remove_if_exists(&path)?;
        let index = state.index.as_ref().expect("validated when locked");
        index.importing().store(0, Ordering::SeqCst);
        Ok(())
    }
}
