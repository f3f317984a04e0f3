//! The Cedar decision per statement (`PolicyEngine::decide`) with the repository's policies,
//! and the per-connection entity build (`PolicyEngine::session`).
//!
//! `decide` builds the request context from the classified statement (kind, tables, functions,
//! flags, the time, the source address) and evaluates the whole policy set.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gatehouse_core::{Operation, PrincipalKind, SessionCtx};
use gatehouse_pg::classify::classify_one;
use gatehouse_policy::{PolicyEngine, SessionPolicy};

/// The allocator the `gatehouse` binary runs with (see its `main.rs`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("policy bench: {what}: {e}");
    std::process::exit(1)
}

fn query(sql: &str) -> Operation {
    Operation::Query(Arc::new(classify_one(sql)))
}

fn bench_decide(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let engine = PolicyEngine::load(&dir).unwrap_or_else(|e| fail("loading policies/", e));
    let session = |c: &SessionCtx| -> SessionPolicy {
        engine
            .session(c)
            .unwrap_or_else(|e| fail("building session entities", e))
    };
    let bob = gatehouse_benches::session_ctx(PrincipalKind::User, "bob", &["engineering"], None);
    let alice = gatehouse_benches::session_ctx(PrincipalKind::User, "alice", &["dba"], None);
    let agent = gatehouse_benches::session_ctx(PrincipalKind::Agent, "ai-agent", &["agents"], Some("alice"));
    let (bob_s, alice_s, agent_s) = (session(&bob), session(&alice), session(&agent));

    let select = query("SELECT abalance FROM pgbench_accounts WHERE aid = 48213");
    let join = query(
        "SELECT c.id, c.name, sum(o.amount) AS total FROM customers c \
         JOIN orders o ON o.customer_id = c.id WHERE o.status = 'paid' \
         GROUP BY c.id, c.name ORDER BY total DESC LIMIT 20",
    );
    let update = query("UPDATE pgbench_accounts SET abalance = abalance + -2841 WHERE aid = 48213");
    let ddl = query("DROP TABLE orders");
    let cases: [(&str, &SessionPolicy, &Operation, bool); 7] = [
        ("connect/user_allow", &bob_s, &Operation::Connect, true),
        ("query/user_select_allow", &bob_s, &select, true),
        ("query/agent_select_allow", &agent_s, &select, true),
        ("query/dba_join_allow", &alice_s, &join, true),
        ("query/dba_update_allow", &alice_s, &update, true),
        ("query/agent_update_needs_approval", &agent_s, &update, false),
        ("query/agent_ddl_deny", &agent_s, &ddl, false),
    ];
    // Benchmarks of the wrong outcome would be meaningless: check each case first.
    for (name, s, op, allow) in &cases {
        let d = engine.decide(s, op, false);
        if d.verdict.is_allow() != *allow || !d.errors.is_empty() {
            fail(name, format!("unexpected decision {d:?}"));
        }
    }

    let mut g = c.benchmark_group("cedar_decide");
    g.throughput(Throughput::Elements(1));
    for (name, s, op, _) in &cases {
        g.bench_function(*name, |b| {
            b.iter(|| engine.decide(black_box(s), black_box(op), false))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("cedar_session");
    g.bench_function("build_entities/agent", |b| {
        b.iter(|| engine.session(black_box(&agent)).is_ok())
    });
    g.finish();
}

criterion_group!(benches, bench_decide);
criterion_main!(benches);
