//! `pii-mask`: masks personal data and secrets in PostgreSQL result rows (`on-rows`).
//!
//! Detects, in text cells, payment card numbers, US SSNs, e-mail addresses, phone numbers,
//! IBANs, IPv4/IPv6 addresses, JWTs, AWS access key ids and high-entropy secrets (see
//! [`detect`]), inside free text as well as whole cells, and replaces each occurrence according
//! to its entity's strategy (full `****`, partial keep-last-4, or keyed hash token). Findings are
//! reported per (entity, column) with counts, never values.
//!
//! Config (JSON, all optional but `hash_key` when a hash strategy is used):
//!
//! ```json
//! {
//!   "entities": ["credit-card", "us-ssn", "email", "phone", "iban", "ipv4", "ipv6",
//!                "jwt", "aws-access-key", "secret"],
//!   "strategy": "partial",
//!   "strategies": {"email": "hash"},
//!   "hash_key": "a long random string",
//!   "columns": {"ssn": "us-ssn", "api_token": "secret"}
//! }
//! ```
//!
//! - `entities`: which to detect (default all; `ip-address` = `ipv4` + `ipv6`);
//! - `strategy`: default strategy, `full` | `partial` | `hash` (default `partial`);
//! - `strategies`: per-entity override;
//! - `hash_key`: HMAC key of the `hash` strategy; required (the plugin fails to start) if any
//!   entity uses `hash`;
//! - `columns`: column name (case-insensitive) → entity: every non-NULL value of that column is
//!   masked whole as that entity, without detection.
//!
//! Cells of text-like types (text, varchar, char, name, json, jsonb, xml, text arrays, unknown)
//! are masked in place. A cell of another type (numeric, inet, ...) in which something is found
//! becomes NULL, because a mask would not be a valid value of its type.

pub mod detect;

use std::collections::BTreeMap;

use gatehouse_plugin_sdk::mask::{Masker, Strategy};
use gatehouse_plugin_sdk::rows::{BatchView, CellValue};
use gatehouse_plugin_sdk::{
    CellEdit, Column, Config, Finding, OnRows, Plugin, RowBatch, RowsResult, SessionInfo, export_plugin,
};

use detect::{Detector, ENTITY_COUNT, Entity, EntitySet, Hints, Span};

/// The plugin's JSON config.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PiiConfig {
    pub entities: Option<Vec<String>>,
    pub strategy: Option<Strategy>,
    pub strategies: BTreeMap<String, Strategy>,
    pub hash_key: Option<String>,
    pub columns: BTreeMap<String, String>,
}

/// The plugin, with its validated settings.
#[derive(Debug, Clone)]
pub struct PiiMask {
    detector: Detector,
    strategies: [Strategy; ENTITY_COUNT],
    masker: Masker,
    /// Lower-cased column name → entity masked whole.
    columns: BTreeMap<String, Entity>,
}

impl PiiMask {
    pub fn from_config(config: &PiiConfig) -> Result<Self, String> {
        let enabled = match &config.entities {
            None => EntitySet::all(),
            Some(names) => {
                let mut set = EntitySet::empty();
                for name in names {
                    set = set.union(EntitySet::parse_name(name).ok_or_else(|| unknown_entity(name))?);
                }
                set
            }
        };
        let default = config.strategy.unwrap_or(Strategy::Partial);
        let mut strategies = [default; ENTITY_COUNT];
        for (name, strategy) in &config.strategies {
            let set = EntitySet::parse_name(name).ok_or_else(|| unknown_entity(name))?;
            for e in set.iter() {
                strategies[e.index()] = *strategy;
            }
        }
        let mut columns = BTreeMap::new();
        for (column, name) in &config.columns {
            let entity = Entity::from_name(name)
                .or_else(|| EntitySet::parse_name(name).and_then(|s| s.iter().next()))
                .ok_or_else(|| unknown_entity(name))?;
            columns.insert(column.to_ascii_lowercase(), entity);
        }
        let uses_hash = enabled
            .iter()
            .chain(columns.values().copied())
            .any(|e| strategies[e.index()] == Strategy::Hash);
        let key = config.hash_key.as_deref().filter(|k| !k.is_empty());
        if uses_hash && key.is_none() {
            return Err(
                "pii-mask: `hash_key` is required when an entity uses the `hash` strategy".to_owned(),
            );
        }
        let masker = Masker::new(key.map(str::as_bytes))?;
        Ok(PiiMask {
            detector: Detector::new(enabled),
            strategies,
            masker,
            columns,
        })
    }

