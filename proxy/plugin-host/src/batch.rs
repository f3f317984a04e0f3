//! Host-side helpers for the WIT `row-batch`: building one from cells, walking its cells,
//! validating its shape, and applying a plugin's `cell-edit`s in one pass.
//!
//! Layout (as in the WIT): cells in row-major order; `lengths[i]` is cell `i`'s byte length,
//! `-1` for SQL NULL, `-2` for a cell in binary format that is not passed to plugins; `data`
//! is the concatenation of the text cells' bytes.

use crate::fault::BatchError;
use crate::wit::{CellEdit, Column, RowBatch};

/// `lengths` value of a SQL NULL.
pub const NULL_LEN: i32 = -1;
/// `lengths` value of a binary-format cell (not passed to plugins).
pub const BINARY_LEN: i32 = -2;

/// One cell of a [`RowBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell<'a> {
    /// SQL NULL.
    Null,
    /// A binary-format cell: plugins do not see it; the caller masks it on its own.
    Binary,
    /// A text-format value.
    Text(&'a [u8]),
}

impl<'a> From<Option<&'a [u8]>> for Cell<'a> {
    fn from(value: Option<&'a [u8]>) -> Cell<'a> {
        match value {
            Some(bytes) => Cell::Text(bytes),
            None => Cell::Null,
        }
    }
}

impl<'a> From<Option<&'a str>> for Cell<'a> {
    fn from(value: Option<&'a str>) -> Cell<'a> {
        match value {
            Some(s) => Cell::Text(s.as_bytes()),
            None => Cell::Null,
        }
    }
}

impl Column {
    /// A `text` (OID 25) column that is not a plain table column.
    pub fn text(name: impl Into<String>) -> Column {
        Column {
            name: name.into(),
            type_oid: 25,
            table_oid: 0,
            column_number: 0,
        }
    }
}

impl RowBatch {
    /// An empty batch with these columns.
    pub fn new(columns: Vec<Column>) -> RowBatch {
        RowBatch::with_capacity(columns, 0, 0)
    }

    /// An empty batch with room for `rows` rows and `data_bytes` bytes of values.
    pub fn with_capacity(columns: Vec<Column>, rows: usize, data_bytes: usize) -> RowBatch {
        let cells = rows.saturating_mul(columns.len());
        RowBatch {
            columns,
            rows: 0,
            lengths: Vec::with_capacity(cells),
            data: Vec::with_capacity(data_bytes),
        }
    }

    /// A batch from cells in row-major order (`cells.len()` must be a multiple of the
    /// column count).
    pub fn from_cells(columns: Vec<Column>, cells: &[Cell<'_>]) -> Result<RowBatch, BatchError> {
        let width = columns.len();
        if width == 0 && !cells.is_empty() {
            return Err(BatchError::RowWidth {
                got: cells.len(),
                expected: 0,
            });
        }
        let data_bytes = cells
            .iter()
            .map(|c| match c {
                Cell::Text(b) => b.len(),
                Cell::Null | Cell::Binary => 0,
            })
            .sum();
        let rows = cells.len().checked_div(width).unwrap_or(0);
        let mut batch = RowBatch::with_capacity(columns, rows, data_bytes);
        if width > 0 {
            for row in cells.chunks(width) {
                batch.push_row(row.iter().copied())?;
            }
        }
        Ok(batch)
    }

    /// Append one row; it must have exactly one cell per column.
    pub fn push_row<'a>(&mut self, cells: impl IntoIterator<Item = Cell<'a>>) -> Result<(), BatchError> {
        let before_lengths = self.lengths.len();
        let before_data = self.data.len();
        let mut count = 0usize;
        for cell in cells {
            count += 1;
            let len = match cell {
                Cell::Null => NULL_LEN,
                Cell::Binary => BINARY_LEN,
                Cell::Text(bytes) => {
                    let Ok(len) = i32::try_from(bytes.len()) else {
                        self.lengths.truncate(before_lengths);
                        self.data.truncate(before_data);
                        return Err(BatchError::TooLarge);
                    };
                    self.data.extend_from_slice(bytes);
                    len
                }
            };
            self.lengths.push(len);
        }
        if count != self.columns.len() {
            self.lengths.truncate(before_lengths);
            self.data.truncate(before_data);
            return Err(BatchError::RowWidth {
                got: count,
                expected: self.columns.len(),
            });
        }
        self.rows = self.rows.checked_add(1).ok_or(BatchError::TooLarge)?;
        Ok(())
    }

