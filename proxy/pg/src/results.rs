//! Result rows kept for the audit record (`[recorder.results]`): the DataRows of one
//! operation as the client receives them, after masking, up to a byte limit per operation.
//! Rows past the limit are counted by the relay, not kept, and the record says it was
//! truncated. The work per row is bounded: once full, a row costs one flag check; a value
//! that would not fit is never copied.

use gatehouse_core::RecordedRows;

use crate::proto;

/// The rows of one operation being kept.
#[derive(Debug)]
pub struct Capture {
    columns: Vec<String>,
    /// Per column, its source table column, when resolved (masking sessions).
    sources: Vec<Option<String>>,
    /// Per column, whether that source is a view's column.
    from_view: Vec<bool>,
    /// Per column: sent in binary format and not a text type (kept as `\x` + hex).
    binary: Vec<bool>,
    rows: Vec<Vec<Option<String>>>,
    bytes: usize,
    /// The limit was reached: further rows are only counted.
    full: bool,
}

impl Capture {
    /// A capture for rows described by `columns` (empty: undescribed), their source columns
    /// and which are binary non-text values.
    pub fn new(columns: Vec<String>, sources: Vec<Option<String>>, binary: Vec<bool>) -> Capture {
        Capture {
            columns,
            sources,
            from_view: Vec::new(),
            binary,
            rows: Vec::new(),
            bytes: 0,
            full: false,
        }
    }

    /// Which sources are views' columns (see [`RecordedRows::from_view`]).
    pub fn with_view_sources(mut self, from_view: Vec<bool>) -> Capture {
        self.from_view = from_view;
        self
    }

    pub fn is_full(&self) -> bool {
        self.full
    }

    /// Keep the DataRow with this body if its values fit within `limit` bytes in all; the
    /// first that does not ends the capture. Malformed rows are skipped (the relay rejects
    /// them elsewhere).
    pub fn push(&mut self, body: &[u8], limit: usize) {
        if self.full {
            return;
        }
        let Ok(cells) = proto::parse_data_row(body) else {
            return;
        };
        let binary = &self.binary;
        let as_text =
            |i: usize, v: &[u8]| !binary.get(i).copied().unwrap_or(false) && std::str::from_utf8(v).is_ok();
        // Size first, so a value past the limit is never copied. Every row and every cell
        // costs at least a little (its separators in the record), so rows of empty strings or
        // of no columns cannot be kept without bound.
        let size: usize = 2 + cells
            .iter()
            .enumerate()
            .map(|(i, c)| match c {
                None => 4,
                Some(v) if as_text(i, v) => v.len() + 1,
                Some(v) => 3 + 2 * v.len(),
            })
            .sum::<usize>();
        if self.bytes.saturating_add(size) > limit {
            self.full = true;
            return;
        }
        let row = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                c.map(|v| match std::str::from_utf8(v) {
                    Ok(t) if as_text(i, v) => t.to_string(),
                    _ => format!("\\x{}", hex::encode(v)),
                })
            })
            .collect();
        self.bytes += size;
        self.rows.push(row);
    }

    /// The rows kept, for the operation's outcome.
    pub fn into_rows(self) -> RecordedRows {
        RecordedRows {
            columns: self.columns,
            rows: self.rows,
            truncated: self.full,
            sources: self.sources,
            from_view: self.from_view,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn row(cells: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = (cells.len() as i16).to_be_bytes().to_vec();
        for c in cells {
            match c {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
            }
        }
        b
    }

    #[test]
    fn rows_are_kept_as_text_hex_or_null_up_to_the_limit() {
        let mut c = Capture::new(
            vec!["id".into(), "name".into(), "blob".into()],
            Vec::new(),
            vec![true, false, false],
        );
        c.push(&row(&[Some(&[0, 0, 0, 7]), Some(b"Ann"), None]), 50);
        c.push(&row(&[Some(&[0, 0, 0, 8]), Some(b"Bo"), Some(&[0xff, 0xfe])]), 50);
        assert!(!c.is_full());
        // 2 + 11 + 4 + 4 = 21, then 2 + 11 + 3 + 7 = 23: 44 so far; the next does not fit.
        c.push(&row(&[Some(&[0, 0, 0, 9]), Some(b"Cy"), None]), 50);
        assert!(c.is_full());
        c.push(&row(&[Some(&[0, 0, 0, 1]), Some(b""), None]), 1_000_000);
        let r = c.into_rows();
        assert!(r.truncated);
        assert_eq!(
            r.rows,
            vec![
                vec![Some("\\x00000007".to_string()), Some("Ann".to_string()), None],
                vec![
                    Some("\\x00000008".to_string()),
                    Some("Bo".to_string()),
                    Some("\\xfffe".to_string())
                ],
            ]
        );
        assert_eq!(r.columns, ["id", "name", "blob"]);
    }

    #[test]
    fn empty_rows_still_reach_the_limit() {
        let mut c = Capture::new(Vec::new(), Vec::new(), Vec::new());
        for _ in 0..1_000_000 {
            c.push(&row(&[]), 1024);
            c.push(&row(&[Some(b"")]), 1024);
        }
        let r = c.into_rows();
        assert!(r.truncated && r.rows.len() < 1024, "{}", r.rows.len());
    }

    #[test]
    fn a_value_larger_than_the_limit_is_never_kept() {
        let mut c = Capture::new(Vec::new(), Vec::new(), Vec::new());
        c.push(&row(&[Some(&vec![b'a'; 1 << 20])]), 1024);
        let r = c.into_rows();
        assert!(r.truncated && r.rows.is_empty());
    }
}
