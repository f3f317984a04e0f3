//! `test-hostile`: a deliberately misbehaving plugin for Gatehouse's fault tests. Never deploy it.
//!
//! Config: `{"mode": "...", "bytes": N}`; the misbehaviour happens in `on-statement` and
//! `on-rows` (never in `describe`, so the plugin loads):
//!
//! - `ok` (default): allow / no edits;
//! - `loop`: spin forever (the host's epoch deadline must stop it);
//! - `memory-bomb`: allocate 16 MiB blocks until allocation fails (a trap);
//! - `panic`: panic (a trap: `wasm32-wasip2` aborts on panic);
//! - `bad-edit`: `on-rows` returns an edit for a row and a column out of range;
//!   `on-statement` returns a hold with no approvers (nobody could ever approve it);
//! - `huge-output`: `on-rows` returns edits totalling `bytes` (default 32 MiB), `on-statement` a
//!   deny reason of `bytes` bytes;
//! - `error`: both hooks return an error;
//! - `init-error`: the plugin fails to initialise (every hook call returns that error).
//!
//! `"hooks": ["statement"]` or `["rows"]` limits the misbehaviour to that hook.

use gatehouse_plugin_sdk::{
    CellEdit, Config, OnRows, OnStatement, Plugin, RowBatch, RowsResult, SessionInfo, Statement, Verdict,
    export_plugin,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    Ok,
    Loop,
    MemoryBomb,
    Panic,
    BadEdit,
    HugeOutput,
    Error,
    InitError,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostileConfig {
    pub mode: Mode,
    pub bytes: Option<usize>,
    /// Which hooks misbehave (default both); the others allow / return no edits.
    pub hooks: Option<Vec<HookSel>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookSel {
    Statement,
    Rows,
}

pub struct Hostile {
    mode: Mode,
    bytes: usize,
    hooks: Option<Vec<HookSel>>,
}

/// Above the host's default 16 MiB output cap, below its default 64 MiB memory cap, so that the
/// fault is "huge output" rather than "out of memory".
const DEFAULT_BYTES: usize = 32 << 20;

impl Plugin for Hostile {
    const NAME: &'static str = "test-hostile";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(config: &Config) -> Result<Self, String> {
        let c: HostileConfig = config.parse()?;
        if c.mode == Mode::InitError {
            return Err("test-hostile: init-error mode".to_owned());
        }
        Ok(Hostile {
            mode: c.mode,
            bytes: c.bytes.unwrap_or(DEFAULT_BYTES),
            hooks: c.hooks,
        })
    }
}

impl Hostile {
    fn hostile_in(&self, hook: HookSel) -> bool {
        self.hooks.as_ref().is_none_or(|h| h.contains(&hook))
    }

    /// The shared misbehaviours; returns only for the modes handled by the hooks themselves.
    fn misbehave(&self) -> Result<(), String> {
        match self.mode {
            Mode::Loop => spin(),
            Mode::MemoryBomb => bomb(),
            Mode::Panic => deliberate_panic(),
            Mode::Error => Err("test-hostile: error mode".to_owned()),
            Mode::Ok | Mode::BadEdit | Mode::HugeOutput | Mode::InitError => Ok(()),
        }
    }
}

fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

fn bomb() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // Touch the memory so that it is really committed.
        hoard.push(vec![0xA5; 16 << 20]);
        std::hint::black_box(&hoard);
    }
}

#[allow(clippy::panic)]
fn deliberate_panic() -> ! {
    panic!("test-hostile: deliberate panic")
}

impl OnStatement for Hostile {
    fn on_statement(&self, _session: &SessionInfo, _stmt: &Statement) -> Result<Verdict, String> {
        if !self.hostile_in(HookSel::Statement) {
            return Ok(Verdict::Allow);
        }
        self.misbehave()?;
        Ok(match self.mode {
            Mode::BadEdit => Verdict::Hold(gatehouse_plugin_sdk::HoldRequest {
                approvers: Vec::new(),
                reason: "test-hostile: hold nobody can approve".to_owned(),
            }),
            Mode::HugeOutput => Verdict::Deny("x".repeat(self.bytes)),
            _ => Verdict::Allow,
        })
    }
}

impl OnRows for Hostile {
    fn on_rows(&self, _session: &SessionInfo, batch: &RowBatch) -> Result<RowsResult, String> {
        if !self.hostile_in(HookSel::Rows) {
            return Ok(RowsResult {
                edits: Vec::new(),
                findings: Vec::new(),
            });
        }
        self.misbehave()?;
        let edits = match self.mode {
            Mode::BadEdit => vec![
                CellEdit {
                    row: batch.rows.saturating_add(1000),
                    column: 0,
                    value: Some(b"bad".to_vec()),
                },
                CellEdit {
                    row: 0,
                    column: (batch.columns.len() as u32).saturating_add(7),
                    value: None,
                },
            ],
            Mode::HugeOutput => {
                // 1 MiB values, as many as it takes, on cell (0, 0) over and over.
                let chunk = 1 << 20;
                (0..self.bytes.div_ceil(chunk))
                    .map(|_| CellEdit {
                        row: 0,
                        column: 0,
                        value: Some(vec![b'x'; chunk]),
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        Ok(RowsResult {
            edits,
            findings: Vec::new(),
        })
    }
}

export_plugin!(Hostile);

#[cfg(test)]
mod tests {
    use gatehouse_plugin_sdk::rows::batch_from_rows;
    use gatehouse_plugin_sdk::testing::{session, statement};

    use super::*;

    fn hostile(json: &str) -> Result<Hostile, String> {
        Hostile::new(&Config::from_json(json))
    }

    #[test]
    fn harmless_modes_behave_as_documented() {
        let s = session();
        let st = statement("SELECT 1", "select", "SelectStmt");
        let b = batch_from_rows(&["a"], &[vec![Some("x")]]);
        let ok = hostile("{}").unwrap();
        assert!(matches!(ok.on_statement(&s, &st), Ok(Verdict::Allow)));
        assert!(ok.on_rows(&s, &b).unwrap().edits.is_empty());
        let bad = hostile(r#"{"mode": "bad-edit"}"#).unwrap();
        assert!(
            bad.on_rows(&s, &b)
                .unwrap()
                .edits
                .iter()
                .all(|e| e.row >= b.rows || e.column >= 1)
        );
        assert!(matches!(bad.on_statement(&s, &st), Ok(Verdict::Hold(h)) if h.approvers.is_empty()));
        let huge = hostile(r#"{"mode": "huge-output", "bytes": 3000000}"#).unwrap();
        let total: usize = huge
            .on_rows(&s, &b)
            .unwrap()
            .edits
            .iter()
            .map(|e| e.value.as_ref().map_or(0, Vec::len))
            .sum();
        assert!(total >= 3_000_000);
        assert!(hostile(r#"{"mode": "error"}"#).unwrap().on_rows(&s, &b).is_err());
        assert!(hostile(r#"{"mode": "init-error"}"#).is_err());
        assert!(hostile(r#"{"mode": "nope"}"#).is_err());
        let rows_only = hostile(r#"{"mode": "error", "hooks": ["rows"]}"#).unwrap();
        assert!(matches!(rows_only.on_statement(&s, &st), Ok(Verdict::Allow)));
        assert!(rows_only.on_rows(&s, &b).is_err());
        let info = gatehouse_plugin_sdk::describe!(Hostile);
        assert_eq!(
            info.hooks,
            [
                gatehouse_plugin_sdk::Hook::OnStatement,
                gatehouse_plugin_sdk::Hook::OnRows
            ]
        );
    }
}
