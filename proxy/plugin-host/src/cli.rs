//! What `gatehouse plugin check` and `gatehouse plugin test` need: validate one file, run its
//! `on-rows` on sample rows, and its `on-statement` / `on-command` on sample operations.
//!
//! Both are blocking and run the plugin on a thread of their own (safe to call from
//! anywhere, including inside a tokio runtime); each builds a small engine of its own.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::batch::Cell;
use crate::chain::{ChainVerdict, PluginFinding, RowsOutcome};
use crate::config::{HostConfig, PluginConfig};
use crate::fault::{Fault, PluginError};
use crate::host::PluginHost;
use crate::plugin::PluginInfo;
use crate::set::PluginSet;
use crate::wit::{Column, Command, Protocol, RowBatch, SessionInfo, Statement};

/// Validate a plugin file: it compiles, links against the `gatehouse:plugin` world (imports
/// and exports), instantiates, and `describe` succeeds (with `{}` as its config).
pub fn check(path: &Path) -> Result<PluginInfo, PluginError> {
    check_with_config(path, &serde_json::json!({}))
}

/// [`check`] with the plugin's configuration.
pub fn check_with_config(path: &Path, config: &serde_json::Value) -> Result<PluginInfo, PluginError> {
    let config = tool_config(path, config);
    on_own_thread(move || {
        let set = PluginSet::load(&small_host()?, std::slice::from_ref(&config))?;
        set.info(&config.name)
            .ok_or_else(|| PluginError::Unknown(config.name.clone()))
    })
}

/// Sample rows for `gatehouse plugin test --rows FIXTURE`:
/// `{"columns": ["name", ...], "rows": [["a", null, 3, ...], ...]}`. Cells are strings,
/// `null` (SQL NULL), or numbers/booleans (used as their text). Columns are `text`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowsFixture {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<serde_json::Value>>,
}

impl RowsFixture {
    /// Parse the JSON text of a fixture.
    pub fn parse(json: &str) -> Result<RowsFixture, PluginError> {
        serde_json::from_str(json).map_err(|e| PluginError::Fixture(e.to_string()))
    }

    /// The fixture as a text-format batch.
    pub fn to_batch(&self) -> Result<RowBatch, PluginError> {
        let columns = self.columns.iter().map(Column::text).collect();
        let mut batch = RowBatch::new(columns);
        for (i, row) in self.rows.iter().enumerate() {
            let texts = row
                .iter()
                .map(|v| match v {
                    serde_json::Value::Null => Ok(None),
                    serde_json::Value::String(s) => Ok(Some(s.clone())),
                    serde_json::Value::Number(n) => Ok(Some(n.to_string())),
                    serde_json::Value::Bool(b) => Ok(Some(b.to_string())),
                    _ => Err(PluginError::Fixture(format!(
                        "row {i}: cells must be strings, numbers, booleans or null"
                    ))),
                })
                .collect::<Result<Vec<Option<String>>, PluginError>>()?;
            batch
                .push_row(texts.iter().map(|t| Cell::from(t.as_deref())))
                .map_err(|e| PluginError::Fixture(format!("row {i}: {e}")))?;
        }
        Ok(batch)
    }
}

/// The result of [`test_rows`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowsReport {
    pub plugin: PluginInfo,
    pub columns: Vec<String>,
    /// The rows as the client would see them: edited, or fully masked with `***` when the
    /// plugin faulted (it runs fail-closed here).
    pub rows: Vec<Vec<Option<String>>>,
    pub findings: Vec<PluginFinding>,
    /// The fault, if the plugin faulted.
    pub fault: Option<Fault>,
}

impl RowsReport {
    /// The report as JSON: `{"plugin": {...}, "columns": [...], "rows": [...],
    /// "findings": [{"entity", "field", "count"}], "fault": null | {"kind", "detail"}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "plugin": {
                "name": self.plugin.name,
                "version": self.plugin.version,
                "hash": self.plugin.hash,
                "hooks": self.plugin.hooks.iter().map(|h| h.as_str()).collect::<Vec<_>>(),
            },
            "columns": self.columns,
            "rows": self.rows,
            "findings": self.findings.iter().map(|f| serde_json::json!({
                "entity": f.entity, "field": f.field, "count": f.count,
            })).collect::<Vec<_>>(),
            "fault": self.fault.as_ref().map(|f| serde_json::json!({
                "kind": f.kind.label(), "detail": f.kind.detail(),
            })),
        })
    }
}

