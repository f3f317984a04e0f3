//! A session's masking stage (DESIGN.md §3 step 5): column rules from Cedar (`read_column`,
//! `@mask`) and content maskers (plugins' `on-rows`), combined.
//!
//! Column rules are decided once per column per session (and again after a policy reload),
//! never per row. Which values they cover:
//! - a result column with a table source (`SELECT ssn FROM customers`): that column's rule;
//! - a column the protocol crate could not name (catalog lookup failed): masked `full`;
//! - a computed column or a view's column, when the statement reads a table with a masked
//!   column and could carry its data (see `gatehouse_pg`'s relay): the strongest rule among
//!   those tables.
//!
//! Text-like values are replaced by the strategy's output; values of other types (numbers,
//! dates, binary-format cells) become NULL, the only type-correct mask. Plugins see the batch
//! as it came from the server; where a column rule and a plugin both edit a cell, the rule
//! wins.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use gatehouse_core::rows::{NULL_CELL, OPAQUE_CELL};
use gatehouse_core::{
    CellEdit, ColumnDesc, ColumnRule, ColumnSource, Finding, MaskStrategy, Masked, RelationKind, RowBatch,
    RowMasker,
};
use gatehouse_mask::Masker;
use gatehouse_policy::{PolicyEngine, SessionPolicy};

use crate::plugins::SessionPlugins;

/// File (in the recorder directory) holding the generated hash key.
pub const HASH_KEY_FILE: &str = "mask-hash.key";

/// The `hash` strategy's key: from config, or generated once and kept in `dir`.
pub fn hash_masker(cfg: &gatehouse_core::config::MaskingConfig, dir: &Path) -> anyhow::Result<Arc<Masker>> {
    let key = match &cfg.hash_key {
        Some(r) => r.resolve().map_err(anyhow::Error::msg)?,
        None => {
            let path = dir.join(HASH_KEY_FILE);
            match std::fs::read_to_string(&path) {
                Ok(k) => k.trim().to_string(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let k = crate::pgcluster::hex_token() + &crate::pgcluster::hex_token();
                    write_private(&path, &k)?;
                    k
                }
                Err(e) => return Err(anyhow::anyhow!("cannot read `{}`: {e}", path.display())),
            }
        }
    };
    if key.is_empty() {
        anyhow::bail!("the masking hash key is empty");
    }
    Ok(Arc::new(
        Masker::new(Some(key.as_bytes())).map_err(anyhow::Error::msg)?,
    ))
}

