//! Reading a [`RowBatch`] and building a [`RowsResult`].
//!
//! A batch carries its cells in row-major order: cell `(row, column)` is number
//! `row * columns.len() + column`; `lengths[i]` is its length in bytes (`-1` for SQL NULL, `-2`
//! for a binary-format cell that is not passed), and the bytes of all cells with a length ≥ 0
//! are concatenated in `data`. [`BatchView::new`] checks that layout once, after which iterating
//! the cells allocates nothing.

use crate::{CellEdit, Column, Finding, RowBatch, RowsResult};

/// Length value of an SQL NULL cell.
pub const NULL_LENGTH: i32 = -1;
/// Length value of a binary-format cell whose bytes are not passed to plugins.
pub const BINARY_LENGTH: i32 = -2;

/// The value of one cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellValue<'a> {
    /// SQL NULL.
    Null,
    /// A binary-format cell: not passed to plugins (Gatehouse masks it on its own if needed).
    Binary,
    /// A text-format cell's bytes (in the client encoding, usually UTF-8).
    Text(&'a [u8]),
}

impl<'a> CellValue<'a> {
    /// The text bytes, if this is a text cell.
    pub fn text(self) -> Option<&'a [u8]> {
        match self {
            CellValue::Text(bytes) => Some(bytes),
            CellValue::Null | CellValue::Binary => None,
        }
    }

    /// The text as `&str`, if this is a text cell holding valid UTF-8.
    pub fn as_str(self) -> Option<&'a str> {
        self.text().and_then(|b| std::str::from_utf8(b).ok())
    }
}

/// One cell of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell<'a> {
    pub row: u32,
    pub column: u32,
    pub value: CellValue<'a>,
}

/// A batch whose layout has been checked.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    batch: &'a RowBatch,
}

impl<'a> BatchView<'a> {
    /// Checks the batch's layout: `rows × columns` lengths, each ≥ -2, summing to the size of
    /// `data`.
    pub fn new(batch: &'a RowBatch) -> Result<Self, String> {
        let cells = (batch.rows as usize)
            .checked_mul(batch.columns.len())
            .ok_or_else(|| "row batch too large".to_owned())?;
        if batch.lengths.len() != cells {
            return Err(format!(
                "malformed row batch: {} lengths for {} rows x {} columns",
                batch.lengths.len(),
                batch.rows,
                batch.columns.len()
            ));
        }
        let mut total: usize = 0;
        for &len in &batch.lengths {
            if len >= 0 {
                total = total
                    .checked_add(len as usize)
                    .ok_or_else(|| "row batch too large".to_owned())?;
            } else if len != NULL_LENGTH && len != BINARY_LENGTH {
                return Err(format!("malformed row batch: cell length {len}"));
            }
        }
        if total != batch.data.len() {
            return Err(format!(
                "malformed row batch: cell lengths add up to {total} bytes, data has {}",
                batch.data.len()
            ));
        }
        Ok(BatchView { batch })
    }

    pub fn batch(&self) -> &'a RowBatch {
        self.batch
    }

    pub fn columns(&self) -> &'a [Column] {
        &self.batch.columns
    }

    /// The description of column `index`.
    pub fn column(&self, index: u32) -> Option<&'a Column> {
        self.batch.columns.get(index as usize)
    }

    /// The name of column `index` (empty if out of range).
    pub fn column_name(&self, index: u32) -> &'a str {
        self.column(index).map_or("", |c| c.name.as_str())
    }

    pub fn column_count(&self) -> u32 {
        self.batch.columns.len() as u32
    }

    pub fn row_count(&self) -> u32 {
        self.batch.rows
    }

    /// All cells in row-major order.
    pub fn cells(&self) -> Cells<'a> {
        Cells {
            batch: self.batch,
            index: 0,
            end: self.batch.lengths.len(),
            offset: 0,
            ncols: self.batch.columns.len(),
        }
    }

    /// The cells of one row, in column order (empty if `row` is out of range). Walks the lengths
    /// of the rows before it; to visit every row, iterate [`BatchView::cells`] instead.
    pub fn row(&self, row: u32) -> Cells<'a> {
        let ncols = self.batch.columns.len();
        if row >= self.batch.rows || ncols == 0 {
            return Cells {
                batch: self.batch,
                index: 0,
                end: 0,
                offset: 0,
                ncols,
            };
        }
        let start = row as usize * ncols;
        let offset: usize = self.batch.lengths[..start]
            .iter()
            .filter(|&&l| l > 0)
            .map(|&l| l as usize)
            .sum();
        Cells {
            batch: self.batch,
            index: start,
            end: start + ncols,
            offset,
            ncols,
        }
    }
}

