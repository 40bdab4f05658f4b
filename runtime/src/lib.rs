//! Sluice: Redis events → sandboxed WebAssembly handlers → ClickHouse rows.
//!
//! One module per stage; see `docs/ARCHITECTURE.md`.

pub mod config;
pub mod plugin;
pub mod router;
pub mod source;
pub mod writer;
