//! Reliable delivery's in-flight area: one file per message being run, in `inflight/`.
//!
//! ```text
//! inflight/.lock                flock serialising lease renewal and recovery
//! inflight/{token}              a delivered message, mtime = lease expiry (set with utimensat)
//! inflight/{token}.recovering   claimed by a recovery that has not finished putting it back
//! ```
//!
//! An entry file holds `b"HRIF" + version 1 + priority u32 LE + deliveries u32 LE +
//! consumer length u32 LE + consumer (UTF-8) + the message bytes`. Its lease is its mtime, so
//! a renewal is one `utimensat` and writes no data.
//!
//! Crash safety, step by step (worst case a message is both queued and in flight, so it runs
//! twice; never is it in neither place):
//!
//! - take: under the queue lock, the head message is written to `tmp/`, its mtime set, and
//!   linked as `inflight/{token}`; only then does the queue head move past it.
//! - ack: unlink `inflight/{token}`; gone already means a recovery claimed it (False).
//! - recover (under `.lock`): an expired entry is renamed to `{token}.recovering` (so a late
//!   ack or renewal sees it gone), put back in the queue with its delivery count, and only
//!   then unlinked. A `.recovering` file met under the lock belongs to a recovery that died,
//!   and is put back again.
//! - renew (under `.lock`, so it cannot slip between a recovery's expiry check and its claim
//!   and report a lease that is about to be lost).

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::queue::{Dequeued, Queue, MAX_PRIORITY};
use super::sys::{self, Context, DirLock, DirLockGuard, FileError, Result, TmpDir};

const MAGIC: &[u8; 5] = b"HRIF\x01";
const HEADER: usize = MAGIC.len() + 12;
const RECOVERING: &str = ".recovering";

/// One in-flight message.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub token: String,
    pub consumer: String,
    pub deliveries: u32,
    pub lease_until: f64,
    pub priority: u32,
    pub data: Vec<u8>,
}

/// What a recovery did: messages put back in the queue, and those delivered
/// `max_deliveries` times, set aside as `(data, deliveries, dead letter id)`.
#[derive(Debug, Default, PartialEq)]
pub struct Recovered {
    pub requeued: usize,
    pub dead: Vec<(Vec<u8>, u32, String)>,
    /// Entries that could not be recovered, set aside as `(reason, dead letter id)`.
    pub bad: Vec<(String, String)>,
}

pub struct Inflight {
    dir: PathBuf,
    lock: DirLock,
    tmp: TmpDir,
}

/// Whether `token` is usable as a file name in `inflight/` (uuid hex is what huey passes).
pub fn is_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 128
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn encode(priority: usize, deliveries: u32, consumer: &str) -> Vec<u8> {
    let mut header = Vec::with_capacity(HEADER + consumer.len());
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&(priority as u32).to_le_bytes());
    header.extend_from_slice(&deliveries.to_le_bytes());
    header.extend_from_slice(&(consumer.len() as u32).to_le_bytes());
    header.extend_from_slice(consumer.as_bytes());
    header
}

fn decode(token: String, lease_until: f64, file: Vec<u8>) -> Option<Entry> {
    if file.len() < HEADER || &file[..MAGIC.len()] != MAGIC {
        return None;
    }
    let word = |at: usize| u32::from_le_bytes(file[at..at + 4].try_into().expect("4 bytes"));
    let at = MAGIC.len();
    let (priority, deliveries) = (word(at), word(at + 4));
    let consumer_len = word(at + 8) as usize;
    let consumer = file.get(HEADER..HEADER.checked_add(consumer_len)?)?;
    Some(Entry {
        token,
        consumer: String::from_utf8_lossy(consumer).into_owned(),
        deliveries,
        lease_until,
        priority,
        data: file[HEADER + consumer_len..].to_vec(),
    })
}