/// Iterator over the cells of a batch (see [`BatchView::cells`]).
#[derive(Debug, Clone)]
pub struct Cells<'a> {
    batch: &'a RowBatch,
    index: usize,
    end: usize,
    offset: usize,
    ncols: usize,
}

impl<'a> Iterator for Cells<'a> {
    type Item = Cell<'a>;

    fn next(&mut self) -> Option<Cell<'a>> {
        if self.index >= self.end {
            return None;
        }
        let len = *self.batch.lengths.get(self.index)?;
        let (row, column) = ((self.index / self.ncols) as u32, (self.index % self.ncols) as u32);
        self.index += 1;
        let value = match len {
            NULL_LENGTH => CellValue::Null,
            l if l < 0 => CellValue::Binary,
            l => {
                let start = self.offset;
                self.offset += l as usize;
                // The layout was checked by `BatchView::new`, so this is in range.
                CellValue::Text(self.batch.data.get(start..self.offset).unwrap_or_default())
            }
        };
        Some(Cell { row, column, value })
    }
}

/// Collects the cell edits and findings of an `on-rows` call.
#[derive(Debug, Default, Clone)]
pub struct RowsOutput {
    edits: Vec<CellEdit>,
    findings: Vec<Finding>,
}

impl RowsOutput {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces a cell's value.
    pub fn replace(&mut self, row: u32, column: u32, value: impl Into<Vec<u8>>) {
        self.edits.push(CellEdit {
            row,
            column,
            value: Some(value.into()),
        });
    }

    /// Makes a cell SQL NULL.
    pub fn set_null(&mut self, row: u32, column: u32) {
        self.edits.push(CellEdit {
            row,
            column,
            value: None,
        });
    }

    /// Adds `count` findings of `entity` in `field` (merged with earlier ones of the same pair).
    pub fn finding(&mut self, entity: &str, field: &str, count: u32) {
        if count == 0 {
            return;
        }
        match self
            .findings
            .iter_mut()
            .find(|f| f.entity == entity && f.field == field)
        {
            Some(f) => f.count = f.count.saturating_add(count),
            None => self.findings.push(Finding {
                entity: entity.to_owned(),
                field: field.to_owned(),
                count,
            }),
        }
    }

    pub fn edits(&self) -> &[CellEdit] {
        &self.edits
    }

    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    pub fn is_empty(&self) -> bool {
        self.edits.is_empty() && self.findings.is_empty()
    }

    pub fn finish(self) -> RowsResult {
        RowsResult {
            edits: self.edits,
            findings: self.findings,
        }
    }
}

/// Builds a [`RowBatch`] from rows of optional text values (for tests and tools).
pub fn batch_from_rows<S: AsRef<[u8]>>(columns: &[&str], rows: &[Vec<Option<S>>]) -> RowBatch {
    let mut lengths = Vec::with_capacity(rows.len() * columns.len());
    let mut data = Vec::new();
    for row in rows {
        for i in 0..columns.len() {
            match row.get(i) {
                Some(Some(v)) => {
                    lengths.push(v.as_ref().len() as i32);
                    data.extend_from_slice(v.as_ref());
                }
                _ => lengths.push(NULL_LENGTH),
            }
        }
    }
    RowBatch {
        columns: columns
            .iter()
            .map(|name| Column {
                name: (*name).to_owned(),
                type_oid: 25,
                table_oid: 0,
                column_number: 0,
            })
            .collect(),
        rows: rows.len() as u32,
        lengths,
        data,
    }
}

