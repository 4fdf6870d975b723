//! Storages implemented in Rust, one module per Python module in `huey/storage/`.

#[cfg(unix)]
pub mod file;
pub mod memory;
pub mod watch;
