//! Plugins in the guard pipeline (DESIGN.md §3, step 2 and 5): the target's plugin chain
//! decides each statement Cedar allowed, and masks result rows batch by batch.
//!
//! Faults fail closed unless a plugin is configured `fail = "open"`: a statement is denied, a
//! batch's values are all masked. Every plugin run is recorded with the plugin's content hash.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use gatehouse_core::config::{Config, FailMode};
use gatehouse_core::rows::{NULL_CELL, OPAQUE_CELL};
use gatehouse_core::{
    CellEdit, Finding, MaskFault, Masked, RowBatch, RowMasker, SessionCtx, SqlStatement, Verdict,
};
use gatehouse_plugin_host as ph;
use gatehouse_recorder::PluginRecord;

/// Loaded plugins and each target's chain.
pub struct Plugins {
    set: Arc<ph::PluginSet>,
    chains: HashMap<String, ph::Chain>,
}

impl Plugins {
    /// Load and validate every configured plugin; `None` when none is configured.
    pub fn load(cfg: &Config) -> Result<Option<Plugins>> {
        if cfg.plugins.is_empty() {
            return Ok(None);
        }
        let configs = cfg
            .plugins
            .iter()
            .map(|p| {
                Ok(ph::PluginConfig {
                    name: p.name.get_ref().clone(),
                    path: p.path.clone(),
                    fail: match p.fail {
                        FailMode::Closed => ph::FailMode::Closed,
                        FailMode::Open => ph::FailMode::Open,
                    },
                    config: serde_json::to_value(&p.config)?,
                    timeout_ms: p.timeout_ms,
                    memory_mb: p.memory_mb,
                    fuel: p.fuel,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut hc = ph::HostConfig::for_plugins(&configs);
        hc.quarantine_faults = cfg.plugin_host.quarantine_faults;
        hc.quarantine_window_secs = cfg.plugin_host.quarantine_window_secs;
        hc.quarantine_secs = cfg.plugin_host.quarantine_secs;
        hc.max_memory_mb = hc
            .max_memory_mb
            .max(configs.iter().map(|c| c.memory_mb).max().unwrap_or(0));
        let host = ph::PluginHost::new(hc).context("starting the plugin engine")?;
        let set = ph::PluginSet::load(&host, &configs).context("loading plugins")?;
        let mut chains = HashMap::new();
        for t in &cfg.targets {
            if t.plugins.is_empty() {
                continue;
            }
            let names: Vec<&str> = t.plugins.iter().map(|p| p.get_ref().as_str()).collect();
            let chain = set
                .chain(&names)
                .with_context(|| format!("target `{}`: plugin chain", t.name.get_ref()))?;
            chains.insert(t.name.get_ref().clone(), chain);
        }
        if cfg.plugin_host.reload_interval_ms > 0 {
            set.watch(Duration::from_millis(cfg.plugin_host.reload_interval_ms))
                .context("starting the plugin watcher")?;
        }
        for name in set.names() {
            if let Some(info) = set.info(&name) {
                tracing::info!(plugin = %name, "plugin loaded: {info:?}");
            }
        }
        Ok(Some(Plugins { set, chains }))
    }

    /// The plugin state of a new session, if its target has a chain.
    pub fn session(&self, ctx: &SessionCtx) -> Option<Arc<SessionPlugins>> {
        let chain = self.chains.get(&ctx.target.name)?;
        let info = ph::SessionInfo {
            session_id: ctx.session_id.clone(),
            principal: ctx.principal.id.clone(),
            principal_kind: ctx.principal.kind.as_str().to_string(),
            on_behalf_of: ctx.principal.on_behalf_of.clone(),
            groups: ctx.principal.groups.clone(),
            target: ctx.target.name.clone(),
            target_tags: ctx
                .target
                .tags
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            protocol: ph::Protocol::Postgres,
            source: ctx.source_ip.to_string(),
        };
        Some(Arc::new(SessionPlugins {
            wants_statement: chain.wants(ph::Hook::OnStatement),
            wants_rows: chain.wants(ph::Hook::OnRows),
            session: tokio::sync::Mutex::new(chain.session(info)),
        }))
    }

    pub fn set(&self) -> &Arc<ph::PluginSet> {
        &self.set
    }
}

/// One session's plugin instances. Statement checks and row batches share them (in turn).
pub struct SessionPlugins {
    session: tokio::sync::Mutex<ph::PluginSession>,
    wants_statement: bool,
    wants_rows: bool,
}

fn record(run: &ph::PluginRun) -> PluginRecord {
    let (result, detail) = match &run.result {
        ph::RunResult::Verdict(v) | ph::RunResult::Http { verdict: v, .. } => match v {
            ph::Verdict::Allow => ("allow".to_string(), String::new()),
            ph::Verdict::Deny(r) => ("deny".to_string(), r.clone()),
            ph::Verdict::Hold(h) => (
                "hold".to_string(),
                format!("{} (approvers: {})", h.reason, h.approvers.join(", ")),
            ),
        },
        ph::RunResult::Rows { edits, findings } => (
            "rows".to_string(),
            format!("{edits} cells edited, {findings} findings"),
        ),
        ph::RunResult::Fault(f) => (format!("fault:{}", f.kind.label()), f.to_string()),
    };
    PluginRecord {
        plugin: run.plugin.name.to_string(),
        hash: run.plugin.hash.to_string(),
        hook: run.hook.as_str().to_string(),
        result,
        detail,
        elapsed_us: run.elapsed.as_micros() as u64,
    }
}

fn mask_fault(f: &ph::Fault) -> MaskFault {
    MaskFault {
        plugin: f.plugin.name.to_string(),
        hash: f.plugin.hash.to_string(),
        kind: f.kind.label().to_string(),
        message: f.to_string(),
    }
}

impl SessionPlugins {
    pub fn wants_rows(&self) -> bool {
        self.wants_rows
    }

    /// Run the chain's `on-statement` hooks. Returns what the chain said and what each
    /// plugin did, for the decision record.
    pub async fn on_statement(&self, s: &SqlStatement) -> (StatementOutcome, Vec<PluginRecord>) {
        if !self.wants_statement {
            return (StatementOutcome::Allow, Vec::new());
        }
        let out = self.session.lock().await.on_statement(plugin_statement(s)).await;
        let runs = out.runs.iter().map(record).collect();
        let deny = |reason: String| {
            StatementOutcome::Deny(Verdict::Deny {
                reason,
                policy_ids: Vec::new(),
            })
        };
        let verdict = match out.verdict {
            ph::ChainVerdict::Allow => StatementOutcome::Allow,
            ph::ChainVerdict::Deny { plugin, reason } => {
                deny(format!("denied by plugin `{}`: {reason}", plugin.name))
            }
            ph::ChainVerdict::Hold {
                plugin,
                approvers,
                reason,
            } => StatementOutcome::Hold {
                approvers,
                reason: format!("plugin `{}`: {reason}", plugin.name),
            },
            ph::ChainVerdict::FailClosed(fault) => deny(format!(
                "plugin `{}` failed ({}); statement refused",
                fault.plugin.name,
                fault.kind.label()
            )),
        };
        (verdict, runs)
    }
}

/// What a target's plugin chain said about a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatementOutcome {
    Allow,
    Deny(Verdict),
    /// Needs approval by a member of one of `approvers`; `reason` names the plugin.
    Hold {
        approvers: Vec<String>,
        reason: String,
    },
}

fn to_plugin_batch(b: &RowBatch) -> ph::RowBatch {
    ph::RowBatch {
        columns: b
            .columns
            .iter()
            .map(|c| ph::Column {
                name: c.name.clone(),
                type_oid: c.type_oid,
                table_oid: c.table_oid,
                column_number: c.column_number,
            })
            .collect(),
        rows: b.rows,
        lengths: b
            .lengths
            .iter()
            .map(|&l| match l {
                NULL_CELL => ph::NULL_LEN,
                OPAQUE_CELL => ph::BINARY_LEN,
                n => n,
            })
            .collect(),
        data: b.data.clone(),
    }
}

/// The cells that differ between what the plugins were given and what they returned.
fn diff(before: &RowBatch, after: &ph::RowBatch) -> Vec<CellEdit> {
    let ncols = before.columns.len().max(1) as u32;
    let mut edits = Vec::new();
    let mut a_off = 0usize;
    let mut b_off = 0usize;
    for (i, (&la, &lb)) in before.lengths.iter().zip(&after.lengths).enumerate() {
        let va = (la >= 0).then(|| {
            let v = before.data.get(a_off..a_off + la as usize);
            a_off += la as usize;
            v
        });
        let vb = (lb >= 0).then(|| {
            let v = after.data.get(b_off..b_off + lb as usize);
            b_off += lb as usize;
            v
        });
        let changed = match (va, vb) {
            (Some(x), Some(y)) => x != y,
            (None, None) => la != lb,
            _ => true,
        };
        if changed {
            edits.push(CellEdit {
                row: i as u32 / ncols,
                column: i as u32 % ncols,
                value: vb.flatten().map(<[u8]>::to_vec),
            });
        }
    }
    edits
}

#[async_trait]
impl RowMasker for SessionPlugins {
    async fn mask(
        &self,
        _op: u64,
        batch: &RowBatch,
        _derived: Option<gatehouse_core::MaskStrategy>,
    ) -> Masked {
        let input = to_plugin_batch(batch);
        let outcome = self.session.lock().await.on_rows(input).await;
        let findings = |f: &[ph::PluginFinding]| -> Vec<Finding> {
            f.iter()
                .map(|x| Finding {
                    entity: x.entity.clone(),
                    field: x.field.clone(),
                    count: x.count,
                    source: x.plugin.name.to_string(),
                })
                .collect()
        };
        let open_faults = |runs: &[ph::PluginRun]| -> Vec<MaskFault> {
            runs.iter()
                .filter_map(|r| match &r.result {
                    ph::RunResult::Fault(f) => Some(mask_fault(f)),
                    _ => None,
                })
                .collect()
        };
        match outcome {
            Ok(ph::RowsOutcome::Pass {
                batch: out,
                findings: f,
                runs,
            }) => Masked {
                edits: diff(batch, &out),
                findings: findings(&f),
                mask_all: None,
                faults: open_faults(&runs),
            },
            Ok(ph::RowsOutcome::MaskAll {
                fault,
                findings: f,
                runs,
                ..
            }) => {
                let mf = mask_fault(&fault);
                let mut faults = open_faults(&runs);
                faults.retain(|x| x != &mf);
                Masked {
                    edits: Vec::new(),
                    findings: findings(&f),
                    mask_all: Some(mf),
                    faults,
                }
            }
            Err(e) => Masked {
                mask_all: Some(MaskFault {
                    plugin: "gatehouse".into(),
                    hash: String::new(),
                    kind: "batch".into(),
                    message: e.to_string(),
                }),
                ..Masked::default()
            },
        }
    }
}

/// A classified statement as plugins see it.
pub fn plugin_statement(s: &SqlStatement) -> ph::Statement {
    ph::Statement {
        text: s.text.clone(),
        kind: s.kind().as_str().to_string(),
        command: s.command.clone(),
        tables_read: s.tables_read.clone(),
        tables_written: s.tables_written.clone(),
        functions: s.functions.clone(),
        has_where: s.has_where,
    }
}
