//! Gatehouse benchmarks.
//!
//! - `benches/*.rs`: criterion micro-benches of the per-statement hot paths (SQL
//!   classification, the Cedar decision, the recorder append, PostgreSQL message framing).
//! - `src/bin/loadbench.rs`: the load-bench harness. It runs `pgbench` against a throwaway
//!   PostgreSQL directly and through the real `gatehouse` binary, interleaved, and reports the
//!   through/direct ratio per query mode and recorder durability.
//!
//! This library holds the harness's pieces that are worth testing on their own: parsing
//! `pgbench` output and per-transaction logs, the statistics, and process/host CPU accounting.

pub mod gateway;
pub mod pgbench;
pub mod procstat;
pub mod stats;
