//! `huey._native`: the Rust core of huey-rs. This file only registers the module's contents.

use pyo3::prelude::*;

pub mod crontab;
pub mod datetime;
mod errors;
mod fixed_deflate;
pub mod framing;
pub mod schedule;
pub mod storage;
pub mod task;
mod zlib;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    crontab::register(m)?;
    framing::register(m)?;
    schedule::register(m)?;
    storage::memory::register(m)?;
    storage::file::register(m)?;
    task::register(m)?;
    Ok(())
}
