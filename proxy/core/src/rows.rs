//! Result rows on their way to the client, in batches, and the masking stage they pass
//! through (DESIGN.md §3, step 5). Protocol crates build [`RowBatch`]es from wire messages and
//! hand them to the session's [`RowMasker`]; the masker (plugins, column rules) returns edits.

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
    pub table_oid: u32,
    pub column_number: i16,
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
    /// Mask one batch of rows of operation `op`.
    async fn mask(&self, op: u64, batch: &RowBatch) -> Masked;
}