/// Run the plugin's `on-rows` once on the fixture's rows, with `config` as its
/// configuration and the default limits.
pub fn test_rows(
    path: &Path,
    config: &serde_json::Value,
    fixture: &RowsFixture,
) -> Result<RowsReport, PluginError> {
    let batch = fixture.to_batch()?;
    let config = tool_config(path, config);
    let columns = fixture.columns.clone();
    on_own_thread(move || {
        let set = PluginSet::load(&small_host()?, std::slice::from_ref(&config))?;
        let plugin = set
            .info(&config.name)
            .ok_or_else(|| PluginError::Unknown(config.name.clone()))?;
        let mut session = set.chain(&[&config.name])?.session(tool_session());
        let (rows, findings, fault) = match session.on_rows_blocking(batch)? {
            RowsOutcome::Pass { batch, findings, .. } => (batch.to_strings(), findings, None),
            RowsOutcome::MaskAll {
                fault,
                batch,
                findings,
                ..
            } => (batch.masked_all(b"***").to_strings(), findings, Some(fault)),
        };
        Ok(RowsReport {
            plugin,
            columns,
            rows,
            findings,
            fault,
        })
    })
}

/// A sample operation for [`test_operations`].
#[derive(Debug, Clone)]
pub enum SampleOp {
    /// A classified SQL statement (`on-statement`).
    Statement(Statement),
    /// An SSH command (`on-command`): kind `exec`, `shell-line`, `sftp` or `scp`.
    Command(Command),
}

impl SampleOp {
    fn text(&self) -> &str {
        match self {
            SampleOp::Statement(s) => &s.text,
            SampleOp::Command(c) => &c.line,
        }
    }
}

/// Run each sample operation through the plugin (fail-closed, default limits) and report its
/// verdict: `{"plugin": {...}, "results": [{"input", "verdict", "reason"?, "approvers"?,
/// "fault"?}]}`. The second value is whether any call faulted.
pub fn test_operations(
    path: &Path,
    config: &serde_json::Value,
    ops: Vec<SampleOp>,
    session: SessionInfo,
) -> Result<(serde_json::Value, bool), PluginError> {
    let config = tool_config(path, config);
    on_own_thread(move || {
        let set = PluginSet::load(&small_host()?, std::slice::from_ref(&config))?;
        let plugin = set
            .info(&config.name)
            .ok_or_else(|| PluginError::Unknown(config.name.clone()))?;
        let mut s = set.chain(&[&config.name])?.session(session);
        let mut faulted = false;
        let mut results = Vec::with_capacity(ops.len());
        for op in &ops {
            let outcome = match op {
                SampleOp::Statement(st) => s.on_statement_blocking(st),
                SampleOp::Command(c) => s.on_command_blocking(c),
            };
            let r = match outcome.verdict {
                ChainVerdict::Allow => serde_json::json!({"input": op.text(), "verdict": "allow"}),
                ChainVerdict::Deny { reason, .. } => {
                    serde_json::json!({"input": op.text(), "verdict": "deny", "reason": reason})
                }
                ChainVerdict::Hold {
                    approvers, reason, ..
                } => serde_json::json!({
                    "input": op.text(), "verdict": "hold", "approvers": approvers, "reason": reason,
                }),
                ChainVerdict::FailClosed(f) => {
                    faulted = true;
                    serde_json::json!({
                        "input": op.text(), "verdict": "deny",
                        "fault": {"kind": f.kind.label(), "detail": f.kind.detail()},
                    })
                }
            };
            results.push(r);
        }
        let report = serde_json::json!({
            "plugin": {
                "name": plugin.name,
                "version": plugin.version,
                "hash": plugin.hash,
                "hooks": plugin.hooks.iter().map(|h| h.as_str()).collect::<Vec<_>>(),
            },
            "results": results,
        });
        Ok((report, faulted))
    })
}

/// The session description the CLI tools give plugins.
pub fn tool_session() -> SessionInfo {
    SessionInfo {
        session_id: "plugin-test".to_string(),
        principal: "gatehouse-cli".to_string(),
        principal_kind: "user".to_string(),
        on_behalf_of: None,
        groups: Vec::new(),
        target: "plugin-test".to_string(),
        target_tags: Vec::new(),
        protocol: Protocol::Postgres,
        source: "127.0.0.1:0".to_string(),
    }
}

fn tool_config(path: &Path, config: &serde_json::Value) -> PluginConfig {
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "plugin".to_string());
    let mut plugin = PluginConfig::new(name, path);
    plugin.config = config.clone();
    plugin
}

fn small_host() -> Result<Arc<PluginHost>, PluginError> {
    PluginHost::new(HostConfig {
        max_instances: 4,
        max_memory_mb: crate::config::DEFAULT_MEMORY_MB,
        ..HostConfig::default()
    })
}

/// Run `job` on a fresh thread: guest code must not run on an async worker thread (WASI's
/// sync bindings would try to block on the runtime there).
fn on_own_thread<T: Send>(job: impl FnOnce() -> Result<T, PluginError> + Send) -> Result<T, PluginError> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("gatehouse-plugin-tool".to_string())
            .spawn_scoped(scope, job)
            .map_err(|e| PluginError::Engine(format!("cannot start a thread: {e}")))?
            .join()
            .unwrap_or_else(|_| Err(PluginError::Engine("plugin tool thread panicked".into())))
    })
}
