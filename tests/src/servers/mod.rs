//! Private servers, each on free ports with its own data directory, stopped when dropped.

mod certs;
mod clickhouse;
mod cluster;
mod redis;
mod zookeeper;

pub use certs::*;
pub use clickhouse::*;
pub use cluster::*;
pub use redis::*;
pub use zookeeper::*;
