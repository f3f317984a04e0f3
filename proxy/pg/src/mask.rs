//! Result masking on the PostgreSQL path (DESIGN.md §3 step 5): which row description applies
//! to the rows an operation returns, how a run of DataRow messages becomes one
//! [`RowBatch`] for the session's masking stage, and how its edits are written back.
//!
//! Rows stream: a batch is the run of DataRow messages that arrived together (bounded by the
//! read buffer), never a whole result set. Rows without edits are forwarded as received.

use std::sync::Arc;

use bytes::BytesMut;
use gatehouse_core::{ColumnDesc, Masked, RowBatch};

use crate::proto::{self, FieldDesc};

/// What replaces a cell a fail-closed masker could not vouch for: text-like columns get this,
/// other columns become NULL (a placeholder would break clients that parse numbers or dates).
pub(crate) const FULL_MASK: &[u8] = b"****";

/// A result column as the client receives it.
#[derive(Debug, Clone)]
pub(crate) struct ColumnShape {
    pub desc: ColumnDesc,
    pub binary: bool,
    /// A type whose binary and text forms are both its characters, so maskers can read it.
    pub text_like: bool,
}

/// Where an Execute's rows get their description from: a Describe of its portal, or a
/// Describe of its statement plus the Bind's result formats.
#[derive(Debug, Clone)]
pub(crate) struct ExecShape {
    pub stmt: u64,
    pub portal: u64,
    pub formats: Arc<[i16]>,
}

/// text, varchar, bpchar, name, unknown, json, xml, citext-like domains are not known here.
pub(crate) fn text_like(oid: u32) -> bool {
    matches!(oid, 25 | 1043 | 1042 | 19 | 705 | 114 | 142 | 18)
}

/// Column shapes from a RowDescription; `formats` (from Bind) override the description's own
/// format codes, which are meaningless in a statement Describe.
pub(crate) fn shape(fields: &[FieldDesc], formats: Option<&[i16]>) -> Arc<[ColumnShape]> {
    fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let format = match formats {
                None => f.format,
                Some([]) => 0,
                Some([one]) => *one,
                Some(many) => many.get(i).copied().unwrap_or(0),
            };
            ColumnShape {
                desc: ColumnDesc {
                    name: f.name.clone(),
                    type_oid: f.type_oid,
                    table_oid: f.table_oid,
                    column_number: f.column,
                    source: None,
                    text_like: text_like(f.type_oid),
                },
                binary: format == 1,
                text_like: text_like(f.type_oid),
            }
        })
        .collect()
}

/// Build a batch from DataRow bodies. `None` if a row does not match the shape.
pub(crate) fn batch(shape: &[ColumnShape], rows: &[&[u8]]) -> Option<RowBatch> {
    let mut b = RowBatch::new(shape.iter().map(|c| c.desc.clone()).collect());
    b.lengths.reserve(rows.len() * shape.len());
    for body in rows {
        let cells = proto::parse_data_row(body).ok()?;
        if cells.len() != shape.len() {
            return None;
        }
        b.push_row(
            cells
                .iter()
                .zip(shape)
                .map(|(c, s)| c.map(|v| (!s.binary || s.text_like).then_some(v))),
        );
    }
    Some(b)
}

