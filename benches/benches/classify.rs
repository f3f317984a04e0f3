//! SQL classification: libpg_query parse plus the full tree walk, per statement, and the
//! classification cache the extended protocol's Parse goes through.
//!
//! The simple query protocol (`pgbench -M simple`) classifies every Query message afresh:
//! literals differ from one statement to the next, so a text-keyed cache could not help.
//! `Parse` (extended and prepared modes) goes through `ClassifyCache`.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use gatehouse_pg::classify::{ClassifyCache, classify, classify_one};

/// The allocator the `gatehouse` binary runs with (see its `main.rs`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Realistic statements: what pgbench sends, a reporting join, a write with WHERE, a
/// data-modifying CTE and a DDL.
const STATEMENTS: &[(&str, &str)] = &[
    (
        "pgbench_select_literal",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
    ),
    (
        "pgbench_select_param",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    ),
    (
        "join_aggregate",
        "SELECT c.id, c.name, count(*) AS orders, sum(o.amount) AS total \
         FROM customers c JOIN orders o ON o.customer_id = c.id \
         WHERE o.status = 'paid' AND c.created_at > now() - interval '30 days' \
         GROUP BY c.id, c.name ORDER BY total DESC LIMIT 20",
    ),
    (
        "update_where",
        "UPDATE pgbench_accounts SET abalance = abalance + -2841 WHERE aid = 48213",
    ),
    (
        "cte_delete_insert",
        "WITH moved AS (DELETE FROM orders WHERE status = 'shipped' AND id < 500 \
         RETURNING id, customer_id, amount, status) \
         INSERT INTO orders_archive SELECT * FROM moved",
    ),
    (
        "ddl_create_table",
        "CREATE TABLE IF NOT EXISTS order_notes (\
         id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
         order_id bigint NOT NULL REFERENCES orders(id), \
         note text NOT NULL, \
         created_at timestamptz NOT NULL DEFAULT now())",
    ),
];

/// pgbench's tpcb-like transaction sent as one simple-protocol Query string (7 statements).
const TPCB_SCRIPT: &str = "BEGIN; \
    UPDATE pgbench_accounts SET abalance = abalance + 1234 WHERE aid = 48213; \
    SELECT abalance FROM pgbench_accounts WHERE aid = 48213; \
    UPDATE pgbench_tellers SET tbalance = tbalance + 1234 WHERE tid = 37; \
    UPDATE pgbench_branches SET bbalance = bbalance + 1234 WHERE bid = 4; \
    INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
    VALUES (37, 4, 48213, 1234, CURRENT_TIMESTAMP); \
    END;";

fn bench_classify_one(c: &mut Criterion) {
    let mut g = c.benchmark_group("classify_one");
    g.throughput(Throughput::Elements(1));
    for (name, sql) in STATEMENTS {
        g.bench_function(*name, |b| b.iter(|| classify_one(black_box(sql))));
    }
    g.finish();
}

fn bench_multi(c: &mut Criterion) {
    let mut g = c.benchmark_group("classify_multi");
    g.throughput(Throughput::Elements(7));
    g.bench_function("tpcb_like_7_statements", |b| {
        b.iter(|| classify(black_box(TPCB_SCRIPT)))
    });
    g.finish();
}

fn bench_cache(c: &mut Criterion) {
    let mut g = c.benchmark_group("classify_cache");
    g.throughput(Throughput::Elements(1));
    for (name, sql) in STATEMENTS {
        let cache = ClassifyCache::new(10_000);
        cache.classify_one(sql);
        g.bench_function(format!("hit/{name}"), |b| {
            b.iter(|| cache.classify_one(black_box(sql)))
        });
    }
    // Every text new (e.g. a driver inlining literals into Parse): parse + insert + evict
    // once the cache (the gateway's size) is full.
    let cache = ClassifyCache::new(10_000);
    let mut aid = 0u64;
    g.bench_function("miss/pgbench_select_literal", |b| {
        b.iter_batched(
            || {
                aid += 1;
                format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid}")
            },
            |sql| cache.classify_one(&sql),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench_classify_one, bench_multi, bench_cache);
criterion_main!(benches);
