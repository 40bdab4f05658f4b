//! Sluice: Redis events → sandboxed WebAssembly handlers → ClickHouse rows.
//!
//! One module per stage: `source` (Redis Streams) → `router` (pipelines, acks, retries,
//! dead letters) → `plugin` (wasmtime sandbox, row checking) → `writer` (schemas, batching,
//! ClickHouse). `host` wires them for `sluice run`; `cli` is the command line; `config` the
//! settings. See docs/ARCHITECTURE.md.

pub mod admin;
pub mod cli;
pub mod config;
pub mod deploy;
pub mod dlq;
pub mod fixtures;
pub mod host;
pub mod plugin;
pub mod priority;
pub mod redis_conn;
pub mod router;
pub mod sample;
pub mod scaffold;
pub mod source;
pub mod tls;
pub mod writer;