    /// Number of cells (`rows × columns`).
    pub fn cell_count(&self) -> usize {
        self.lengths.len()
    }

    /// Check that lengths, rows, columns and data agree.
    pub fn validate(&self) -> Result<(), BatchError> {
        let expected = (self.rows as usize).checked_mul(self.columns.len());
        if expected != Some(self.lengths.len()) {
            return Err(BatchError::CellCount {
                cells: self.lengths.len(),
                columns: self.columns.len(),
                rows: self.rows,
            });
        }
        let mut sum: u64 = 0;
        for &len in &self.lengths {
            match len {
                NULL_LEN | BINARY_LEN => {}
                len if len >= 0 => sum += len as u64,
                len => return Err(BatchError::Length(len)),
            }
        }
        if sum != self.data.len() as u64 {
            return Err(BatchError::DataLength {
                sum,
                data: self.data.len(),
            });
        }
        if u32::try_from(self.data.len()).is_err() || u32::try_from(self.lengths.len()).is_err() {
            return Err(BatchError::TooLarge);
        }
        Ok(())
    }

    /// The cells in row-major order. On a batch that fails [`RowBatch::validate`], the
    /// iterator stops at the first cell whose bytes are not in `data`.
    pub fn cells(&self) -> Cells<'_> {
        Cells {
            batch: self,
            index: 0,
            offset: 0,
        }
    }

    /// The rows, each as its cells (allocates one `Vec` per row; for tests and tools).
    pub fn rows_cells(&self) -> Vec<Vec<Cell<'_>>> {
        let width = self.columns.len().max(1);
        let all: Vec<Cell<'_>> = self.cells().collect();
        all.chunks(width).map(<[Cell<'_>]>::to_vec).collect()
    }

    /// The rows as optional strings (lossy UTF-8; binary cells become `None`): for fixtures,
    /// the CLI and tests.
    pub fn to_strings(&self) -> Vec<Vec<Option<String>>> {
        self.rows_cells()
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|cell| match cell {
                        Cell::Text(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
                        Cell::Null | Cell::Binary => None,
                    })
                    .collect()
            })
            .collect()
    }

    /// A copy with every text value replaced by `replacement` (NULL and binary cells kept):
    /// the fail-closed "mask everything" of a batch.
    pub fn masked_all(&self, replacement: &[u8]) -> RowBatch {
        let replacement = &replacement[..replacement.len().min(i32::MAX as usize)];
        let texts = self.lengths.iter().filter(|&&l| l >= 0).count();
        let mut data = Vec::with_capacity(texts.saturating_mul(replacement.len()));
        let lengths = self
            .lengths
            .iter()
            .map(|&len| {
                if len >= 0 {
                    data.extend_from_slice(replacement);
                    replacement.len() as i32
                } else {
                    len
                }
            })
            .collect();
        RowBatch {
            columns: self.columns.clone(),
            rows: self.rows,
            lengths,
            data,
        }
    }

    /// Apply a plugin's edits in one pass over the batch (unchanged runs of cells are copied
    /// with one `memcpy` each). The batch must be valid ([`RowBatch::validate`]).
    ///
    /// Rejects — leaving the batch unchanged — an edit outside the batch, of a binary cell,
    /// two edits of one cell, a value that is not UTF-8 or contains a NUL byte (text-format
    /// values go to clients as text), and a value over 2 GiB.
    pub fn apply_edits(&mut self, edits: &[CellEdit]) -> Result<(), EditError> {
        if edits.is_empty() {
            return Ok(());
        }
        let width = self.columns.len();
        let mut order: Vec<(usize, usize)> = Vec::with_capacity(edits.len());
        let mut added: usize = 0;
        for (i, edit) in edits.iter().enumerate() {
            if edit.row >= self.rows || edit.column as usize >= width {
                return Err(EditError::OutOfRange {
                    row: edit.row,
                    column: edit.column,
                });
            }
            let cell = edit.row as usize * width + edit.column as usize;
            if self.lengths.get(cell).copied() == Some(BINARY_LEN) {
                return Err(EditError::Binary {
                    row: edit.row,
                    column: edit.column,
                });
            }
            if let Some(value) = &edit.value {
                if i32::try_from(value.len()).is_err() {
                    return Err(EditError::TooLarge);
                }
                if std::str::from_utf8(value).is_err() {
                    return Err(EditError::NotUtf8 {
                        row: edit.row,
                        column: edit.column,
                    });
                }
                if value.contains(&0) {
                    return Err(EditError::Nul {
                        row: edit.row,
                        column: edit.column,
                    });
                }
                added = added.saturating_add(value.len());
            }
            order.push((cell, i));
        }
        order.sort_unstable();
        if let Some(pair) = order.windows(2).find(|w| w[0].0 == w[1].0) {
            let edit = &edits[pair[0].1];
            return Err(EditError::Duplicate {
                row: edit.row,
                column: edit.column,
            });
        }

        let mut data = Vec::with_capacity(self.data.len().saturating_add(added));
        let mut lengths = self.lengths.clone();
        let mut cell = 0usize; // next cell whose offset `offset` is
        let mut offset = 0usize; // byte offset of `cell` in the old data
        let mut copied_to = 0usize; // old data before this is already in `data`
        for &(target, i) in &order {
            while cell < target {
                offset += self.lengths.get(cell).map_or(0, |&l| l.max(0) as usize);
                cell += 1;
            }
            let old_len = self.lengths.get(target).map_or(0, |&l| l.max(0) as usize);
            let run = self.data.get(copied_to..offset).ok_or(EditError::Shape)?;
            data.extend_from_slice(run);
            let slot = lengths.get_mut(target).ok_or(EditError::Shape)?;
            match &edits[i].value {
                Some(value) => {
                    data.extend_from_slice(value);
                    *slot = value.len() as i32;
                }
                None => *slot = NULL_LEN,
            }
            copied_to = offset + old_len;
        }
        let rest = self.data.get(copied_to..).ok_or(EditError::Shape)?;
        data.extend_from_slice(rest);
        self.data = data;
        self.lengths = lengths;
        Ok(())
    }
}

