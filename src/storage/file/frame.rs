//! Self-checking records, shared by the queue's segment files and the schedule journal.
//!
//! Every record starts on an 8-byte boundary with a 16-byte header and is padded with zeros
//! to the next boundary:
//!
//! ```text
//! 0   magic   4 bytes, one per kind of file ("hrq3" queue segments, "hrj3" schedule journal)
//! 4   len     u32 LE, bytes of body that follow the header
//! 8   kind    u8, what the body is (each file kind defines its own)
//! 9   mark    u8, a hint the writer may change in place later (not checked)
//! 10  0u16    reserved
//! 12  crc     u32 LE, CRC-32 of bytes 4..9, 10..12 and the body
//! ```
//!
//! A reader never has to trust what came before a record: after a bad one it looks at each
//! following 8-byte boundary for the magic and a matching checksum, as LevelDB's log and
//! SQLite's WAL let a reader resynchronise. `scan` reports the damaged span so the caller can
//! set its bytes aside and carry on with the next good record.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

#[cfg(unix)]
use std::os::unix::fs::FileExt;
#[cfg(windows)]
use std::os::windows::fs::FileExt;

pub const HEADER: usize = 16;
pub const ALIGN: u64 = 8;
/// Records up to this size are read together with their header in one `pread`.
const READ_AHEAD: usize = 4096;
/// Bytes read at a time while looking for the next good record after damage.
const SCAN_CHUNK: usize = 64 << 10;

/// A record's body length rounded up to the next boundary, plus the header.
pub fn record_len(body: usize) -> u64 {
    (HEADER as u64 + body as u64).div_ceil(ALIGN) * ALIGN
}

fn checksum(header: &[u8], body: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[4..9]);
    crc.update(&header[10..12]);
    crc.update(body);
    crc.finalize()
}

/// Append one record of `kind` whose body is `parts` concatenated.
pub fn encode(magic: &[u8; 4], kind: u8, parts: &[&[u8]], out: &mut Vec<u8>) {
    let body_len: usize = parts.iter().map(|p| p.len()).sum();
    let start = out.len();
    out.extend_from_slice(magic);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[kind, 0, 0, 0, 0, 0, 0, 0]);
    for part in parts {
        out.extend_from_slice(part);
    }
    let crc = checksum(&out[start..start + HEADER], &out[start + HEADER..]);
    out[start + 12..start + 16].copy_from_slice(&crc.to_le_bytes());
    out.resize(start + record_len(body_len) as usize, 0);
}

/// What `parse` makes of the bytes at the start of a buffer.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// A good record: its kind, mark and where its body sits in the buffer.
    Record {
        kind: u8,
        mark: u8,
        body: Range<usize>,
    },
    /// The header is good but the buffer ends before the body: read `needed` bytes.
    Short {
        needed: usize,
    },
    Bad,
}

pub fn parse(magic: &[u8; 4], buf: &[u8]) -> Parsed {
    if buf.len() < HEADER {
        return match buf.get(..4) {
            Some(m) if m != magic => Parsed::Bad,
            _ => Parsed::Short { needed: HEADER },
        };
    }
    if &buf[..4] != magic || buf[10] != 0 || buf[11] != 0 {
        return Parsed::Bad;
    }
    let len = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
    let Some(body) = buf.get(HEADER..HEADER + len) else {
        return Parsed::Short {
            needed: HEADER + len,
        };
    };
    let crc = u32::from_le_bytes(buf[12..16].try_into().expect("4 bytes"));
    if crc != checksum(&buf[..HEADER], body) {
        return Parsed::Bad;
    }
    Parsed::Record {
        kind: buf[8],
        mark: buf[9],
        body: HEADER..HEADER + len,
    }
}

/// Bytes found damaged in a queue segment or the schedule journal, reported once by the
/// process that skips them.
#[derive(Debug)]
pub struct Damage {
    pub path: PathBuf,
    pub span: Range<u64>,
    /// The damaged bytes that exist (none for a missing or truncated file's lost range).
    pub bytes: Vec<u8>,
    pub what: &'static str,
}

impl Damage {
    /// The reason recorded with the dead letter and in the log.
    pub fn reason(&self) -> String {
        if self.span.is_empty() {
            return format!("{} ({})", self.what, self.path.display());
        }
        format!(
            "{} in {} at bytes {}..{}",
            self.what,
            self.path.display(),
            self.span.start,
            self.span.end
        )
    }
}

/// Where damage goes (the dead-letter queue and the log); an error stops the operation
/// before the damaged bytes are skipped, so they are never dropped unrecorded.
pub type Report = Arc<dyn Fn(Damage) -> super::sys::Result<()> + Send + Sync>;

/// A good record read from a file.
#[derive(Debug, PartialEq)]
pub struct Record {
    pub at: u64,
    pub kind: u8,
    pub mark: u8,
    pub body: Vec<u8>,
    /// Where the next record starts.
    pub next: u64,
}

/// What `scan` found from a position on.
#[derive(Debug, PartialEq)]
pub enum Found {
    Record(Record),
    /// Bytes `span` do not hold a good record; a good one (or `end`) follows them.
    Damaged {
        span: Range<u64>,
        bytes: Vec<u8>,
    },
    /// Nothing at all before `end`.
    End,
}