    pub fn strategy(&self, entity: Entity) -> Strategy {
        self.strategies[entity.index()]
    }

    /// Masks a batch: edits for the changed cells, findings per (entity, column).
    pub fn mask_batch(&self, batch: &RowBatch) -> Result<RowsResult, String> {
        let view = BatchView::new(batch)?;
        let ncols = view.columns().len();
        let plans: Vec<ColumnPlan> = view.columns().iter().map(|c| self.plan(c)).collect();
        let mut counts = vec![0u32; ncols * ENTITY_COUNT];
        let mut spans: Vec<Span> = Vec::with_capacity(16);
        let mut edits = Vec::new();
        for cell in view.cells() {
            let CellValue::Text(text) = cell.value else {
                continue;
            };
            let col = cell.column as usize;
            let Some(plan) = plans.get(col) else { continue };
            if let Some(entity) = plan.whole {
                let n = &mut counts[col * ENTITY_COUNT + entity.index()];
                *n = n.saturating_add(1);
                let value = plan
                    .text_like
                    .then(|| self.masker.mask(self.strategy(entity), text));
                edits.push(CellEdit {
                    row: cell.row,
                    column: cell.column,
                    value,
                });
                continue;
            }
            self.detector.scan(text, plan.hints, &mut spans);
            if spans.is_empty() {
                continue;
            }
            for s in &spans {
                let n = &mut counts[col * ENTITY_COUNT + s.entity.index()];
                *n = n.saturating_add(1);
            }
            let value = plan.text_like.then(|| self.apply(text, &spans));
            edits.push(CellEdit {
                row: cell.row,
                column: cell.column,
                value,
            });
        }
        let mut findings = Vec::new();
        for (col, column) in view.columns().iter().enumerate() {
            for entity in Entity::ALL {
                let count = counts[col * ENTITY_COUNT + entity.index()];
                if count > 0 {
                    findings.push(Finding {
                        entity: entity.name().to_owned(),
                        field: column.name.clone(),
                        count,
                    });
                }
            }
        }
        Ok(RowsResult { edits, findings })
    }

    /// The masked value of `text` with its `spans` replaced.
    pub fn apply(&self, text: &[u8], spans: &[Span]) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len() + 8);
        let mut pos = 0;
        for s in spans {
            out.extend_from_slice(&text[pos..s.start]);
            self.masker
                .mask_into(self.strategy(s.entity), &text[s.start..s.end], &mut out);
            pos = s.end;
        }
        out.extend_from_slice(&text[pos..]);
        out
    }

    fn plan(&self, column: &Column) -> ColumnPlan {
        let whole = self.columns.get(&column.name.to_ascii_lowercase()).copied();
        ColumnPlan {
            whole,
            hints: Hints::from_column_name(&column.name),
            text_like: is_text_like(column.type_oid),
        }
    }
}

struct ColumnPlan {
    whole: Option<Entity>,
    hints: Hints,
    text_like: bool,
}

fn unknown_entity(name: &str) -> String {
    let known: Vec<&str> = Entity::ALL.iter().map(|e| e.name()).collect();
    format!(
        "pii-mask: unknown entity `{name}` (known: {}, ip-address)",
        known.join(", ")
    )
}

/// Types whose text form can hold a masked value: text, varchar, bpchar, char, name, json,
/// jsonb, xml, unknown, and arrays of text, varchar, json, jsonb (OID 0: not described).
pub fn is_text_like(oid: u32) -> bool {
    matches!(
        oid,
        0 | 18 | 19 | 25 | 114 | 142 | 705 | 1042 | 1043 | 3802 | 199 | 1009 | 1014 | 1015 | 3807
    )
}

impl Plugin for PiiMask {
    const NAME: &'static str = "pii-mask";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(config: &Config) -> Result<Self, String> {
        PiiMask::from_config(&config.parse()?)
    }
}

impl OnRows for PiiMask {
    fn on_rows(&self, _session: &SessionInfo, batch: &RowBatch) -> Result<RowsResult, String> {
        self.mask_batch(batch)
    }
}

export_plugin!(PiiMask);

#[cfg(test)]
mod tests;
