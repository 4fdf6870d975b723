//! Taking over a directory written by huey 3.5.4's FileStorage, and keeping huey 3.5.4 out
//! of ours.
//!
//! huey 3.5.4 keeps one file per message: `queue/{0xffff - priority:04x}-{ms:012x}[.NNN]`
//! (name order is dequeue order) and `schedule/{ms:012x}[.NNN]` (`ms` of the eta read as
//! local time), serialised by `flock` on `.lock`. Its results and counters already sit where
//! and as ours do (`results/`, `counters/`), so they need no move.
//!
//! huey-rs keeps its queue and schedule in `queue.d/` and `schedule.d/` and puts a small text
//! file at `queue` and at `schedule`, so a huey 3.5.4 process pointed at the directory fails
//! loudly (`NotADirectoryError`) on every enqueue, dequeue and schedule read instead of
//! reading our files as pickles or leaving tasks where we never look.
//!
//! Opening a directory that holds huey 3.5.4's queue or schedule, under its `.lock`:
//! 1. claim: `queue/` and `schedule/` are renamed into `import/{id}/` (huey 3.5.4 can no
//!    longer touch them) and the marker files take their place;
//! 2. the claimed schedule goes into the journal as one record tagged with `id`, which the
//!    journal applies only once, then its files are removed;
//! 3. the claimed queue goes in through `Queue::import` (a plan, then an index word that makes
//!    every process finish it before touching a tail), which removes its files;
//! 4. the emptied claim is removed.
//!
//! A process killed at any step leaves the claim in `import/`, and the next open carries on
//! from it; two processes opening at once take turns on `.lock`, and the second finds
//! nothing left to do.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::journal::ScheduleJournal;
use super::queue::{Queue, MAX_PRIORITY};
use super::sys::{self, Context, DirLock, Result, TmpDir};

const MARKER: &str = "This directory is a huey-rs FileStorage. Its queue is in queue.d/ and its \
schedule in schedule.d/; huey 3.5.4 cannot read them, and this file keeps it from trying.\n\
Run only huey-rs consumers on this directory (see huey-rs's README, \"Migrating\").\n";

/// Whether `name` is one of huey 3.5.4's queue files: `{4 hex}-{12 hex}[.NNN]`.
pub fn is_queue_name(name: &str) -> bool {
    let (stem, suffix) = split_suffix(name);
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    suffix_ok(suffix)
        && stem.len() == 17
        && stem.as_bytes()[4] == b'-'
        && hex(&stem[..4])
        && hex(&stem[5..])
}

/// Whether `name` is one of huey 3.5.4's schedule files: `{12 hex}[.NNN]`.
pub fn is_schedule_name(name: &str) -> bool {
    let (stem, suffix) = split_suffix(name);
    suffix_ok(suffix) && stem.len() == 12 && stem.bytes().all(|b| b.is_ascii_hexdigit())
}

fn split_suffix(name: &str) -> (&str, Option<&str>) {
    match name.split_once('.') {
        Some((stem, suffix)) => (stem, Some(suffix)),
        None => (name, None),
    }
}

fn suffix_ok(suffix: Option<&str>) -> bool {
    suffix.is_none_or(|s| s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit()))
}

/// Claim and import whatever huey 3.5.4 left in `root`, and put the marker files in place.
pub fn take_over(
    root: &Path,
    queue: &Queue,
    journal: &ScheduleJournal,
    tmp: &TmpDir,
    use_flock: bool,
) -> Result<()> {
    let imports = root.join("import");
    let legacy = [root.join("queue"), root.join("schedule")];
    let has_legacy = legacy.iter().any(|p| p.is_dir()) || imports.exists();
    let lock = DirLock::new(root.join(".lock"), use_flock);
    let _guard = if has_legacy {
        Some(lock.acquire()?)
    } else {
        None
    };
    let legacy_dirs: Vec<&PathBuf> = legacy.iter().filter(|p| p.is_dir()).collect();
    if !legacy_dirs.is_empty() {
        let claim = imports.join(format!("{:016x}", import_id()));
        fs::create_dir_all(&claim).on(&claim)?;
        for dir in legacy_dirs {
            let name = dir.file_name().expect("queue or schedule");
            fs::rename(dir, claim.join(name)).on(dir)?;
        }
    }
    for path in &legacy {
        if !path.exists() {
            let written = tmp.write(&[MARKER.as_bytes()])?;
            fs::rename(&written, path).on(path)?;
        }
    }
    for claim in sorted_names(&imports)? {
        let Some(id) = u64::from_str_radix(&claim, 16).ok() else {
            continue;
        };
        import_claim(&imports.join(&claim), id, queue, journal)?;
    }
    let _ = fs::remove_dir(&imports);
    Ok(())
}

