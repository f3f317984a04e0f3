//! Result rows on their way to the client, in batches, and the masking stage they pass
//! through (DESIGN.md §3, step 5). Protocol crates build [`RowBatch`]es from wire messages and
//! hand them to the session's [`RowMasker`]; the masker (plugins, column rules) returns edits.

use std::sync::Arc;

use async_trait::async_trait;

/// Length of a cell that is SQL NULL.
pub const NULL_CELL: i32 = -1;
/// Length of a cell whose bytes are not passed to maskers (a binary-format value of a
/// non-text type). Such cells can only be masked whole.
pub const OPAQUE_CELL: i32 = -2;

/// A result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDesc {
    pub name: String,
    pub type_oid: u32,
    /// Source table OID and attribute number, 0 when the column is not a plain table column.
    pub table_oid: u32,
    pub column_number: i16,
    /// The named table column the value comes from, when the protocol crate could resolve it
    /// (PostgreSQL: a cached catalog lookup of `table_oid`/`column_number`). `None` with a
    /// non-zero `table_oid` means the lookup failed: column rules must fail closed.
    pub source: Option<Arc<ColumnSource>>,
    /// Whether a replacement string is a valid value of the column's type (text, varchar, …).
    /// Values of other types can only be masked by making them NULL.
    pub text_like: bool,
}

/// Where a result column's values come from, by name: the resource of a `read_column` decision.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ColumnSource {
    pub schema: String,
    /// The relation's name; for a partition, its root partitioned table.
    pub table: String,
    pub column: String,
    pub relation: RelationKind,
}

impl ColumnSource {
    /// `schema.table`.
    pub fn qualified_table(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// `schema.table.column`: the Cedar `Column` entity id.
    pub fn qualified(&self) -> String {
        format!("{}.{}.{}", self.schema, self.table, self.column)
    }
}

/// What kind of relation a column belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelationKind {
    /// A table (also a partitioned table, or a partition reported as its root).
    Table,
    /// A view or materialized view: its columns may carry any table's values.
    View,
    /// A foreign table, or anything else.
    Other,
}

impl RelationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RelationKind::Table => "table",
            RelationKind::View => "view",
            RelationKind::Other => "other",
        }
    }
}

/// A batch of rows: cells in row-major order, each cell's bytes concatenated in `data`, its
/// length in `lengths` ([`NULL_CELL`], [`OPAQUE_CELL`] or the byte count).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowBatch {
    pub columns: Vec<ColumnDesc>,
    pub rows: u32,
    pub lengths: Vec<i32>,
    pub data: Vec<u8>,
}

impl RowBatch {
    pub fn new(columns: Vec<ColumnDesc>) -> Self {
        RowBatch {
            columns,
            ..Default::default()
        }
    }

    /// Append one row. `cells` must have one entry per column: `None` for NULL,
    /// `Some(None)` for an opaque cell, `Some(Some(bytes))` otherwise.
    pub fn push_row<'a>(&mut self, cells: impl IntoIterator<Item = Option<Option<&'a [u8]>>>) {
        for c in cells {
            match c {
                None => self.lengths.push(NULL_CELL),
                Some(None) => self.lengths.push(OPAQUE_CELL),
                Some(Some(b)) => {
                    self.lengths.push(i32::try_from(b.len()).unwrap_or(i32::MAX));
                    self.data.extend_from_slice(b);
                }
            }
        }
        self.rows += 1;
    }

    /// Cells as (row, column, value) where value is `None` for NULL/opaque cells.
    pub fn cells(&self) -> impl Iterator<Item = (u32, u32, Option<&[u8]>)> + '_ {
        let ncols = self.columns.len().max(1) as u32;
        let mut off = 0usize;
        self.lengths.iter().enumerate().map(move |(i, &len)| {
            let row = i as u32 / ncols;
            let col = i as u32 % ncols;
            if len >= 0 {
                let end = off + len as usize;
                let v = self.data.get(off..end);
                off = end;
                (row, col, v)
            } else {
                (row, col, None)
            }
        })
    }
}

/// A replaced cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellEdit {
    pub row: u32,
    pub column: u32,
    /// `None` makes the cell NULL.
    pub value: Option<Vec<u8>>,
}

/// What a masker found: entity type, column, count. Never the value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Finding {
    pub entity: String,
    pub field: String,
    pub count: u32,
    /// Which plugin (or rule) found it.
    pub source: String,
}

/// A masker fault (a plugin trapped, timed out, returned garbage...).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MaskFault {
    pub plugin: String,
    /// Content hash (sha256 hex) of the plugin that faulted.
    pub hash: String,
    pub kind: String,
    pub message: String,
}

/// The masking stage's answer for one batch.
#[derive(Debug, Clone, Default)]
pub struct Masked {
    /// Cells to replace before the batch is forwarded.
    pub edits: Vec<CellEdit>,
    pub findings: Vec<Finding>,
    /// Set when a masker faulted and fails closed: every cell of the batch must be masked.
    pub mask_all: Option<MaskFault>,
    /// Faults of fail-open maskers (the batch went through as the others left it).
    pub faults: Vec<MaskFault>,
}

/// The session's masking stage for result rows.
#[async_trait]
pub trait RowMasker: Send + Sync {
    /// Whether rows of this shape must pass [`RowMasker::mask`] at all (asked once per result;
    /// `false` lets the protocol crate forward them untouched). `derived` is the strongest
    /// column rule among the tables the operation reads, for columns without a plain-table
    /// source (see [`RowMasker::mask`]).
    fn needs(&self, columns: &[ColumnDesc], derived: Option<gatehouse_mask::Strategy>) -> bool {
        let _ = (columns, derived);
        true
    }

    /// Mask one batch of rows of operation `op`. `derived`: as in [`RowMasker::needs`].
    async fn mask(&self, op: u64, batch: &RowBatch, derived: Option<gatehouse_mask::Strategy>) -> Masked;

    /// The column rules that apply to these table columns for this session (`None` entries
    /// are readable in the clear). Used before a statement runs: for the tables it reads (to
    /// mask values derived from them) and to refuse results that cannot pass masking (COPY TO).
    fn column_rules(&self, columns: &[Arc<ColumnSource>]) -> Vec<Option<ColumnRule>> {
        vec![None; columns.len()]
    }

    /// Whether content maskers (plugins) inspect values, beyond column rules.
    fn inspects_content(&self) -> bool {
        true
    }

    /// Whether column rules are active: result columns must be named (their source table
    /// resolved) before [`RowMasker::needs`] and [`RowMasker::mask`] see them.
    fn has_column_rules(&self) -> bool {
        false
    }
}

/// A column the session may not read in the clear, and how it is masked instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnRule {
    pub strategy: gatehouse_mask::Strategy,
    /// The policies that masked it.
    pub policy_ids: Vec<String>,
}