/// Set the mtime of `path` to `when` (seconds since the epoch). False: `path` is gone.
fn set_mtime(path: &Path, when: f64) -> Result<bool> {
    let Err(e) = crate::ffi::set_mtime(path, when) else {
        return Ok(true);
    };
    match e {
        e if e.kind() == io::ErrorKind::NotFound => Ok(false),
        e => Err(e).on(path),
    }
}

fn mtime(meta: &fs::Metadata) -> f64 {
    meta.mtime() as f64 + meta.mtime_nsec() as f64 * 1e-9
}

impl Inflight {
    /// `dir` is created on first use: most stores never run in reliable mode.
    pub fn new(dir: PathBuf, tmp: TmpDir, use_flock: bool) -> Inflight {
        Inflight {
            lock: DirLock::new(dir.join(".lock"), use_flock),
            dir,
            tmp,
        }
    }

    fn acquire(&self) -> Result<DirLockGuard<'_>> {
        match self.lock.acquire() {
            Err(FileError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&self.dir).on(&self.dir)?;
                self.lock.acquire()
            }
            other => other,
        }
    }

    /// Move the next queued message in flight under `token`, leased for `lease` seconds;
    /// returns it with its delivery count (this one included).
    pub fn take(
        &self,
        queue: &Queue,
        consumer: &str,
        token: &str,
        lease: f64,
    ) -> Result<Option<(Vec<u8>, u32)>> {
        queue.dequeue_with(|message| {
            // The entry keeps the deliveries charged so far; `start` charges this one.
            self.place(&message, message.deliveries, consumer, token, now() + lease)?;
            Ok((message.data, message.deliveries.saturating_add(1)))
        })
    }

    /// The task of entry `token` starts: charge its delivery (the count in its header goes
    /// up by one, written in place; the write moves the mtime, so the lease is put back).
    /// False when the entry is gone (acked or recovered).
    pub fn start(&self, token: &str) -> Result<bool> {
        use std::os::unix::fs::FileExt;
        if !is_token(token) {
            return Ok(false);
        }
        let path = self.dir.join(token);
        // Under the lock: a recovery cannot claim the entry between the read and the write.
        let _guard = self.acquire()?;
        let file = match fs::OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).on(&path),
        };
        let lease_until = mtime(&file.metadata().on(&path)?);
        let mut header = [0u8; HEADER];
        let at = MAGIC.len() + 4;
        if file.read_exact_at(&mut header, 0).is_err() || &header[..MAGIC.len()] != MAGIC {
            return Ok(true); // unreadable: recovery sets it aside
        }
        let charged = u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
        file.write_all_at(&charged.saturating_add(1).to_le_bytes(), at as u64)
            .on(&path)?;
        if self.tmp.fsync {
            file.sync_data().on(&path)?;
        }
        set_mtime(&path, lease_until)?;
        Ok(true)
    }

    /// Write the entry under `tmp/`, set its lease, and link it as `inflight/{token}`.
    fn place(
        &self,
        message: &Dequeued,
        deliveries: u32,
        consumer: &str,
        token: &str,
        lease_until: f64,
    ) -> Result<()> {
        let header = encode(message.priority, deliveries, consumer);
        let tmp = self.tmp.write(&[&header, &message.data])?;
        let target = self.dir.join(token);
        let placed = set_mtime(&tmp, lease_until).and_then(|_| {
            // A link, not a rename: a reused token fails (EEXIST) instead of replacing, and so
            // losing, the message in flight under it.
            let mut linked = fs::hard_link(&tmp, &target);
            if matches!(&linked, Err(e) if e.kind() == io::ErrorKind::NotFound) {
                // The first reliable dequeue here (or `inflight/` was removed).
                fs::create_dir_all(&self.dir).on(&self.dir)?;
                linked = fs::hard_link(&tmp, &target);
            }
            linked.on(&target)?;
            if self.tmp.fsync {
                fs::File::open(&self.dir)
                    .and_then(|d| d.sync_all())
                    .on(&self.dir)?;
            }
            Ok(())
        });
        let _ = fs::remove_file(&tmp);
        placed
    }

    /// Extend the leases of `tokens` to `lease` seconds from now; how many are still in flight.
    pub fn renew(&self, tokens: &[String], lease: f64) -> Result<usize> {
        let until = now() + lease;
        let _guard = self.acquire()?;
        let mut renewed = 0;
        for token in tokens.iter().filter(|t| is_token(t)) {
            if set_mtime(&self.dir.join(token), until)? {
                renewed += 1;
            }
        }
        Ok(renewed)
    }

    /// Remove the entry `token`; false when it is not there (recovered by someone else).
    pub fn ack(&self, token: &str) -> Result<bool> {
        if !is_token(token) {
            return Ok(false);
        }
        sys::remove_if_exists(&self.dir.join(token))
    }

    /// Names in `inflight/` that are entries or claimed entries (not the lock, not strays).
    fn names(&self) -> Result<Vec<String>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).on(&self.dir),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.on(&self.dir)?;
            if let Some(name) = entry.file_name().to_str() {
                if is_token(name.strip_suffix(RECOVERING).unwrap_or(name)) {
                    names.push(name.to_owned());
                }
            }
        }
        Ok(names)
    }

    /// Put every entry whose lease ended before `now` back in `queue` with its delivery
    /// count, except those delivered `max_deliveries` times: those go to `set_aside(data,
    /// deliveries, None)` (the dead-letter queue; it returns the letter's id). Either happens
    /// before the entry's file is removed, so a crash can repeat it but never skip it. An
    /// entry that cannot be read or holds impossible fields goes to `set_aside(bytes, 0,
    /// Some(reason))` and the others are recovered all the same.
    pub fn recover(
        &self,
        queue: &Queue,
        max_deliveries: u32,
        now: f64,
        mut set_aside: impl FnMut(&[u8], u32, Option<String>) -> Result<String>,
    ) -> Result<Recovered> {
        let _guard = self.acquire()?;
        let mut recovered = Recovered::default();
        for name in self.names()? {
            let claimed = match self.claim(&name, now) {
                Ok(Some(claimed)) => claimed,
                Ok(None) => continue,
                Err(e) => {
                    let path = self.dir.join(&name);
                    let why = e.to_string();
                    self.set_aside_bad(&path, &[], why, &mut set_aside, &mut recovered)?;
                    continue;
                }
            };
            let file = match sys::read_if_exists(&claimed) {
                Ok(Some(file)) => file,
                Ok(None) => continue,
                Err(e) => {
                    self.set_aside_bad(
                        &claimed,
                        &[],
                        e.to_string(),
                        &mut set_aside,
                        &mut recovered,
                    )?;
                    continue;
                }
            };
            let token = name.strip_suffix(RECOVERING).unwrap_or(&name).to_owned();
            let entry = match decode(token, 0.0, file.clone()) {
                Some(entry) if i64::from(entry.priority) <= MAX_PRIORITY => entry,
                Some(entry) => {
                    let why = format!("priority {} is outside 0..{MAX_PRIORITY}", entry.priority);
                    self.set_aside_bad(&claimed, &file, why, &mut set_aside, &mut recovered)?;
                    continue;
                }
                None => {
                    let why = "not an in-flight entry (bad header)".to_owned();
                    self.set_aside_bad(&claimed, &file, why, &mut set_aside, &mut recovered)?;
                    continue;
                }
            };
            if entry.deliveries >= max_deliveries {
                let id = set_aside(&entry.data, entry.deliveries, None)?;
                recovered.dead.push((entry.data, entry.deliveries, id));
            } else {
                let priority = i64::from(entry.priority);
                queue.enqueue_delivered(&entry.data, priority, entry.deliveries)?;
                recovered.requeued += 1;
            }
            sys::remove_if_exists(&claimed)?;
        }
        Ok(recovered)
    }

    /// Entry `name` renamed to its recovering name when its lease expired before `now`; None
    /// while it is leased or once it is acked. A recovering name was left by a recovery that
    /// died: the caller holds the lock, so nobody else owns it.
    fn claim(&self, name: &str, now: f64) -> io::Result<Option<PathBuf>> {
        let path = self.dir.join(name);
        if name.ends_with(RECOVERING) {
            return Ok(Some(path));
        }
        match fs::metadata(&path) {
            Ok(meta) if mtime(&meta) < now => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
        let claimed = self.dir.join(format!("{name}{RECOVERING}"));
        match fs::rename(&path, &claimed) {
            Ok(()) => Ok(Some(claimed)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None), // acked meanwhile
            Err(e) => Err(e),
        }
    }

    /// Set a bad entry's bytes aside with the reason, then remove it (or, when it cannot be
    /// removed, rename it out of the way) so later recoveries do not meet it again.
    fn set_aside_bad(
        &self,
        path: &Path,
        bytes: &[u8],
        why: String,
        set_aside: &mut impl FnMut(&[u8], u32, Option<String>) -> Result<String>,
        recovered: &mut Recovered,
    ) -> Result<()> {
        let reason = format!("unusable in-flight entry {}: {why}", path.display());
        let id = set_aside(bytes, 0, Some(reason.clone()))?;
        if fs::remove_file(path).is_err() {
            let _ = fs::rename(path, path.with_extension("bad"));
        }
        recovered.bad.push((reason, id));
        Ok(())
    }

    /// Every entry, soonest lease expiry first (claimed ones are on their way back to the
    /// queue and not listed).
    pub fn items(&self) -> Result<Vec<Entry>> {
        let mut items = Vec::new();
        for name in self.names()? {
            if name.ends_with(RECOVERING) {
                continue;
            }
            let path = self.dir.join(&name);
            let meta = match fs::metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).on(&path),
            };
            if let Some(file) = sys::read_if_exists(&path)? {
                items.extend(decode(name, mtime(&meta), file));
            }
        }
        items.sort_by(|a, b| a.lease_until.total_cmp(&b.lease_until));
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_dead(_: &[u8], _: u32, _: Option<String>) -> Result<String> {
        panic!("nothing here is over the delivery cap")
    }

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let path = std::env::temp_dir()
                .join(format!("huey-rs-inflight-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            Dir(path)
        }

        fn open(&self) -> (Queue, Inflight) {
            let tmp = TmpDir::new(self.0.join("tmp"), false);
            let report: super::super::frame::Report = std::sync::Arc::new(|_| Ok(()));
            let queue = Queue::open(self.0.join("queue"), false, true, report).unwrap();
            let inflight = Inflight::new(self.0.join("inflight"), tmp, true);
            (queue, inflight)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn entries_round_trip() {
        let mut file = encode(7, 2, "host:1");
        file.extend_from_slice(b"payload");
        let entry = decode("t".into(), 1.5, file.clone()).unwrap();
        assert_eq!(
            (entry.priority, entry.deliveries, entry.consumer.as_str()),
            (7, 2, "host:1")
        );
        assert_eq!(entry.data, b"payload");
        assert!(decode("t".into(), 0.0, file[..HEADER + 2].to_vec()).is_none());
        assert!(!is_token("../x") && !is_token(".lock") && !is_token("a.recovering"));
    }

    #[test]
    fn take_renew_ack_and_recover_count_deliveries() {
        let dir = Dir::new("cycle");
        let (queue, inflight) = dir.open();
        queue.enqueue(b"low", 1).unwrap();
        queue.enqueue(b"high", 5).unwrap();
        let got = inflight.take(&queue, "c", "a", 30.0).unwrap();
        assert_eq!(got, Some((b"high".to_vec(), 1)));
        assert_eq!(queue.size().unwrap(), 1);
        assert_eq!(inflight.items().unwrap()[0].deliveries, 0); // not started: not charged
        assert!(inflight.start("a").unwrap());
        let items = inflight.items().unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].deliveries, 1);
        assert!(items[0].lease_until > now() + 29.0 && items[0].priority == 5);
        assert_eq!(inflight.renew(&["a".into(), "zz".into()], 60.0).unwrap(), 1);
        assert!(inflight.items().unwrap()[0].lease_until > now() + 59.0);

        // Not expired yet: nothing happens.
        assert_eq!(
            inflight.recover(&queue, 3, now(), no_dead).unwrap(),
            Recovered::default()
        );
        let back = inflight.recover(&queue, 3, now() + 61.0, no_dead).unwrap();
        assert_eq!(back.requeued, 1);
        assert!(!inflight.ack("a").unwrap());
        // Redelivered ahead of the lower priority, counting on.
        assert_eq!(
            inflight.take(&queue, "c", "b", 30.0).unwrap(),
            Some((b"high".to_vec(), 2))
        );
        assert!(inflight.start("b").unwrap());
        let mut letters = Vec::new();
        let dead = inflight
            .recover(&queue, 2, now() + 31.0, |data, n, _| {
                letters.push((data.to_vec(), n));
                Ok("7".into())
            })
            .unwrap();
        assert_eq!(dead.dead, vec![(b"high".to_vec(), 2, "7".into())]);
        assert_eq!(letters, vec![(b"high".to_vec(), 2)]);
        assert_eq!(
            inflight.take(&queue, "c", "c", 30.0).unwrap(),
            Some((b"low".to_vec(), 1))
        );
        queue.enqueue(b"next", 0).unwrap();
        inflight.take(&queue, "c", "d", 30.0).unwrap();
        queue.enqueue(b"reused", 0).unwrap();
        assert!(inflight.take(&queue, "c", "d", 30.0).is_err());
        assert_eq!(queue.dequeue().unwrap().unwrap(), b"reused");
        assert!(inflight.ack("c").unwrap() && inflight.ack("d").unwrap());
        assert!(inflight.items().unwrap().is_empty());
        assert_eq!(inflight.take(&queue, "c", "e", 30.0).unwrap(), None);
    }

    #[test]
    fn only_a_started_delivery_is_charged() {
        let dir = Dir::new("start");
        let (queue, inflight) = dir.open();
        queue.enqueue(b"m", 0).unwrap();
        inflight.take(&queue, "c", "t1", 30.0).unwrap();
        // Its consumer died before starting it: back with no delivery charged.
        let back = inflight.recover(&queue, 1, now() + 31.0, no_dead).unwrap();
        assert_eq!(back.requeued, 1);
        let got = inflight.take(&queue, "c", "t2", 30.0).unwrap();
        assert_eq!(got, Some((b"m".to_vec(), 1)));
        let lease = inflight.items().unwrap()[0].lease_until;
        assert!(inflight.start("t2").unwrap());
        // The in-place write keeps the lease.
        assert!((inflight.items().unwrap()[0].lease_until - lease).abs() < 1e-3);
        assert!(!inflight.start("gone").unwrap() && !inflight.start("../x").unwrap());
        assert!(inflight.ack("t2").unwrap() && !inflight.start("t2").unwrap());
    }

    #[test]
    fn a_claim_left_by_a_dead_recovery_is_put_back() {
        let dir = Dir::new("claimed");
        let (queue, inflight) = dir.open();
        queue.enqueue(b"m", 0).unwrap();
        inflight.take(&queue, "c", "tok", 30.0).unwrap();
        // What a recovery killed between its claim and its enqueue leaves behind.
        fs::rename(
            dir.0.join("inflight/tok"),
            dir.0.join("inflight/tok.recovering"),
        )
        .unwrap();
        assert!(inflight.items().unwrap().is_empty());
        assert_eq!(inflight.renew(&["tok".into()], 30.0).unwrap(), 0);
        let recovered = inflight.recover(&queue, 3, now(), no_dead).unwrap();
        assert_eq!(recovered.requeued, 1);
        assert_eq!(queue.dequeue().unwrap().unwrap(), b"m");
        assert_eq!(inflight.names().unwrap(), Vec::<String>::new());
    }
}