fn import_claim(claim: &Path, id: u64, queue: &Queue, journal: &ScheduleJournal) -> Result<()> {
    let schedule_dir = claim.join("schedule");
    let mut entries = Vec::new();
    let mut schedule_files = Vec::new();
    for name in sorted_names(&schedule_dir)? {
        if !is_schedule_name(&name) {
            continue;
        }
        let path = schedule_dir.join(&name);
        let Some(data) = sys::read_if_exists(&path)? else {
            continue;
        };
        let millis = i64::from_str_radix(&name[..12], 16).expect("checked hex");
        entries.push((naive_local_micros(millis), data));
        schedule_files.push(path);
    }
    if !entries.is_empty() {
        journal.import(id, &entries)?;
    }
    for path in schedule_files {
        sys::remove_if_exists(&path)?;
    }
    // A process killed while applying this claim's import plan left its files in place:
    // finish that plan (which removes them) before reading what is left, or they would be
    // imported twice.
    queue.settle_import()?;
    let queue_dir = claim.join("queue");
    let mut messages = Vec::new();
    for name in sorted_names(&queue_dir)? {
        if !is_queue_name(&name) {
            continue;
        }
        let inverted = usize::from_str_radix(&name[..4], 16).expect("checked hex");
        let priority = (MAX_PRIORITY as usize).saturating_sub(inverted);
        if let Some(data) = sys::read_if_exists(&queue_dir.join(&name))? {
            messages.push((priority, data));
        }
    }
    if !messages.is_empty() {
        queue.import(&messages, &queue_dir)?;
    }
    // Anything else huey 3.5.4 never wrote (its own `.tmp` leftovers included) stays here.
    for dir in [&schedule_dir, &queue_dir, &claim.to_path_buf()] {
        let _ = fs::remove_dir(dir);
    }
    Ok(())
}

/// File names in `dir`, sorted (huey 3.5.4's order); none when it does not exist.
fn sorted_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).on(dir),
    };
    let mut names = Vec::new();
    for entry in entries {
        if let Some(name) = entry.on(dir)?.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

fn import_id() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (now.as_nanos() as u64) ^ (u64::from(std::process::id()) << 40)
}

/// The naive local datetime of `millis` since the epoch, as microseconds of its fields since
/// 1970-01-01 (how the schedule orders entries); huey 3.5.4 named the file after
/// `time.mktime` of the eta, so this gives the eta back.
fn naive_local_micros(millis: i64) -> i64 {
    let secs = millis.div_euclid(1000);
    let offset = sys::local_utc_offset(secs);
    (secs + offset) * 1_000_000 + millis.rem_euclid(1000) * 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_names() {
        assert!(is_queue_name("fffe-018f2a3b4c5d"));
        assert!(is_queue_name("0000-018f2a3b4c5d.001"));
        assert!(!is_queue_name("0000-018f2a3b4c5d.tmp"));
        assert!(!is_queue_name("0000-00000000.seg"));
        assert!(!is_queue_name("index"));
        assert!(is_schedule_name("018f2a3b4c5d"));
        assert!(is_schedule_name("018f2a3b4c5d.012"));
        assert!(!is_schedule_name("journal"));
        assert!(!is_schedule_name("018f2a3b4c5d.tmp"));
    }

    #[test]
    fn a_claim_whose_import_was_cut_short_is_imported_once() {
        let scratch = crate::storage::file::sys::Scratch::new("legacy-cut");
        let root = scratch.0.clone();
        let report: crate::storage::file::frame::Report = std::sync::Arc::new(|_| Ok(()));
        let queue = Queue::open(root.join("queue.d"), false, true, report.clone()).unwrap();
        let tmp = TmpDir::new(root.join("tmp"), false);
        fs::create_dir_all(root.join("tmp")).unwrap();
        let journal =
            ScheduleJournal::open(root.join("schedule.d"), tmp.clone(), true, report).unwrap();
        let claim = root
            .join("import")
            .join(format!("{:016x}", 7))
            .join("queue");
        fs::create_dir_all(&claim).unwrap();
        let mut messages = Vec::new();
        for i in 0..3u8 {
            fs::write(claim.join(format!("fffe-00000000000{i}")), [b'm', i]).unwrap();
            messages.push((1, vec![b'm', i]));
        }
        // A first opener planned the import and was killed before applying it.
        queue
            .import_killed_after_planning(&messages, &claim)
            .unwrap();
        // The next opener finds the claim with its files still there.
        take_over(&root, &queue, &journal, &tmp, true).unwrap();
        let mut got = Vec::new();
        while let Some(data) = queue.dequeue().unwrap() {
            got.push(data);
        }
        assert_eq!(
            got,
            messages.into_iter().map(|(_, m)| m).collect::<Vec<_>>()
        );
        assert!(!root.join("import").exists());
    }
}
