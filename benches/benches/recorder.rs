//! The recorder append: one Decision event per statement, awaited before the statement is
//! forwarded (`durability = "sync"`: the WAL is fsynced; `"buffered"`: written, not fsynced),
//! plus the OpResult event the gateway appends without waiting.
//!
//! `sync_signed` adds Ed25519 checkpoints every 1,000 events (the cost of signing rides on the
//! group commit), and `verify` measures offline verification of that log with the public key.
//! `sync_shipped` signs every 10,000 events, as the example config does, and runs the shipper
//! as the gateway runs it, copying sealed segments (one per checkpoint) to a filesystem sink
//! every second (its cost shares the CPUs with the writer's).
//!
//! `restore` rebuilds a shipped log from a filesystem sink, as `gatehouse audit restore` does.
//!
//! The log lives in `$GATEHOUSE_BENCH_DIR` (default: the system temp dir): put it on the disk
//! whose fsync you want to measure (a tmpfs makes `sync` look free).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gatehouse_core::config::{CheckpointConfig, Durability, RecorderConfig, SecretRef, ShippingConfig};
use gatehouse_core::{SqlStatement, Verdict};
use gatehouse_pg::classify::classify_one;
use gatehouse_recorder::{
    CheckpointSigner, EventBody, LogReader, NewEvent, PublicKeys, Recorder, SearchQuery, Shipper, Sink,
    restore_from_sink,
};

/// The allocator the `gatehouse` binary runs with (see its `main.rs`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Concurrent sessions in the round-based group-commit benchmark.
const SESSIONS: u64 = 64;

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("recorder bench: {what}: {e}");
    std::process::exit(1)
}

fn decision(stmt: &SqlStatement, session: u64, op: u64) -> NewEvent {
    decision_event(
        format!("bench-session-{session:04}"),
        "user:bob".to_string(),
        stmt,
        Verdict::Allow {
            policy_ids: vec!["users-read-anywhere".to_string()],
        },
        op,
    )
}

fn decision_event(
    session: String,
    principal: String,
    stmt: &SqlStatement,
    verdict: Verdict,
    op: u64,
) -> NewEvent {
    NewEvent::now(
        session,
        Some(principal),
        EventBody::Decision {
            op,
            action: "query".to_string(),
            statement: Some(stmt.clone()),
            verdict,
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
            // The one-row result `[recorder.results]` keeps by default.
            result: Some(gatehouse_core::RecordedRows {
                columns: vec!["abalance".to_string()],
                rows: vec![vec![Some("-2319".to_string())]],
                ..Default::default()
            }),
        },
    )
}

/// Shipping to a filesystem sink at `dir` every second, with no alert and no retention.
fn file_sink(dir: &std::path::Path) -> ShippingConfig {
    ShippingConfig {
        sink: format!("file://{}", dir.display()),
        endpoint: None,
        region: "us-east-1".to_string(),
        access_key_id: None,
        secret_access_key: None,
        allow_http: false,
        interval_secs: 1,
        backlog_alert_events: u64::MAX,
        encryption_key: None,
        keep_local_secs: None,
        retention_interval_secs: 300,
        sink_check_interval_secs: 3600,
        sink_expires: false,
        sink_lost_accepted: Vec::new(),
    }
}

