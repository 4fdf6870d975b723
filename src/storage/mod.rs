//! Storages implemented in Rust, one module per Python module in `huey/storage/`.

pub mod file;
pub mod memory;
