//! Gatehouse's plugin host: WebAssembly components that implement the `gatehouse:plugin`
//! world (`plugin-sdk/wit`), run in wasmtime with hard per-call limits, failing closed.
//!
//! ```text
//! start:    PluginHost::new(HostConfig)            engine (pooling, epochs), linker, ticker
//!           PluginSet::load(&host, &[PluginConfig]) per plugin: read → sha256 → compile →
//!                                                   InstancePre (link + type-check) → describe
//! target:   set.chain(&["pii-mask", "sql-guard"])   ordered plugins of a target
//! session:  chain.session(SessionInfo)              one lazily created instance per plugin
//! per op:   session.on_statement(stmt).await        → VerdictOutcome { ChainVerdict, runs }
//!           session.on_rows(batch).await            → RowsOutcome::{Pass, MaskAll}
//! reload:   set.watch(interval) / set.reload()      hash changed? → validate → swap;
//!                                                   invalid → keep the last good version
//! metrics:  set.stats()                             calls, faults by kind, quarantine, ...
//! ```
//!
//! **Isolation.** Each session gets its own instance of each plugin (a `Store` from the
//! plugin's `InstancePre`, memory from the pooling allocator), reused for that session's
//! calls. Guest code runs on tokio's blocking pool, never on async I/O threads. Every call
//! has an epoch deadline (`timeout_ms`), every instance a memory cap (`memory_mb`), and
//! optionally a fuel budget. WASI is there only for what Rust's std imports: no files, no
//! sockets, no environment or arguments, stdout/stderr go to the log, and the calls that
//! block (`wasi:io/poll`) trap, since the deadline cannot interrupt host code.
//!
//! **Faults.** A trap, timeout, memory blow-up, fuel exhaustion, malformed return (edit out
//! of range, non-UTF-8 value, output over `max_output_bytes`, ...) or `err` from the plugin
//! is a [`Fault`] naming the plugin and its content hash. The instance is discarded (the
//! next call gets a fresh one). With `fail = "closed"` (the default) the outcome says so —
//! [`ChainVerdict::FailClosed`] (deny) or [`RowsOutcome::MaskAll`] — and the caller cannot
//! miss it; with `"open"` the chain carries on and the fault is in the runs. A plugin that
//! faults `quarantine_faults` times within `quarantine_window_secs` is quarantined for
//! `quarantine_secs`: skipped with its fail-mode behaviour, without running. Faults are
//! logged here (warn) once; callers record them, they need not log them again.
//!
//! **Reload.** A session holds its instance's version; at each call it compares it with the
//! plugin's live version and, when a reload swapped in a new one, drops the old instance and
//! instantiates the new version. So running sessions switch at their next call.

mod batch;
mod chain;
mod cli;
mod config;
mod fault;
mod host;
mod plugin;
mod set;
mod store;
mod wit;

pub use batch::{BINARY_LEN, Cell, Cells, EditError, NULL_LEN};
pub use chain::{
    Chain, ChainVerdict, HttpOutcome, PluginFinding, PluginRun, PluginSession, RowsOutcome, RunResult,
    VerdictOutcome,
};
pub use cli::{
    RowsFixture, RowsReport, SampleOp, check, check_with_config, test_operations, test_rows, tool_session,
};
pub use config::{DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_MS, FailMode, HostConfig, PluginConfig};
pub use fault::{BatchError, Fault, FaultKind, PluginError, PluginId};
pub use host::PluginHost;
pub use plugin::PluginInfo;
pub use set::{FaultCounts, PluginSet, PluginStats, ReloadOutcome, ReloadReport};
pub use wit::{
    CellEdit, Column, Command, Finding, HoldRequest, Hook, HttpHead, HttpMessage, HttpResult, Level,
    Protocol, RowBatch, RowsResult, SessionInfo, Statement, Verdict, WIT_PACKAGE,
};

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;

    #[test]
    fn shared_types_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<PluginHost>();
        send_sync::<PluginSet>();
        send_sync::<Chain>();
        send::<PluginSession>();
    }
}
