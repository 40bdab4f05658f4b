//! The test harness: private `redis-server` and `clickhouse-server` processes on free local
//! ports with their own data directories (never 6379/8123), and the `sluice` binary run as a
//! real process. Everything is stopped when its handle drops; every wait has a timeout.
//!
//! - `servers/`: Redis, Redis Cluster, ClickHouse (both releases), ZooKeeper, certificates;
//! - `host`: the binary under test and its plugins;
//! - `events`: events in (seed events, BullMQ jobs) and what they add up to;
//! - `assertions`: what is left in Redis (dead letters, pending entries);
//! - `process`, `http`: waiting, stopping, local HTTP;
//! - `browser`: headless Chromium driven through the DevTools Protocol (the console's tests);
//! - `proxy`: a TCP proxy that switches servers, as a failover does.

mod assertions;
pub mod browser;
pub mod echo;
mod events;
mod host;
mod http;
mod process;
mod proxy;
mod servers;

pub use assertions::*;
pub use events::*;
pub use host::*;
pub use http::*;
pub use process::*;
pub use proxy::*;
pub use servers::*;
