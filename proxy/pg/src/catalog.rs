//! Naming result columns: PostgreSQL's RowDescription says where a column comes from only as a
//! table OID and attribute number; column rules (`read_column` in Cedar) speak of
//! `schema.table.column`. This module maps one to the other with a catalog query on a separate
//! pooled connection of the same target (same database, same upstream role), cached per target.
//!
//! Staleness: entries live for [`CATALOG_TTL`] and the whole cache is dropped when a session of
//! the target completes DDL through Gatehouse. DDL run around Gatehouse (directly on the
//! server) is seen at the latest after the TTL. A renamed column keeps its old name for that
//! long; the same OID never names a different table while it exists.
//!
//! Failures never unmask: a relation the lookup could not name is reported unresolved, and
//! column rules treat its columns as masked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use gatehouse_core::{ColumnSource, RelationKind};
use tokio::io::AsyncWriteExt;

use crate::proto;
use crate::upstream::{PgTarget, Upstream, UpstreamError, track_param};

/// How long a catalog entry is trusted.
pub const CATALOG_TTL: Duration = Duration::from_secs(60);
/// Entries kept per target before the cache starts over.
const MAX_ENTRIES: usize = 20_000;
/// Time allowed for one catalog query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Views over views followed when looking for the tables a view reads.
const MAX_VIEW_DEPTH: usize = 8;
/// Relations resolved per catalog query.
const MAX_PER_QUERY: usize = 500;

/// A relation and its columns by attribute number.
#[derive(Debug)]
pub struct Relation {
    pub oid: u32,
    pub kind: RelationKind,
    pub columns: HashMap<i16, Arc<ColumnSource>>,
    /// For a view: the columns its definition reads, as (relation OID, attribute number); 0
    /// as the attribute number means the whole row (every column).
    pub reads: Vec<(u32, i16)>,
}

impl Relation {
    /// Every column, in attribute order.
    pub fn all_columns(&self) -> Vec<Arc<ColumnSource>> {
        let mut cols: Vec<(i16, Arc<ColumnSource>)> =
            self.columns.iter().map(|(n, c)| (*n, c.clone())).collect();
        cols.sort_by_key(|(n, _)| *n);
        cols.into_iter().map(|(_, c)| c).collect()
    }
}

/// The per-target cache.
#[derive(Default)]
pub struct Catalog {
    by_oid: Mutex<HashMap<u32, (Arc<Relation>, Instant)>>,
    /// Relation name as written in a statement → OID (`None`: no such relation).
    by_name: Mutex<HashMap<String, (Option<u32>, Instant)>>,
    /// When the catalog connection last failed (see [`PgTarget::catalog_failed_within`]).
    failed_at: Mutex<Option<Instant>>,
}

impl Catalog {
    /// Forget everything (after DDL).
    pub fn invalidate(&self) {
        if let Ok(mut m) = self.by_oid.lock() {
            m.clear();
        }
        if let Ok(mut m) = self.by_name.lock() {
            m.clear();
        }
    }

    fn cached(&self, oid: u32) -> Option<Arc<Relation>> {
        let m = self.by_oid.lock().ok()?;
        let (r, at) = m.get(&oid)?;
        (at.elapsed() < CATALOG_TTL).then(|| r.clone())
    }

    fn cached_name(&self, name: &str) -> Option<Option<u32>> {
        let m = self.by_name.lock().ok()?;
        let (oid, at) = m.get(name)?;
        (at.elapsed() < CATALOG_TTL).then_some(*oid)
    }

    fn store(&self, rels: &[Arc<Relation>]) {
        if let Ok(mut m) = self.by_oid.lock() {
            if m.len() + rels.len() > MAX_ENTRIES {
                m.clear();
            }
            let now = Instant::now();
            for r in rels {
                m.insert(r.oid, (r.clone(), now));
            }
        }
    }

    fn store_names(&self, names: &[(String, Option<u32>)]) {
        if let Ok(mut m) = self.by_name.lock() {
            if m.len() + names.len() > MAX_ENTRIES {
                m.clear();
            }
            let now = Instant::now();
            for (n, oid) in names {
                m.insert(n.clone(), (*oid, now));
            }
        }
    }
}

/// Why a lookup failed (the caller fails closed).
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog connection: {0}")]
    Upstream(#[from] UpstreamError),
    #[error("catalog query failed: {0}")]
    Query(String),
}