/// Write the rows back: rows the masking stage left alone are copied as received (`raw` holds
/// each whole message), edited rows are re-encoded. With `mask_all` (or no usable shape),
/// every non-NULL cell is replaced.
pub(crate) fn rewrite(
    shape: Option<&[ColumnShape]>,
    raw: &[&[u8]],
    bodies: &[&[u8]],
    masked: &Masked,
    out: &mut BytesMut,
) {
    let mask_all = masked.mask_all.is_some() || shape.is_none();
    if !mask_all && masked.edits.is_empty() {
        for m in raw {
            out.extend_from_slice(m);
        }
        return;
    }
    let ncols = shape.map(|s| s.len()).unwrap_or(0);
    // Edits indexed by row; plugins return few edits, usually in order.
    type RowEdits<'e> = Vec<(usize, Option<&'e [u8]>)>;
    let mut by_row: Vec<RowEdits<'_>> = vec![Vec::new(); if mask_all { 0 } else { raw.len() }];
    if !mask_all {
        for e in &masked.edits {
            if let Some(r) = by_row.get_mut(e.row as usize)
                && (e.column as usize) < ncols
            {
                r.push((e.column as usize, e.value.as_deref()));
            }
        }
    }
    for (i, (m, body)) in raw.iter().zip(bodies).enumerate() {
        let edits = by_row.get(i).map(Vec::as_slice).unwrap_or(&[]);
        if !mask_all && edits.is_empty() {
            out.extend_from_slice(m);
            continue;
        }
        let Ok(mut cells) = proto::parse_data_row(body) else {
            // Unparseable row: send it with every cell NULL rather than unmasked.
            proto::data_row(out, std::iter::empty());
            continue;
        };
        if mask_all {
            for (j, c) in cells.iter_mut().enumerate() {
                if c.is_some() {
                    let readable = shape.and_then(|s| s.get(j)).is_some_and(|s| s.text_like);
                    *c = readable.then_some(FULL_MASK);
                }
            }
        } else {
            for &(j, v) in edits {
                let typed = shape.and_then(|s| s.get(j)).is_some_and(|s| !s.text_like);
                if let Some(c) = cells.get_mut(j) {
                    // A replacement string is not a value of a number, date, … column (in
                    // either format): clients would fail to parse it. NULL it instead.
                    *c = if typed { None } else { v };
                }
            }
        }
        proto::data_row(out, cells.into_iter());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;
    use gatehouse_core::rows::{NULL_CELL, OPAQUE_CELL};
    use gatehouse_core::{CellEdit, MaskFault};

    fn fields() -> Vec<FieldDesc> {
        vec![
            FieldDesc {
                name: "id".into(),
                table_oid: 1,
                column: 1,
                type_oid: 23,
                format: 0,
            },
            FieldDesc {
                name: "email".into(),
                table_oid: 1,
                column: 2,
                type_oid: 25,
                format: 0,
            },
        ]
    }

    fn row(cells: &[Option<&[u8]>]) -> BytesMut {
        let mut out = BytesMut::new();
        proto::data_row(&mut out, cells.iter().copied());
        out
    }

    #[test]
    fn batch_and_rewrite() {
        let s = shape(&fields(), Some(&[1])); // all binary: int4 opaque, text readable
        let r1 = row(&[Some(&[0, 0, 0, 7]), Some(b"a@example.com")]);
        let r2 = row(&[Some(&[0, 0, 0, 8]), None]);
        let raw = [&r1[..], &r2[..]];
        let bodies = [proto::body(&r1), proto::body(&r2)];
        let b = batch(&s, &bodies).unwrap();
        assert_eq!(b.rows, 2);
        assert_eq!(b.lengths, vec![OPAQUE_CELL, 13, OPAQUE_CELL, NULL_CELL]);
        assert_eq!(b.data, b"a@example.com");

        let masked = Masked {
            edits: vec![CellEdit {
                row: 0,
                column: 1,
                value: Some(b"***@example.com".to_vec()),
            }],
            ..Default::default()
        };
        let mut out = BytesMut::new();
        rewrite(Some(&s), &raw, &bodies, &masked, &mut out);
        let mut expect = row(&[Some(&[0, 0, 0, 7]), Some(b"***@example.com")]);
        expect.extend_from_slice(&r2);
        assert_eq!(out, expect);

        let all = Masked {
            mask_all: Some(MaskFault {
                plugin: "p".into(),
                hash: "h".into(),
                kind: "timeout".into(),
                message: "m".into(),
            }),
            ..Default::default()
        };
        let mut out = BytesMut::new();
        rewrite(Some(&s), &raw, &bodies, &all, &mut out);
        let mut expect = row(&[None, Some(FULL_MASK)]);
        expect.extend_from_slice(&row(&[None, None]));
        assert_eq!(out, expect);
    }

    #[test]
    fn bind_formats_and_row_description_roundtrip() {
        // Bind: portal "", statement "s1", 1 param format (text), 1 param "42", 2 result formats.
        let mut body = Vec::new();
        body.extend_from_slice(b"\0s1\0");
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&2i32.to_be_bytes());
        body.extend_from_slice(b"42");
        body.extend_from_slice(&2i16.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        assert_eq!(proto::bind_result_formats(&body).unwrap(), vec![1, 0]);
        assert!(proto::bind_result_formats(&body[..body.len() - 1]).is_err());
        let s = shape(&fields(), Some(&[1, 0]));
        assert!(s[0].binary && !s[1].binary);
    }
}
