//! The recorder append: one Decision event per statement, awaited before the statement is
//! forwarded (`durability = "sync"`: the WAL is fsynced; `"buffered"`: written, not fsynced),
//! plus the OpResult event the gateway appends without waiting.
//!
//! `sync_signed` adds Ed25519 checkpoints every 1,000 events (the cost of signing rides on the
//! group commit), and `verify` measures offline verification of that log with the public key.
//!
//! The log lives in `$GATEHOUSE_BENCH_DIR` (default: the system temp dir): put it on the disk
//! whose fsync you want to measure (a tmpfs makes `sync` look free).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gatehouse_core::config::{CheckpointConfig, Durability, RecorderConfig, SecretRef};
use gatehouse_core::{SqlStatement, Verdict};
use gatehouse_pg::classify::classify_one;
use gatehouse_recorder::{CheckpointSigner, EventBody, LogReader, NewEvent, PublicKeys, Recorder};

/// Concurrent sessions in the group-commit benchmark.
const SESSIONS: u64 = 64;

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("recorder bench: {what}: {e}");
    std::process::exit(1)
}

fn decision(stmt: &SqlStatement, session: u64, op: u64) -> NewEvent {
    NewEvent::now(
        format!("bench-session-{session:04}"),
        Some("user:bob".to_string()),
        EventBody::Decision {
            op,
            action: "query".to_string(),
            statement: Some(stmt.clone()),
            verdict: Verdict::Allow {
                policy_ids: vec!["users-read-anywhere".to_string()],
            },
            policy_generation: 1,
            errors: Vec::new(),
            plugins: Vec::new(),
            hold: None,
            approval: None,
            unheld: None,
        },
    )
}

fn result(session: u64, op: u64) -> NewEvent {
    NewEvent::now(
        format!("bench-session-{session:04}"),
        Some("user:bob".to_string()),
        EventBody::OpResult {
            op,
            tag: Some("SELECT 1".to_string()),
            rows: 1,
            duration_us: 87,
            error: None,
            skipped: false,
        },
    )
}

fn bench_append(c: &mut Criterion) {
    let base = std::env::var_os("GATEHOUSE_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("gatehouse-bench-recorder-")
        .tempdir_in(&base)
        .unwrap_or_else(|e| fail("creating a temporary directory", e));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail("starting tokio", e));
    let stmt = Arc::new(classify_one(
        "SELECT abalance FROM pgbench_accounts WHERE aid = 48213",
    ));

    let (private, public, _) =
        CheckpointSigner::generate().unwrap_or_else(|e| fail("generating a checkpoint key", e));
    let key_file = tmp.path().join("audit-signing.pem");
    std::fs::write(&key_file, private).unwrap_or_else(|e| fail("writing the key", e));
    let mut keys = PublicKeys::default();
    keys.add_pem(&public)
        .unwrap_or_else(|e| fail("reading the public key", e));

    for (name, durability, signed) in [
        ("sync", Durability::Sync, false),
        ("sync_signed", Durability::Sync, true),
        ("buffered", Durability::Buffered, false),
    ] {
        let rec = Recorder::open(&RecorderConfig {
            dir: tmp.path().join(name),
            durability,
            max_batch: 4096,
            checkpoints: signed.then(|| CheckpointConfig {
                key: SecretRef::File(key_file.clone()),
                every_events: 1000,
                every_secs: 10,
            }),
            shipping: None,
            literals: Default::default(),
        })
        .unwrap_or_else(|e| fail("opening the recorder", e));

        let mut g = c.benchmark_group(format!("recorder_{name}"));
        if durability == Durability::Sync {
            g.sample_size(20).measurement_time(Duration::from_secs(10));
        }
        // One session, one statement at a time: the latency a statement waits for its record.
        g.throughput(Throughput::Elements(1));
        g.bench_function("append_decision_awaited", |b| {
            b.iter_custom(|iters| {
                let rec = rec.clone();
                let stmt = stmt.clone();
                rt.block_on(async move {
                    let start = Instant::now();
                    for op in 0..iters {
                        if let Err(e) = rec.append(decision(&stmt, 0, op)).await {
                            fail("append", e);
                        }
                        rec.append_nowait(result(0, op));
                    }
                    start.elapsed()
                })
            })
        });
        // 64 sessions with a statement each in flight: what group commit buys.
        g.throughput(Throughput::Elements(SESSIONS));
        g.bench_function(format!("append_decision_{SESSIONS}_sessions"), |b| {
            b.iter_custom(|iters| {
                let rec = rec.clone();
                let stmt = stmt.clone();
                rt.block_on(async move {
                    let start = Instant::now();
                    for op in 0..iters {
                        let mut set = tokio::task::JoinSet::new();
                        for s in 0..SESSIONS {
                            let (rec, stmt) = (rec.clone(), stmt.clone());
                            set.spawn(async move {
                                let r = rec.append(decision(&stmt, s, op)).await;
                                rec.append_nowait(result(s, op));
                                r
                            });
                        }
                        while let Some(r) = set.join_next().await {
                            match r {
                                Ok(Ok(_)) => {}
                                Ok(Err(e)) => fail("append", e),
                                Err(e) => fail("append task", e),
                            }
                        }
                    }
                    start.elapsed()
                })
            })
        });
        g.finish();
        let stats = rec.stats();
        eprintln!(
            "recorder_{name}: {} events in {} group commits ({:.1} events/commit)",
            stats.appended,
            stats.batches,
            stats.appended as f64 / stats.batches.max(1) as f64
        );
        rec.shutdown();
    }

    // Offline verification of the signed log written above (every hash, link and checkpoint).
    let reader =
        LogReader::open(&tmp.path().join("sync_signed")).unwrap_or_else(|e| fail("opening the log", e));
    let events = reader.last_seq().unwrap_or_else(|e| fail("reading the log", e));
    let mut g = c.benchmark_group("recorder_verify");
    g.sample_size(10).throughput(Throughput::Elements(events));
    g.bench_function(format!("verify_{events}_events"), |b| {
        b.iter(|| {
            let report = reader.verify(&keys).unwrap_or_else(|e| fail("verify", e));
            if !report.is_ok() {
                fail("verify", format!("{:?}", report.first_tampering()));
            }
            report.events_checked
        })
    });
    g.finish();
}

criterion_group!(benches, bench_append);
criterion_main!(benches);