impl PgTarget {
    /// The relations with these OIDs (cached; one catalog query for the rest). OIDs that name
    /// no relation (dropped meanwhile, or 0) are absent from the answer.
    pub async fn relations(
        self: &Arc<Self>,
        oids: &[u32],
    ) -> Result<HashMap<u32, Arc<Relation>>, CatalogError> {
        let mut out = HashMap::new();
        let mut missing: Vec<u32> = Vec::new();
        for &oid in oids {
            if oid == 0 || out.contains_key(&oid) || missing.contains(&oid) {
                continue;
            }
            match self.catalog.cached(oid) {
                Some(r) => {
                    out.insert(oid, r);
                }
                None => missing.push(oid),
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let mut up = self.acquire(&[]).await?;
        let result = async {
            for chunk in missing.chunks(MAX_PER_QUERY) {
                let list: Vec<String> = chunk.iter().map(u32::to_string).collect();
                let rows =
                    query_rows(&mut up, &relations_sql(&format!("c.oid IN ({})", list.join(",")))).await?;
                let mut rels = parse_relations(&rows);
                let views: Vec<String> = rels
                    .iter()
                    .filter(|r| r.kind == RelationKind::View)
                    .map(|r| r.oid.to_string())
                    .collect();
                if !views.is_empty() {
                    let deps = query_rows(&mut up, &view_reads_sql(&views.join(","))).await?;
                    add_view_reads(&mut rels, &deps);
                }
                let rels: Vec<Arc<Relation>> = rels.into_iter().map(Arc::new).collect();
                self.catalog.store(&rels);
                for r in rels {
                    out.insert(r.oid, r);
                }
            }
            Ok::<_, CatalogError>(())
        }
        .await;
        match result {
            Ok(()) => {
                self.release(up);
                Ok(out)
            }
            // The connection's state is unknown after a failure: drop it.
            Err(e) => Err(e),
        }
    }

    /// The relations named in a statement (`public.customers`, `customers`, as the classifier
    /// reports them), resolved like an unqualified name in a fresh session of the target's
    /// role (its default `search_path`). Names that resolve to nothing (CTE names, tables
    /// that do not exist) are skipped.
    pub async fn relations_named(
        self: &Arc<Self>,
        names: &[String],
    ) -> Result<Vec<Arc<Relation>>, CatalogError> {
        Ok(self.relations_named_all(names).await?.0)
    }

    /// [`relations_named`](Self::relations_named), and whether every name resolved to a
    /// relation.
    pub async fn relations_named_all(
        self: &Arc<Self>,
        names: &[String],
    ) -> Result<(Vec<Arc<Relation>>, bool), CatalogError> {
        let mut oids = Vec::new();
        let mut missing: Vec<&String> = Vec::new();
        let mut all_resolved = true;
        for n in names {
            match self.catalog.cached_name(n) {
                Some(Some(oid)) => oids.push(oid),
                Some(None) => all_resolved = false,
                None if missing.contains(&n) => {}
                None => missing.push(n),
            }
        }
        if !missing.is_empty() {
            let mut up = self.acquire(&[]).await?;
            let mut resolved = Vec::with_capacity(missing.len());
            for chunk in missing.chunks(MAX_PER_QUERY) {
                let literals: Vec<String> = chunk.iter().map(|n| sql_literal(&quote_name(n))).collect();
                let sql = format!(
                    "SELECT n, pg_catalog.to_regclass(n)::pg_catalog.oid FROM pg_catalog.unnest(ARRAY[{}]::pg_catalog.text[]) WITH ORDINALITY AS u(n, i) ORDER BY i",
                    literals.join(",")
                );
                let rows = query_rows(&mut up, &sql).await?;
                if rows.len() != chunk.len() {
                    return Err(CatalogError::Query("unexpected answer to a name lookup".into()));
                }
                for (name, row) in chunk.iter().zip(&rows) {
                    let oid = row
                        .get(1)
                        .and_then(|v| v.as_deref())
                        .and_then(|v| v.parse::<u32>().ok());
                    match oid {
                        Some(oid) => oids.push(oid),
                        None => all_resolved = false,
                    }
                    resolved.push(((*name).clone(), oid));
                }
            }
            self.release(up);
            self.catalog.store_names(&resolved);
        }
        let rels = self.relations(&oids).await?;
        let found: Vec<Arc<Relation>> = oids.iter().filter_map(|o| rels.get(o).cloned()).collect();
        // (A relation dropped between the two lookups is gone.)
        let all_resolved = all_resolved && found.len() == oids.len();
        Ok((found, all_resolved))
    }

    /// Whether the catalog connection failed less than `window` ago (noted by
    /// [`note_catalog_failure`](Self::note_catalog_failure)).
    pub fn catalog_failed_within(&self, window: Duration) -> bool {
        let g = self
            .catalog
            .failed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.is_some_and(|t| t.elapsed() < window)
    }

    /// Remember that the catalog connection failed now.
    pub fn note_catalog_failure(&self) {
        let mut g = self
            .catalog
            .failed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *g = Some(Instant::now());
    }

    /// The table columns the given views read, following views over views (a bounded
    /// depth; deeper nesting fails, and the caller fails closed).
    pub async fn view_reads(
        self: &Arc<Self>,
        views: &[Arc<Relation>],
    ) -> Result<Vec<Arc<ColumnSource>>, CatalogError> {
        let mut out: Vec<Arc<ColumnSource>> = Vec::new();
        let mut frontier: Vec<(u32, i16)> = views.iter().flat_map(|v| v.reads.iter().copied()).collect();
        let mut seen: Vec<u32> = views.iter().map(|v| v.oid).collect();
        for _ in 0..MAX_VIEW_DEPTH {
            if frontier.is_empty() {
                return Ok(out);
            }
            let oids: Vec<u32> = frontier.iter().map(|(o, _)| *o).collect();
            let rels = self.relations(&oids).await?;
            let mut next = Vec::new();
            for (oid, att) in frontier {
                let Some(r) = rels.get(&oid) else { continue };
                if r.kind == RelationKind::View {
                    if !seen.contains(&oid) {
                        seen.push(oid);
                        next.extend(r.reads.iter().copied());
                    }
                    continue;
                }
                if att == 0 {
                    out.extend(r.all_columns());
                } else if let Some(c) = r.columns.get(&att) {
                    out.push(c.clone());
                }
            }
            frontier = next;
        }
        if frontier.is_empty() {
            Ok(out)
        } else {
            Err(CatalogError::Query(format!(
                "views nested deeper than {MAX_VIEW_DEPTH}"
            )))
        }
    }

    /// Forget cached catalog entries (a session ran DDL).
    pub fn invalidate_catalog(&self) {
        self.catalog.invalidate();
    }
}

fn relations_sql(filter: &str) -> String {
    // A partition is named by its root (policies speak of the partitioned table).
    format!(
        "SELECT c.oid, \
                COALESCE(rn.nspname, n.nspname), COALESCE(rc.relname, c.relname), \
                c.relkind, a.attnum, a.attname \
         FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
         LEFT JOIN pg_catalog.pg_class rc ON c.relispartition AND rc.oid = pg_catalog.pg_partition_root(c.oid) \
         LEFT JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace \
         WHERE {filter}"
    )
}

/// What the views' rewrite rules depend on: the columns (or whole rows, attribute 0) of other
/// relations their definitions read.
fn view_reads_sql(views: &str) -> String {
    format!(
        "SELECT DISTINCT r.ev_class, d.refobjid, d.refobjsubid \
         FROM pg_catalog.pg_rewrite r \
         JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
              AND d.objid = r.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
              AND d.refobjid <> r.ev_class \
         WHERE r.ev_class IN ({views})"
    )
}

fn add_view_reads(rels: &mut [Relation], rows: &[Vec<Option<String>>]) {
    for row in rows {
        let cell = |i: usize| row.get(i).and_then(|v| v.as_deref());
        let (Some(view), Some(dep), Some(att)) = (
            cell(0).and_then(|v| v.parse::<u32>().ok()),
            cell(1).and_then(|v| v.parse::<u32>().ok()),
            cell(2).and_then(|v| v.parse::<i16>().ok()),
        ) else {
            continue;
        };
        if let Some(r) = rels.iter_mut().find(|r| r.oid == view) {
            r.reads.push((dep, att));
        }
    }
}

fn parse_relations(rows: &[Vec<Option<String>>]) -> Vec<Relation> {
    let mut by_oid: HashMap<u32, Relation> = HashMap::new();
    for row in rows {
        let cell = |i: usize| row.get(i).and_then(|v| v.as_deref());
        let (Some(oid), Some(schema), Some(table), Some(kind), Some(attnum), Some(column)) = (
            cell(0).and_then(|v| v.parse::<u32>().ok()),
            cell(1),
            cell(2),
            cell(3),
            cell(4).and_then(|v| v.parse::<i16>().ok()),
            cell(5),
        ) else {
            continue;
        };
        let relation = match kind {
            "r" | "p" => RelationKind::Table,
            "v" | "m" => RelationKind::View,
            _ => RelationKind::Other,
        };
        let rel = by_oid.entry(oid).or_insert_with(|| Relation {
            oid,
            kind: relation,
            columns: HashMap::new(),
            reads: Vec::new(),
        });
        rel.columns.insert(
            attnum,
            Arc::new(ColumnSource {
                schema: schema.to_string(),
                table: table.to_string(),
                column: column.to_string(),
                relation,
            }),
        );
    }
    by_oid.into_values().collect()
}

/// `public.customers` → `"public"."customers"`; names come from the parser, already unquoted
/// and case-preserved.
fn quote_name(name: &str) -> String {
    name.split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// A standard-conforming SQL string literal.
fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\0', "").replace('\'', "''"))
}

