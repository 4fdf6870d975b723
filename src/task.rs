//! Task ids for `huey.task`: random (version 4) UUID strings, as `str(uuid.uuid4())` makes,
//! without building a `uuid.UUID` object per task.
//!
//! Random bytes come from the OS (`getrandom`) in 4 KiB batches kept per thread; a forked
//! child notices the new pid and refills, so parent and child never share ids.

use std::cell::RefCell;

use pyo3::prelude::*;

const BATCH: usize = 4096;

struct Entropy {
    pid: u32,
    bytes: [u8; BATCH],
    used: usize,
}

thread_local! {
    static ENTROPY: RefCell<Entropy> =
        const { RefCell::new(Entropy { pid: 0, bytes: [0; BATCH], used: BATCH }) };
}

fn fill(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: writes at most `buf.len() - filled` bytes into the slice's tail.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            panic!("getrandom failed: {}", std::io::Error::last_os_error());
        }
    }
}

fn random_16() -> [u8; 16] {
    ENTROPY.with_borrow_mut(|e| {
        let pid = std::process::id();
        if e.used + 16 > BATCH || e.pid != pid {
            fill(&mut e.bytes);
            e.used = 0;
            e.pid = pid;
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&e.bytes[e.used..e.used + 16]);
        e.bytes[e.used..e.used + 16].fill(0); // used entropy is not kept around
        e.used += 16;
        out
    })
}

/// Formats 16 random bytes as a version-4, RFC 4122 variant UUID string.
pub fn uuid4_string(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(HEX[usize::from(byte >> 4)] as char);
        s.push(HEX[usize::from(byte & 0xf)] as char);
    }
    s
}

/// A new random task id, e.g. `'1b4e28ba-2fa1-41d2-883f-0016d3cca427'`.
#[pyfunction]
fn new_task_id() -> String {
    uuid4_string(random_16())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(new_task_id, m)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_and_version_bits() {
        let s = uuid4_string([0xff; 16]);
        assert_eq!(s, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let s = uuid4_string([0; 16]);
        assert_eq!(s, "00000000-0000-4000-8000-000000000000");
    }

    #[test]
    fn ids_differ() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| uuid4_string(random_16())).collect();
        assert_eq!(ids.len(), 10_000);
    }
}
