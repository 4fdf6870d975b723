//! Task ids for `huey.task`: random (version 4) UUID strings, as `str(uuid.uuid4())` makes,
//! without building a `uuid.UUID` object per task.
//!
//! The `uuid` crate sets the version and variant bits and formats; the random bytes come from
//! the OS (`getrandom`) in 4 KiB batches kept per thread, because one system call per id costs
//! more than the rest of the work. A forked child notices the new pid and refills, so parent
//! and child never share ids.

use std::cell::RefCell;

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use uuid::Builder;

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

fn random_16() -> Result<[u8; 16], getrandom::Error> {
    ENTROPY.with_borrow_mut(|e| {
        let pid = std::process::id();
        if e.used + 16 > BATCH || e.pid != pid {
            getrandom::fill(&mut e.bytes)?;
            e.used = 0;
            e.pid = pid;
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&e.bytes[e.used..e.used + 16]);
        e.bytes[e.used..e.used + 16].fill(0); // used entropy is not kept around
        e.used += 16;
        Ok(out)
    })
}

/// The version-4 UUID string of 16 random bytes.
pub fn uuid4_string(random: [u8; 16]) -> String {
    Builder::from_random_bytes(random)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// A new random task id, e.g. `'1b4e28ba-2fa1-41d2-883f-0016d3cca427'`.
#[pyfunction]
pub fn new_task_id() -> PyResult<String> {
    let random = random_16()
        .map_err(|e| PyOSError::new_err(format!("no random bytes for a task id: {e}")))?;
    Ok(uuid4_string(random))
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
        let ids: std::collections::HashSet<String> = (0..10_000)
            .map(|_| uuid4_string(random_16().unwrap()))
            .collect();
        assert_eq!(ids.len(), 10_000);
    }
}