fn write_private(path: &Path, value: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut f = opts
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create `{}`: {e}", path.display()))?;
    f.write_all(value.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Column rules of one session.
pub struct ColumnRules {
    policy: Arc<PolicyEngine>,
    /// `None`: the session's entities could not be built; every column is masked.
    sp: Option<Arc<SessionPolicy>>,
    masker: Arc<Masker>,
    cache: Mutex<RuleCache>,
}

#[derive(Default)]
struct RuleCache {
    generation: u64,
    rules: HashMap<Arc<ColumnSource>, Option<ColumnRule>>,
}

/// Entries kept per session.
const MAX_CACHED_RULES: usize = 10_000;

/// How one result column is masked, and what the record says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ColumnPlan {
    strategy: MaskStrategy,
    entity: String,
    field: String,
    source: String,
}

impl ColumnRules {
    pub fn new(policy: Arc<PolicyEngine>, sp: Option<Arc<SessionPolicy>>, masker: Arc<Masker>) -> Self {
        ColumnRules {
            policy,
            sp,
            masker,
            cache: Mutex::new(RuleCache::default()),
        }
    }

    /// The rule for one table column (cached; recomputed after a policy reload).
    pub fn rule(&self, col: &Arc<ColumnSource>) -> Option<ColumnRule> {
        let Some(sp) = &self.sp else {
            return Some(ColumnRule {
                strategy: MaskStrategy::Full,
                policy_ids: Vec::new(),
            });
        };
        let generation = self.policy.generation();
        if let Ok(cache) = self.cache.lock()
            && cache.generation == generation
            && let Some(r) = cache.rules.get(col)
        {
            return r.clone();
        }
        let d = self.policy.decide_column(sp, col);
        if !d.errors.is_empty() {
            tracing::warn!(column = %col.qualified(), errors = ?d.errors, "read_column could not be evaluated; masked");
        }
        if let Ok(mut cache) = self.cache.lock() {
            if cache.generation != d.generation || cache.rules.len() >= MAX_CACHED_RULES {
                cache.rules.clear();
                cache.generation = d.generation;
            }
            cache.rules.insert(col.clone(), d.rule.clone());
        }
        d.rule
    }

    fn plan(&self, c: &ColumnDesc, derived: Option<MaskStrategy>) -> Option<ColumnPlan> {
        let derived_plan = |s: MaskStrategy| ColumnPlan {
            strategy: s,
            entity: format!("derived/{s}"),
            field: c.name.clone(),
            source: "masked tables read".to_string(),
        };
        match &c.source {
            Some(src) => {
                let own = self.rule(src).map(|r| ColumnPlan {
                    strategy: r.strategy,
                    entity: format!("column/{}", r.strategy),
                    field: src.qualified(),
                    source: if r.policy_ids.is_empty() {
                        "no policy permits reading".to_string()
                    } else {
                        r.policy_ids.join(",")
                    },
                });
                // A view's column may be any table's column under another name.
                let via = (src.relation != RelationKind::Table)
                    .then_some(derived)
                    .flatten()
                    .map(derived_plan);
                match (own, via) {
                    (Some(a), Some(b)) if b.strategy.strength() > a.strategy.strength() => Some(b),
                    (Some(a), _) => Some(a),
                    (None, b) => b,
                }
            }
            None if c.table_oid != 0 => Some(ColumnPlan {
                strategy: MaskStrategy::Full,
                entity: "column/full".to_string(),
                field: c.name.clone(),
                source: "column source unknown (catalog lookup failed)".to_string(),
            }),
            None => derived.map(derived_plan),
        }
    }

    /// Edits and findings for the columns rules mask in `batch`.
    fn mask(&self, batch: &RowBatch, plans: &[Option<ColumnPlan>]) -> (Vec<CellEdit>, Vec<Finding>) {
        let mut edits = Vec::new();
        let mut counts = vec![0u32; plans.len()];
        for (row, col, value) in batch.cells() {
            let Some(Some(plan)) = plans.get(col as usize) else {
                continue;
            };
            let len = batch
                .lengths
                .get((row as usize) * plans.len() + col as usize)
                .copied()
                .unwrap_or(NULL_CELL);
            if len == NULL_CELL {
                continue;
            }
            let text = batch.columns.get(col as usize).is_some_and(|c| c.text_like) && len != OPAQUE_CELL;
            let value = match value {
                Some(v) if text => Some(self.masker.mask(plan.strategy, v)),
                _ => None,
            };
            edits.push(CellEdit {
                row,
                column: col,
                value,
            });
            if let Some(n) = counts.get_mut(col as usize) {
                *n += 1;
            }
        }
        let findings = plans
            .iter()
            .zip(counts)
            .filter_map(|(p, n)| {
                let p = p.as_ref()?;
                (n > 0).then(|| Finding {
                    entity: p.entity.clone(),
                    field: p.field.clone(),
                    count: n,
                    source: p.source.clone(),
                })
            })
            .collect();
        (edits, findings)
    }
}

/// The session's masking stage.
pub struct SessionMasker {
    rules: Option<ColumnRules>,
    /// Plugins with an `on-rows` hook.
    plugins: Option<Arc<SessionPlugins>>,
}

impl SessionMasker {
    /// `None` when nothing would mask this session's results.
    pub fn new(rules: Option<ColumnRules>, plugins: Option<Arc<SessionPlugins>>) -> Option<Self> {
        let plugins = plugins.filter(|p| p.wants_rows());
        if rules.is_none() && plugins.is_none() {
            return None;
        }
        Some(SessionMasker { rules, plugins })
    }

    fn plans(&self, columns: &[ColumnDesc], derived: Option<MaskStrategy>) -> Vec<Option<ColumnPlan>> {
        match &self.rules {
            Some(r) => columns.iter().map(|c| r.plan(c, derived)).collect(),
            None => vec![None; columns.len()],
        }
    }
}

#[async_trait]
impl RowMasker for SessionMasker {
    fn needs(&self, columns: &[ColumnDesc], derived: Option<MaskStrategy>) -> bool {
        self.plugins.is_some() || self.plans(columns, derived).iter().any(Option::is_some)
    }

    async fn mask(&self, op: u64, batch: &RowBatch, derived: Option<MaskStrategy>) -> Masked {
        let plans = self.plans(&batch.columns, derived);
        let mut out = match &self.plugins {
            Some(p) => p.mask(op, batch, derived).await,
            None => Masked::default(),
        };
        if out.mask_all.is_some() {
            return out;
        }
        if let Some(rules) = &self.rules
            && plans.iter().any(Option::is_some)
        {
            let (edits, findings) = rules.mask(batch, &plans);
            // The rule wins over a plugin's edit of the same cell.
            out.edits
                .retain(|e| plans.get(e.column as usize).is_none_or(Option::is_none));
            out.edits.extend(edits);
            out.findings.extend(findings);
        }
        out
    }

    fn column_rules(&self, columns: &[Arc<ColumnSource>]) -> Vec<Option<ColumnRule>> {
        match &self.rules {
            Some(r) => columns.iter().map(|c| r.rule(c)).collect(),
            None => vec![None; columns.len()],
        }
    }

    fn inspects_content(&self) -> bool {
        self.plugins.is_some()
    }

    fn has_column_rules(&self) -> bool {
        self.rules.is_some()
    }
}