/// Why a set of edits was rejected (the plugin's return is malformed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("edit of cell ({row}, {column}) is outside the batch")]
    OutOfRange { row: u32, column: u32 },
    #[error("edit of cell ({row}, {column}), a binary cell the plugin was not given")]
    Binary { row: u32, column: u32 },
    #[error("two edits of cell ({row}, {column})")]
    Duplicate { row: u32, column: u32 },
    #[error("edit of cell ({row}, {column}) is not UTF-8")]
    NotUtf8 { row: u32, column: u32 },
    #[error("edit of cell ({row}, {column}) contains a NUL byte")]
    Nul { row: u32, column: u32 },
    #[error("edited value too large")]
    TooLarge,
    #[error("batch shape is inconsistent")]
    Shape,
}

/// Iterator over a batch's cells, see [`RowBatch::cells`].
#[derive(Debug, Clone)]
pub struct Cells<'a> {
    batch: &'a RowBatch,
    index: usize,
    offset: usize,
}

impl<'a> Iterator for Cells<'a> {
    type Item = Cell<'a>;

    fn next(&mut self) -> Option<Cell<'a>> {
        let len = *self.batch.lengths.get(self.index)?;
        self.index += 1;
        match len {
            NULL_LEN => Some(Cell::Null),
            BINARY_LEN => Some(Cell::Binary),
            len if len >= 0 => {
                let end = self.offset.checked_add(len as usize)?;
                let bytes = self.batch.data.get(self.offset..end)?;
                self.offset = end;
                Some(Cell::Text(bytes))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;

    fn batch() -> RowBatch {
        RowBatch::from_cells(
            vec![Column::text("a"), Column::text("b"), Column::text("c")],
            &[
                Cell::Text(b"one"),
                Cell::Null,
                Cell::Text(b"x"),
                Cell::Binary,
                Cell::Text(b""),
                Cell::Text(b"last"),
            ],
        )
        .unwrap()
    }

    fn edit(row: u32, column: u32, value: Option<&str>) -> CellEdit {
        CellEdit {
            row,
            column,
            value: value.map(|v| v.as_bytes().to_vec()),
        }
    }

    #[test]
    fn build_and_walk() {
        let b = batch();
        b.validate().unwrap();
        assert_eq!(b.rows, 2);
        assert_eq!(b.lengths, vec![3, -1, 1, -2, 0, 4]);
        assert_eq!(b.data, b"onexlast");
        assert_eq!(
            b.to_strings(),
            vec![
                vec![Some("one".into()), None, Some("x".into())],
                vec![None, Some(String::new()), Some("last".into())],
            ]
        );
        let mut b2 = RowBatch::new(vec![Column::text("a")]);
        assert!(b2.push_row([Cell::Null, Cell::Null]).is_err());
        assert_eq!(b2.rows, 0);
        assert!(b2.lengths.is_empty());
    }

    #[test]
    fn validate_rejects_bad_shapes() {
        let mut b = batch();
        b.data.push(b'!');
        assert!(matches!(b.validate(), Err(BatchError::DataLength { .. })));
        let mut b = batch();
        b.rows = 3;
        assert!(matches!(b.validate(), Err(BatchError::CellCount { .. })));
        let mut b = batch();
        b.lengths[1] = -7;
        assert!(matches!(b.validate(), Err(BatchError::Length(-7))));
    }

    #[test]
    fn edits_apply_in_one_pass() {
        let mut b = batch();
        b.apply_edits(&[
            edit(1, 2, Some("LAST!")),
            edit(0, 0, None),
            edit(0, 1, Some("now set")),
            edit(1, 1, Some("é")),
        ])
        .unwrap();
        b.validate().unwrap();
        assert_eq!(
            b.to_strings(),
            vec![
                vec![None, Some("now set".into()), Some("x".into())],
                vec![None, Some("é".into()), Some("LAST!".into())],
            ]
        );
        assert_eq!(b.lengths[3], BINARY_LEN);
    }

    #[test]
    fn bad_edits_leave_the_batch_alone() {
        let original = batch();
        for (edits, expected) in [
            (vec![edit(2, 0, None)], "outside"),
            (vec![edit(0, 3, None)], "outside"),
            (vec![edit(1, 0, Some("x"))], "binary"),
            (vec![edit(0, 0, None), edit(0, 0, Some("y"))], "two edits"),
            (vec![edit(0, 0, Some("a\0b"))], "NUL"),
        ] {
            let mut b = original.clone();
            let err = b.apply_edits(&edits).unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
            assert_eq!(b, original);
        }
        let mut b = original.clone();
        let bad = CellEdit {
            row: 0,
            column: 0,
            value: Some(vec![0xff, 0xfe]),
        };
        assert!(matches!(b.apply_edits(&[bad]), Err(EditError::NotUtf8 { .. })));
        assert_eq!(b, original);
    }

    #[test]
    fn mask_all_keeps_nulls_and_binary() {
        let m = batch().masked_all(b"***");
        m.validate().unwrap();
        assert_eq!(m.lengths, vec![3, -1, 3, -2, 3, 3]);
        assert_eq!(m.data, b"************");
    }
}