/// Applies edits to a batch, producing a new batch (for tests and tools; Gatehouse does this on
/// its side). Edits out of range are an error.
pub fn apply_edits(batch: &RowBatch, edits: &[CellEdit]) -> Result<RowBatch, String> {
    let view = BatchView::new(batch)?;
    let ncols = batch.columns.len();
    let mut replaced: Vec<Option<&CellEdit>> = vec![None; batch.lengths.len()];
    for edit in edits {
        if edit.row >= batch.rows || edit.column as usize >= ncols {
            return Err(format!(
                "edit out of range: row {} column {}",
                edit.row, edit.column
            ));
        }
        replaced[edit.row as usize * ncols + edit.column as usize] = Some(edit);
    }
    let mut lengths = Vec::with_capacity(batch.lengths.len());
    let mut data = Vec::with_capacity(batch.data.len());
    for (i, cell) in view.cells().enumerate() {
        match (replaced[i], cell.value) {
            (Some(CellEdit { value: Some(v), .. }), _) => {
                lengths.push(v.len() as i32);
                data.extend_from_slice(v);
            }
            (Some(CellEdit { value: None, .. }), _) | (None, CellValue::Null) => lengths.push(NULL_LENGTH),
            (None, CellValue::Binary) => lengths.push(BINARY_LENGTH),
            (None, CellValue::Text(t)) => {
                lengths.push(t.len() as i32);
                data.extend_from_slice(t);
            }
        }
    }
    Ok(RowBatch {
        columns: batch.columns.clone(),
        rows: batch.rows,
        lengths,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterates_cells_and_rows() {
        let b = batch_from_rows(
            &["a", "b"],
            &[vec![Some("x"), None], vec![Some("yy"), Some("zzz")]],
        );
        let v = BatchView::new(&b).unwrap();
        let cells: Vec<_> = v.cells().collect();
        assert_eq!(cells.len(), 4);
        assert_eq!(cells[0].value, CellValue::Text(b"x"));
        assert_eq!(cells[1].value, CellValue::Null);
        assert_eq!((cells[3].row, cells[3].column), (1, 1));
        assert_eq!(cells[3].value, CellValue::Text(b"zzz"));
        let row1: Vec<_> = v.row(1).collect();
        assert_eq!(row1.len(), 2);
        assert_eq!(row1[0].value, CellValue::Text(b"yy"));
        assert_eq!(v.row(2).count(), 0);
    }

    #[test]
    fn rejects_bad_layout() {
        let mut b = batch_from_rows(&["a"], &[vec![Some("abc")]]);
        b.data.push(b'x');
        assert!(BatchView::new(&b).is_err());
        b.data.pop();
        b.lengths.push(1);
        assert!(BatchView::new(&b).is_err());
        b.lengths = vec![-3];
        assert!(BatchView::new(&b).is_err());
    }

    #[test]
    fn output_merges_findings_and_applies() {
        let b = batch_from_rows(&["a", "b"], &[vec![Some("x"), Some("y")]]);
        let mut out = RowsOutput::new();
        out.replace(0, 1, "****");
        out.set_null(0, 0);
        out.finding("email", "b", 1);
        out.finding("email", "b", 2);
        out.finding("email", "a", 0);
        let r = out.finish();
        assert_eq!(r.findings.len(), 1);
        assert_eq!(r.findings[0].count, 3);
        let applied = apply_edits(&b, &r.edits).unwrap();
        assert_eq!(applied.lengths, vec![-1, 4]);
        assert_eq!(applied.data, b"****");
        assert!(
            apply_edits(
                &b,
                &[CellEdit {
                    row: 1,
                    column: 0,
                    value: None
                }]
            )
            .is_err()
        );
    }
}