/// A temporary directory under `$GATEHOUSE_BENCH_DIR` (default: the system temp dir).
fn bench_dir(prefix: &str) -> tempfile::TempDir {
    let base = std::env::var_os("GATEHOUSE_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .unwrap_or_else(|e| fail("creating a temporary directory", e))
}

fn bench_append(c: &mut Criterion) {
    let tmp = bench_dir("gatehouse-bench-recorder-");
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

    for (name, durability, signed, shipped) in [
        ("sync", Durability::Sync, false, false),
        ("sync_signed", Durability::Sync, true, false),
        ("sync_shipped", Durability::Sync, true, true),
        ("buffered", Durability::Buffered, false, false),
    ] {
        let cfg = RecorderConfig {
            dir: tmp.path().join(name),
            durability,
            max_batch: 4096,
            checkpoints: signed.then(|| CheckpointConfig {
                key: SecretRef::File(key_file.clone()),
                // Shipped: as `deploy/gatehouse.example.toml` (a segment per checkpoint).
                every_events: if shipped { 10_000 } else { 1000 },
                every_secs: 10,
            }),
            shipping: shipped.then(|| file_sink(&tmp.path().join(format!("{name}-sink")))),
            literals: Default::default(),
            results: Default::default(),
        };
        let rec = Recorder::open(&cfg).unwrap_or_else(|e| fail("opening the recorder", e));
        // The shipper runs in the benchmark's runtime, as the gateway runs it in its own.
        let shipping = Shipper::from_config(&cfg, rec.clone())
            .unwrap_or_else(|e| fail("configuring the shipper", e))
            .map(|shipper| {
                let shipper = Arc::new(shipper);
                let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
                let task = rt.spawn({
                    let shipper = shipper.clone();
                    async move {
                        shipper
                            .run(async {
                                let _ = stop_rx.await;
                            })
                            .await
                    }
                });
                (shipper, stop_tx, task)
            });

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
        // Sessions without a barrier between rounds: each goes on to its next statement as
        // soon as its own decision is durable, as independent clients do. This is the
        // sustained rate group commit reaches (decisions; each also appends a result), for
        // each count of sessions in `$GATEHOUSE_BENCH_STEADY_SESSIONS` (default 64 and 512:
        // with sync durability the rate grows with the sessions sharing each fsync until the
        // CPUs are busy).
        g.throughput(Throughput::Elements(1));
        for sessions in steady_sessions() {
            let before = rec.stats();
            g.bench_function(format!("append_decision_steady_{sessions}_sessions"), |b| {
                b.iter_custom(|iters| {
                    let rec = rec.clone();
                    let stmt = stmt.clone();
                    rt.block_on(async move {
                        let per = iters.div_ceil(sessions);
                        let start = Instant::now();
                        let mut set = tokio::task::JoinSet::new();
                        for s in 0..sessions {
                            let (rec, stmt) = (rec.clone(), stmt.clone());
                            set.spawn(async move {
                                for op in 0..per {
                                    rec.append(decision(&stmt, s, op)).await?;
                                    rec.append_nowait(result(s, op));
                                }
                                Ok::<(), gatehouse_recorder::RecorderError>(())
                            });
                        }
                        while let Some(r) = set.join_next().await {
                            match r {
                                Ok(Ok(())) => {}
                                Ok(Err(e)) => fail("append", e),
                                Err(e) => fail("append task", e),
                            }
                        }
                        // Time per decision, of the iterations asked for.
                        start.elapsed().mul_f64(iters as f64 / (per * sessions) as f64)
                    })
                })
            });
            let after = rec.stats();
            let (events, commits) = (after.appended - before.appended, after.batches - before.batches);
            if events > 0 {
                eprintln!(
                    "recorder_{name}/append_decision_steady_{sessions}_sessions: {events} events in \
                     {commits} group commits ({:.1} events/commit)",
                    events as f64 / commits.max(1) as f64
                );
            }
        }
        g.finish();
        let stats = rec.stats();
        // The search indexes trail the writer (searches read what they have not reached):
        // how far behind the load left them, and how long they took to catch up.
        let caught_up = Instant::now();
        while rec.stats().indexed_seq < stats.last_seq && caught_up.elapsed() < Duration::from_secs(600) {
            std::thread::sleep(Duration::from_millis(1));
        }
        eprintln!(
            "recorder_{name}: {} events in {} group commits ({:.1} events/commit); search indexes \
             {} events behind at the end, caught up {:.3} s later",
            stats.appended,
            stats.batches,
            stats.appended as f64 / stats.batches.max(1) as f64,
            stats.last_seq.saturating_sub(stats.indexed_seq),
            caught_up.elapsed().as_secs_f64()
        );
        if let Some((shipper, stop, task)) = shipping {
            let status = shipper.status();
            let acked = status.acked_seq.load(std::sync::atomic::Ordering::Relaxed);
            eprintln!(
                "recorder_{name}: the shipper stored {} segments ({} bytes); {} events not \
                 yet acknowledged at the end",
                status.segments.load(std::sync::atomic::Ordering::Relaxed),
                status.bytes.load(std::sync::atomic::Ordering::Relaxed),
                stats.last_seq.saturating_sub(acked)
            );
            let _ = stop.send(());
            let _ = rt.block_on(task);
        }
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

/// Search over a larger log: `GATEHOUSE_BENCH_SEARCH_EVENTS` events (default 1,000,000),
/// 1,000 principals, one statement in 1,000 a denied DELETE. Each query asks for the newest
/// 100 matches, as `gatehouse audit search` does by default.
fn bench_search(c: &mut Criterion) {
    let n = env_count("GATEHOUSE_BENCH_SEARCH_EVENTS", 1_000_000);
    let tmp = bench_dir("gatehouse-bench-search-");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail("starting tokio", e));
    let select = classify_one("SELECT abalance FROM pgbench_accounts WHERE aid = 48213");
    let delete = classify_one("DELETE FROM pgbench_history WHERE tid = 7");
    let rec = Recorder::open(&RecorderConfig {
        dir: tmp.path().join("log"),
        durability: Durability::Buffered,
        max_batch: 4096,
        checkpoints: None,
        shipping: None,
        literals: Default::default(),
        results: Default::default(),
    })
    .unwrap_or_else(|e| fail("opening the recorder", e));
    let started = Instant::now();
    rt.block_on(async {
        for i in 0..n {
            let who = i % 1000;
            let (stmt, verdict) = if i % 1000 == 999 {
                (
                    &delete,
                    Verdict::Deny {
                        reason: "writes are not allowed".to_string(),
                        policy_ids: vec!["agents-read-only".to_string()],
                    },
                )
            } else {
                (
                    &select,
                    Verdict::Allow {
                        policy_ids: vec!["users-read-anywhere".to_string()],
                    },
                )
            };
            let ev = decision_event(
                format!("search-session-{who:04}"),
                format!("user:u{who:04}"),
                stmt,
                verdict,
                i,
            );
            // Wait now and then so the queue stays bounded.
            if i % 4096 == 4095 {
                if let Err(e) = rec.append(ev).await {
                    fail("append", e);
                }
            } else {
                rec.append_nowait(ev);
            }
        }
    });
    // The writer stays open, as a running gateway's does while it is searched; its indexes
    // are caught up first, so that every case reads them.
    let waiting = Instant::now();
    while rec.stats().indexed_seq < rec.stats().last_seq {
        if waiting.elapsed() > Duration::from_secs(600) {
            fail("indexing", "the search indexes did not catch up in 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    eprintln!(
        "recorder_search: {n} events written with their indexes in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let reader = LogReader::open(&tmp.path().join("log")).unwrap_or_else(|e| fail("opening the log", e));
    let query = |f: &dyn Fn(&mut SearchQuery)| {
        let mut q = SearchQuery {
            from_us: i64::MIN,
            to_us: i64::MAX,
            limit: 100,
            ..SearchQuery::default()
        };
        f(&mut q);
        q
    };
    let cases = [
        ("principal", query(&|q| q.principal = Some("user:u0421".into()))),
        ("text_rare", query(&|q| q.text = Some("pgbench_history".into()))),
        (
            "principal_and_decision",
            query(&|q| {
                q.principal = Some("user:u0999".into());
                q.decision = Some("deny".into());
            }),
        ),
        (
            "principal_and_rare_policy",
            query(&|q| {
                q.principal = Some("user:u0421".into());
                q.policy = Some("agents-read-only".into());
            }),
        ),
        ("kind_common", query(&|q| q.kind = Some("decision".into()))),
    ];
    let mut g = c.benchmark_group(format!("recorder_search_{n}"));
    g.sample_size(20);
    for (name, q) in &cases {
        g.bench_function(*name, |b| {
            b.iter(|| {
                let r = reader.search(q).unwrap_or_else(|e| fail("search", e));
                r.events.len()
            })
        });
    }
    // Replay's lookup: every event of one session (one in a thousand of the log's, spread
    // over all of it).
    let session_events = |reader: &LogReader| {
        reader
            .session_events("search-session-0421")
            .unwrap_or_else(|e| fail("session events", e))
            .len()
    };
    g.bench_function("session_events", |b| b.iter(|| session_events(&reader)));
    // The same from a reader opened for the query, as each admin request and CLI command
    // does: while the gateway runs, the open replays the WAL past the last memtable flush,
    // and the block cache starts empty (the OS's page cache stays warm).
    let dir = tmp.path().join("log");
    let open = || LogReader::open(&dir).unwrap_or_else(|e| fail("opening the log", e));
    let principal = &cases[0].1;
    g.bench_function("principal_new_reader", |b| {
        b.iter(|| {
            let r = open().search(principal).unwrap_or_else(|e| fail("search", e));
            r.events.len()
        })
    });
    g.bench_function("session_events_new_reader", |b| {
        b.iter(|| session_events(&open()))
    });
    // Once the gateway stopped (its shutdown writes the memtables out): no WAL to replay.
    drop(reader);
    let closing = Instant::now();
    rec.shutdown();
    eprintln!(
        "recorder_search: the writer shut down in {:.2}s (its memtables written out)",
        closing.elapsed().as_secs_f64()
    );
    g.bench_function("principal_new_reader_stopped", |b| {
        b.iter(|| {
            let r = open().search(principal).unwrap_or_else(|e| fail("search", e));
            r.events.len()
        })
    });
    g.finish();
}

/// `gatehouse audit restore`: `GATEHOUSE_BENCH_RESTORE_EVENTS` events (default 200,000; 64
/// sessions, a decision and its result per statement), signed every 10,000 and shipped to a
/// filesystem sink, rebuilt from it: read and verified segment by segment, written, its
/// summaries and search indexes built.
fn bench_restore(c: &mut Criterion) {
    let n = env_count("GATEHOUSE_BENCH_RESTORE_EVENTS", 200_000);
    let tmp = bench_dir("gatehouse-bench-restore-");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail("starting tokio", e));
    let (private, public, _) =
        CheckpointSigner::generate().unwrap_or_else(|e| fail("generating a checkpoint key", e));
    let key_file = tmp.path().join("audit-signing.pem");
    std::fs::write(&key_file, private).unwrap_or_else(|e| fail("writing the key", e));
    let mut keys = PublicKeys::default();
    keys.add_pem(&public)
        .unwrap_or_else(|e| fail("reading the public key", e));
    let shipping = file_sink(&tmp.path().join("sink"));
    let cfg = RecorderConfig {
        dir: tmp.path().join("log"),
        durability: Durability::Buffered,
        max_batch: 4096,
        checkpoints: Some(CheckpointConfig {
            key: SecretRef::File(key_file),
            every_events: 10_000,
            every_secs: 3600,
        }),
        shipping: Some(shipping.clone()),
        literals: Default::default(),
        results: Default::default(),
    };
    let rec = Recorder::open(&cfg).unwrap_or_else(|e| fail("opening the recorder", e));
    let stmt = classify_one("SELECT abalance FROM pgbench_accounts WHERE aid = 48213");
    let started = Instant::now();
    rt.block_on(async {
        for i in 0..n / 2 {
            let (s, op) = (i % SESSIONS, i / SESSIONS);
            rec.append_nowait(result(s, op));
            // Wait now and then so the queue stays bounded.
            if i % 2048 == 2047 {
                if let Err(e) = rec.append(decision(&stmt, s, op)).await {
                    fail("append", e);
                }
            } else {
                rec.append_nowait(decision(&stmt, s, op));
            }
        }
    });
    rec.shutdown();
    let rec = Recorder::open(&cfg).unwrap_or_else(|e| fail("opening the recorder", e));
    let shipper = Shipper::from_config(&cfg, rec.clone())
        .unwrap_or_else(|e| fail("starting the shipper", e))
        .unwrap_or_else(|| fail("starting the shipper", "not configured"));
    let segments = rt
        .block_on(shipper.ship_sealed())
        .unwrap_or_else(|e| fail("shipping", e));
    rec.shutdown();
    eprintln!(
        "recorder_restore: {n} events written and shipped in {segments} segments in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let sink = Sink::from_config(&shipping).unwrap_or_else(|e| fail("opening the sink", e));
    let events = LogReader::open(&cfg.dir)
        .and_then(|r| r.last_seq())
        .unwrap_or_else(|e| fail("reading the log", e));

    let mut g = c.benchmark_group("recorder_restore");
    g.sample_size(10).throughput(Throughput::Elements(events));
    let mut round = 0u64;
    g.bench_function(format!("restore_{events}_events"), |b| {
        b.iter(|| {
            round += 1;
            let out = tmp.path().join(format!("restored-{round}"));
            let restored = rt
                .block_on(restore_from_sink(&sink, &keys, &out))
                .unwrap_or_else(|e| fail("restore", e));
            if !restored.written || restored.indexed_seq != events {
                fail("restore", format!("{:?}", restored.report.first_tampering()));
            }
            if let Err(e) = std::fs::remove_dir_all(&out) {
                fail("removing the restored log", e);
            }
        })
    });
    g.finish();
}

/// Session counts of the steady group-commit benchmark: `$GATEHOUSE_BENCH_STEADY_SESSIONS`, a
/// comma-separated list (default 64 and 512); a repeated count runs once.
fn steady_sessions() -> Vec<u64> {
    const VAR: &str = "GATEHOUSE_BENCH_STEADY_SESSIONS";
    let raw = std::env::var(VAR).unwrap_or_else(|_| "64,512".to_string());
    let mut counts: Vec<u64> = Vec::new();
    for part in raw.split(',') {
        match part.trim().parse::<u64>() {
            Ok(n) if n > 0 => {
                if !counts.contains(&n) {
                    counts.push(n);
                }
            }
            _ => fail(
                VAR,
                format!("`{raw}`: expected positive session counts separated by commas"),
            ),
        }
    }
    counts
}

/// A count from the environment, or `default` when unset or not a number.
fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

criterion_group!(benches, bench_append, bench_search, bench_restore);
criterion_main!(benches);
