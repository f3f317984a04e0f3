//! Faults (what a plugin did wrong in one call) and the crate's error type (what went wrong
//! loading or checking a plugin).

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::FailMode;
use crate::wit::Hook;

/// Which plugin, in which version: its configured name and the SHA-256 (lowercase hex) of
/// the `.wasm` file that ran. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PluginId {
    pub name: Arc<str>,
    pub hash: Arc<str>,
}

impl std::fmt::Display for PluginId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = self.hash.get(..12).unwrap_or(&self.hash);
        write!(f, "{} ({short})", self.name)
    }
}

/// What went wrong in a plugin call. The strings are diagnostics for the audit record and
/// the operator; they never contain row values (the host does not put any there) but may
/// contain what the plugin itself wrote in an error, so do not send them to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// The guest trapped (panic → `unreachable`, stack overflow, out-of-bounds access, or a
    /// forbidden host call such as blocking on `wasi:io/poll`).
    Trap(String),
    /// The call ran past its deadline (epoch interruption).
    Timeout,
    /// The instance tried to grow its memory past the cap.
    Memory,
    /// The call used up its fuel budget.
    Fuel,
    /// The call returned something the contract does not allow (edit out of range, a value
    /// that is not UTF-8, output over the size cap, bytes that do not lift, ...).
    Malformed(String),
    /// The hook returned `err(message)`.
    PluginError(String),
    /// A fresh instance could not be created (pool exhausted, start-up trap, ...).
    Instantiate(String),
    /// The plugin is quarantined after repeated faults and was not run.
    Quarantined,
    /// The host could not run the call at all (worker task lost); nothing of the plugin ran
    /// to completion.
    Host(String),
}

impl FaultKind {
    /// A bounded label for metrics and records: `trap`, `timeout`, `memory`, `fuel`,
    /// `malformed`, `plugin-error`, `instantiate`, `quarantined`, `host`.
    pub fn label(&self) -> &'static str {
        match self {
            FaultKind::Trap(_) => "trap",
            FaultKind::Timeout => "timeout",
            FaultKind::Memory => "memory",
            FaultKind::Fuel => "fuel",
            FaultKind::Malformed(_) => "malformed",
            FaultKind::PluginError(_) => "plugin-error",
            FaultKind::Instantiate(_) => "instantiate",
            FaultKind::Quarantined => "quarantined",
            FaultKind::Host(_) => "host",
        }
    }

    /// The detail message, if the kind has one.
    pub fn detail(&self) -> Option<&str> {
        match self {
            FaultKind::Trap(m)
            | FaultKind::Malformed(m)
            | FaultKind::PluginError(m)
            | FaultKind::Instantiate(m)
            | FaultKind::Host(m) => Some(m),
            FaultKind::Timeout | FaultKind::Memory | FaultKind::Fuel | FaultKind::Quarantined => None,
        }
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.detail() {
            Some(detail) => write!(f, "{}: {detail}", self.label()),
            None => f.write_str(self.label()),
        }
    }
}

/// A plugin fault in one call: who, which hook, what, and the plugin's fail mode (which the
/// chain has already applied to its outcome).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub plugin: PluginId,
    pub hook: Hook,
    pub kind: FaultKind,
    pub fail: FailMode,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "plugin {} {}: {} (fail {})",
            self.plugin,
            self.hook,
            self.kind,
            self.fail.as_str()
        )
    }
}

/// Errors loading, checking or configuring plugins (not faults of a call: see [`Fault`]).
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin {name}: cannot read {path}: {source}")]
    Read {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("plugin {name}: {path} is not a valid gatehouse plugin component: {message}")]
    Invalid {
        name: String,
        path: PathBuf,
        message: String,
    },
    #[error("plugin {name}: {message}")]
    Config { name: String, message: String },
    #[error("unknown plugin `{0}`")]
    Unknown(String),
    #[error("plugin engine: {0}")]
    Engine(String),
    #[error("fixture: {0}")]
    Fixture(String),
    #[error("row batch: {0}")]
    Batch(#[from] BatchError),
}

/// A row batch whose shape is inconsistent (a caller bug, not a plugin fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("{cells} cells for {columns} columns × {rows} rows")]
    CellCount { cells: usize, columns: usize, rows: u32 },
    #[error("cell lengths add up to {sum} bytes but data has {data}")]
    DataLength { sum: u64, data: usize },
    #[error("invalid cell length {0}")]
    Length(i32),
    #[error("a row of {got} cells in a batch of {expected} columns")]
    RowWidth { got: usize, expected: usize },
    #[error("batch too large for the plugin ABI")]
    TooLarge,
}