/// Run one simple query on an idle connection and return its rows as text.
async fn query_rows(up: &mut Upstream, sql: &str) -> Result<Vec<Vec<Option<String>>>, CatalogError> {
    let mut m = BytesMut::new();
    proto::query(&mut m, sql);
    up.stream
        .write_all(&m)
        .await
        .map_err(|e| CatalogError::Upstream(UpstreamError::Connect(e)))?;
    let mut buf = BytesMut::with_capacity(8192);
    let mut rows = Vec::new();
    let mut error = None;
    let read = async {
        loop {
            let (tag, msg) = proto::read_message(&mut up.stream, &mut buf, proto::MAX_MESSAGE_LEN)
                .await
                .map_err(|e| CatalogError::Upstream(e.into()))?;
            let body = proto::body(&msg);
            match tag {
                b'S' => track_param(&mut up.params, body),
                b'D' => {
                    let cells =
                        proto::parse_data_row(body).map_err(|e| CatalogError::Query(e.to_string()))?;
                    rows.push(
                        cells
                            .into_iter()
                            .map(|c| c.map(|v| String::from_utf8_lossy(v).into_owned()))
                            .collect(),
                    );
                }
                b'E' => {
                    let fields = proto::error_fields(body);
                    error = Some(proto::error_field(&fields, b'M').unwrap_or("error").to_string());
                }
                b'Z' => {
                    if body != b"I" || !buf.is_empty() {
                        return Err(CatalogError::Query("connection not idle after the query".into()));
                    }
                    return Ok(());
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(QUERY_TIMEOUT, read)
        .await
        .map_err(|_| CatalogError::Upstream(UpstreamError::Timeout))??;
    match error {
        Some(e) => Err(CatalogError::Query(e)),
        None => Ok(rows),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_and_literals_escaped() {
        assert_eq!(quote_name("public.customers"), "\"public\".\"customers\"");
        assert_eq!(quote_name("We\"ird"), "\"We\"\"ird\"");
        assert_eq!(sql_literal("a'b"), "'a''b'");
        assert_eq!(sql_literal("\"x\".\"y\""), "'\"x\".\"y\"'");
    }

    #[test]
    fn relations_group_columns_and_kinds() {
        let row = |oid: &str, kind: &str, n: &str, name: &str| {
            vec![
                Some(oid.to_string()),
                Some("public".to_string()),
                Some("customers".to_string()),
                Some(kind.to_string()),
                Some(n.to_string()),
                Some(name.to_string()),
            ]
        };
        let mut rels = parse_relations(&[
            row("10", "r", "1", "id"),
            row("10", "r", "2", "ssn"),
            row("11", "v", "1", "ssn"),
            vec![None; 6],
        ]);
        let dep =
            |v: &str, d: &str, a: &str| vec![Some(v.to_string()), Some(d.to_string()), Some(a.to_string())];
        add_view_reads(
            &mut rels,
            &[dep("11", "10", "2"), dep("11", "10", "0"), dep("99", "10", "1")],
        );
        assert_eq!(rels.len(), 2);
        let t = rels.iter().find(|r| r.oid == 10).unwrap();
        assert_eq!(
            t.all_columns()
                .iter()
                .map(|c| c.column.as_str())
                .collect::<Vec<_>>(),
            ["id", "ssn"]
        );
        assert_eq!(t.columns[&2].qualified(), "public.customers.ssn");
        let v = rels.iter().find(|r| r.oid == 11).unwrap();
        assert_eq!(v.columns[&1].relation, RelationKind::View);
        assert_eq!(v.reads, vec![(10, 2), (10, 0)]);
        assert!(t.reads.is_empty());
    }
}