/// `pread` until `buf` is full or the file ends; the number of bytes read.
pub fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        #[cfg(unix)]
        let got = file.read_at(&mut buf[done..], offset + done as u64);
        #[cfg(windows)]
        let got = file.seek_read(&mut buf[done..], offset + done as u64);
        match got {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// The good record at `at`, if there is one that ends by `end`.
pub fn read_record(file: &File, magic: &[u8; 4], at: u64, end: u64) -> io::Result<Option<Record>> {
    if at >= end {
        return Ok(None);
    }
    let want = (HEADER + READ_AHEAD).min((end - at) as usize);
    let mut buf = vec![0u8; want];
    let n = read_full_at(file, &mut buf, at)?;
    buf.truncate(n);
    let parsed = match parse(magic, &buf) {
        Parsed::Short { needed } if at + needed as u64 <= end && needed > buf.len() => {
            buf.resize(needed, 0);
            let more = read_full_at(file, &mut buf[n..], at + n as u64)?;
            buf.truncate(n + more);
            parse(magic, &buf)
        }
        other => other,
    };
    Ok(match parsed {
        Parsed::Record { kind, mark, body } => {
            let fits = at + (HEADER + body.len()) as u64 <= end;
            fits.then(|| Record {
                at,
                kind,
                mark,
                next: at + record_len(body.len()),
                body: buf[body].to_vec(),
            })
        }
        _ => None,
    })
}

/// The first good record at `at` or after it and before `end`, reporting the bytes skipped to
/// reach it. `end` may lie past the end of the file (a truncated file): the missing bytes are
/// part of the damaged span but not of `bytes`.
pub fn scan(file: &File, magic: &[u8; 4], at: u64, end: u64) -> io::Result<Found> {
    if let Some(record) = read_record(file, magic, at, end)? {
        return Ok(Found::Record(record));
    }
    if at >= end {
        return Ok(Found::End);
    }
    // Look for the magic at each later boundary and check the record there.
    let mut candidate = at + ALIGN;
    let mut chunk = vec![0u8; SCAN_CHUNK];
    while candidate < end {
        let want = (SCAN_CHUNK as u64).min(end - candidate) as usize;
        let n = read_full_at(file, &mut chunk[..want], candidate)?;
        let mut found = None;
        let mut i = 0;
        while i + 4 <= n {
            if &chunk[i..i + 4] == magic {
                let at = candidate + i as u64;
                if read_record(file, magic, at, end)?.is_some() {
                    found = Some(at);
                    break;
                }
            }
            i += ALIGN as usize;
        }
        if let Some(good) = found {
            return Ok(Found::Damaged {
                bytes: read_span(file, at, good)?,
                span: at..good,
            });
        }
        if n < want {
            break; // the file ends before `end`
        }
        candidate += n as u64;
    }
    Ok(Found::Damaged {
        bytes: read_span(file, at, end)?,
        span: at..end,
    })
}

fn read_span(file: &File, from: u64, to: u64) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; (to - from).min(64 << 20) as usize];
    let n = read_full_at(file, &mut bytes, from)?;
    bytes.truncate(n);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MAGIC: &[u8; 4] = b"test";

    fn file_with(bytes: &[u8]) -> File {
        let path = std::env::temp_dir().join(format!(
            "huey-rs-frame-{}-{}",
            std::process::id(),
            bytes.len()
        ));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.write_all(bytes).unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }

    #[test]
    fn records_round_trip_aligned() {
        let mut buf = Vec::new();
        encode(MAGIC, 3, &[b"ab", b"cde"], &mut buf);
        assert_eq!(buf.len(), 24);
        assert_eq!(
            parse(MAGIC, &buf),
            Parsed::Record {
                kind: 3,
                mark: 0,
                body: 16..21
            }
        );
        // The mark is not checked; everything else is.
        buf[9] = 7;
        assert!(matches!(parse(MAGIC, &buf), Parsed::Record { mark: 7, .. }));
        for i in (0..21).filter(|&i| i != 9) {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            assert!(!matches!(parse(MAGIC, &bad), Parsed::Record { .. }), "{i}");
        }
        assert_eq!(parse(MAGIC, &buf[..10]), Parsed::Short { needed: HEADER });
        assert_eq!(parse(MAGIC, &buf[..18]), Parsed::Short { needed: 21 });
        assert_eq!(parse(b"othr", &buf), Parsed::Bad);
    }

    #[test]
    fn scan_skips_damage_and_finds_the_next_record() {
        let mut buf = Vec::new();
        for body in [&b"one"[..], &[9u8; 5000][..], b"three"] {
            encode(MAGIC, 1, &[body], &mut buf);
        }
        let second = record_len(3);
        buf[second as usize + 20] ^= 1; // a payload byte of the second record
        let file = file_with(&buf);
        let end = buf.len() as u64;
        let Found::Record(first) = scan(&file, MAGIC, 0, end).unwrap() else {
            panic!()
        };
        assert_eq!((first.body.as_slice(), first.next), (&b"one"[..], second));
        let Found::Damaged { span, bytes } = scan(&file, MAGIC, second, end).unwrap() else {
            panic!()
        };
        assert_eq!(span, second..second + record_len(5000));
        assert_eq!(bytes.len() as u64, record_len(5000));
        let Found::Record(third) = scan(&file, MAGIC, span.end, end).unwrap() else {
            panic!()
        };
        assert_eq!(third.body, b"three");
        assert_eq!(scan(&file, MAGIC, end, end).unwrap(), Found::End);
        // Past the end of a truncated file: damaged, with only the bytes that exist.
        let Found::Damaged { span, bytes } = scan(&file, MAGIC, end, end + 64).unwrap() else {
            panic!()
        };
        assert!(span.end == end + 64 && bytes.is_empty());
    }
}
