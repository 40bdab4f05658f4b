//! Sluice: Redis events → sandboxed WebAssembly handlers → ClickHouse rows.
//!
//! The modules in layers; a module imports only from its own layer's siblings it names below or
//! from lower layers (docs/ARCHITECTURE.md has the picture):
//!
//! 1. Vocabulary, shared by every stage: `keys` (Redis key names), `secret`, `backoff`,
//!    `policy` (the delivery policy), `dead_letter` (the dead-letter record), `contract` (the
//!    WIT bindings), `status` (what the host says about itself), `tls`.
//! 2. Connections and records: `redis_conn`, `ledger` (the exactly-once batch ledger in Redis),
//!    `schema` (table declarations, types, comparison).
//! 3. Stages: `source` (Redis Streams, BullMQ, delayed events) · `plugin` (the wasmtime
//!    sandbox, row checking) · `writer` (tables, batching, INSERT, recovery).
//! 4. The delivery core: `pipeline` (read → call → write → settle; the decision), `trace` (the
//!    rings of recent attempts it records).
//! 5. Running it: `deploy` (plugin files → pipelines, hot reload), `admin` (HTTP API and
//!    dashboard), `dlq` (dead letters and replay in Redis), `story` (an event's trace: the rings,
//!    Redis and ClickHouse put together).
//! 6. Entry points: `config` (settings), `host` (`sluice run`), `cli` (the command line).
//!
//! Only `cli` (for the binary) and `sample` (for the benchmark) are public: everything else is
//! the crate's own, so the compiler reports what nothing uses.

mod admin;
mod backoff;
pub mod cli;
mod config;
mod contract;
mod dead_letter;
mod deploy;
mod dlq;
mod host;
mod keys;
mod ledger;
mod pipeline;
mod plugin;
mod policy;
mod redis_conn;
mod rollout;
pub mod sample;
mod schema;
mod secret;
mod source;
mod status;
mod story;
mod suggest;
mod tls;
mod trace;
mod upkeep;
mod writer;
