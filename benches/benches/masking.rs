//! The column-masking stage (`gatehouse::masking::SessionMasker`) on a result batch of 100
//! rows x 10 text columns, with the repository's `policies/masking.cedar`: the agent's view
//! (4 columns masked by rule: hash, hash, partial, full) and the human's (nothing masked;
//! measures the per-batch check alone). `read_column` decisions are cached per session, so
//! this is the steady state of a session; the first batch also pays one Cedar decision per
//! column (see the `policy` bench).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gatehouse::masking::{ColumnRules, SessionMasker};
use gatehouse_core::{ColumnDesc, ColumnSource, PrincipalKind, RelationKind, RowBatch, RowMasker};
use gatehouse_policy::PolicyEngine;

/// The allocator the `gatehouse` binary runs with (see its `main.rs`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("masking bench: {what}: {e}");
    std::process::exit(1)
}

/// 100 rows of the demo's `customers` columns (plus a few more text columns).
fn batch() -> RowBatch {
    let names = [
        "id",
        "name",
        "email",
        "phone",
        "card_number",
        "ssn",
        "city",
        "street",
        "note",
        "status",
    ];
    let columns = names
        .iter()
        .enumerate()
        .map(|(i, n)| ColumnDesc {
            name: n.to_string(),
            type_oid: 25,
            table_oid: 16384,
            column_number: i as i16 + 1,
            source: Some(Arc::new(ColumnSource {
                schema: "public".to_string(),
                table: "customers".to_string(),
                column: n.to_string(),
                relation: RelationKind::Table,
            })),
            text_like: true,
        })
        .collect();
    let mut b = RowBatch::new(columns);
    for i in 0..100u32 {
        let cells = [
            i.to_string(),
            format!("Customer {i}"),
            format!("customer{i}@example.com"),
            format!("+1-202-555-{:04}", i),
            format!("4111 1111 1111 {:04}", i),
            format!("{:03}-{:02}-{:04}", 100 + i, 10 + i % 89, 1000 + i),
            "Springfield".to_string(),
            format!("{i} Main Street"),
            "a note of about thirty chars..".to_string(),
            "active".to_string(),
        ];
        b.push_row(cells.iter().map(|c| Some(Some(c.as_bytes()))));
    }
    b
}

fn bench_masking(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let engine = Arc::new(PolicyEngine::load(&dir).unwrap_or_else(|e| fail("loading policies/", e)));
    let hash = Arc::new(gatehouse_mask::Masker::new(Some(b"bench key")).unwrap_or_else(|e| fail("key", e)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap_or_else(|e| fail("runtime", e));
    let b = batch();
    let bytes = b.data.len() as u64;
    let mut group = c.benchmark_group("masking");
    group.throughput(Throughput::Bytes(bytes));
    for (label, kind, id, groups) in [
        (
            "agent_4_of_10_columns",
            PrincipalKind::Agent,
            "ai-agent",
            &["agents"][..],
        ),
        ("human_nothing_masked", PrincipalKind::User, "alice", &["dba"][..]),
    ] {
        let sp = engine
            .session(&gatehouse_benches::session_ctx(kind, id, groups, None))
            .unwrap_or_else(|e| fail("session", e));
        let rules = ColumnRules::new(engine.clone(), Some(Arc::new(sp)), hash.clone());
        let masker = SessionMasker::new(Some(rules), None).unwrap_or_else(|| fail("masker", "none"));
        // Warm the per-session decision cache, as the first batch of a session does.
        let first = rt.block_on(masker.mask(1, &b, None));
        if label.starts_with("agent") && first.edits.len() != 400 {
            fail("agent edits", first.edits.len());
        }
        group.bench_function(label, |bench| {
            bench.iter(|| rt.block_on(masker.mask(1, black_box(&b), None)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_masking);
criterion_main!(benches);
