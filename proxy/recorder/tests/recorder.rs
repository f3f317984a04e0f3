#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::collections::BTreeMap;
use std::path::Path;

use gatehouse_core::config::{Durability, RecorderConfig};
use gatehouse_core::{Principal, PrincipalKind, SqlStatement, StatementKind, Verdict};
use gatehouse_recorder::{
    EventBody, GENESIS_HASH, LogReader, NewEvent, OpError, Recorder, RecorderError, render_transcript,
};

fn cfg(dir: &Path, durability: Durability) -> RecorderConfig {
    RecorderConfig {
        dir: dir.to_path_buf(),
        durability,
        max_batch: 4096,
    }
}

fn agent() -> Principal {
    Principal {
        kind: PrincipalKind::Agent,
        id: "etl".into(),
        groups: vec!["bots".into()],
        attrs: BTreeMap::new(),
        on_behalf_of: Some("alice".into()),
    }
}

fn ev(session: &str, time_us: i64, body: EventBody) -> NewEvent {
    NewEvent {
        time_us,
        session_id: session.into(),
        principal: Some("agent:etl".into()),
        body,
    }
}

fn start(session: &str, t: i64) -> NewEvent {
    ev(
        session,
        t,
        EventBody::SessionStart {
            protocol: "postgres".into(),
            source: "127.0.0.1:50000".into(),
            target: "app".into(),
            client_app: Some("psql".into()),
            auth_method: "scram-sha-256".into(),
            principal: agent(),
        },
    )
}

fn query(session: &str, t: i64, op: u64, text: &str, verdict: Verdict) -> NewEvent {
    ev(
        session,
        t,
        EventBody::Decision {
            op,
            action: "query".into(),
            statement: Some(SqlStatement {
                text: text.into(),
                kind: Some(StatementKind::Select),
                command: "SelectStmt".into(),
                tables_read: vec!["public.orders".into()],
                ..SqlStatement::default()
            }),
            verdict,
            policy_generation: 3,
            errors: vec![],
            plugins: vec![],
            hold: None,
            approval: None,
        },
    )
}

fn allow(id: &str) -> Verdict {
    Verdict::Allow {
        policy_ids: vec![id.into()],
    }
}

fn deny(id: &str) -> Verdict {
    Verdict::Deny {
        reason: "writes are not allowed".into(),
        policy_ids: vec![id.into()],
    }
}

fn result(session: &str, t: i64, op: u64, tag: &str, rows: u64) -> NewEvent {
    ev(
        session,
        t,
        EventBody::OpResult {
            op,
            tag: Some(tag.into()),
            rows,
            duration_us: 1234,
            error: None,
            skipped: false,
        },
    )
}

fn end(session: &str, t: i64) -> NewEvent {
    ev(
        session,
        t,
        EventBody::SessionEnd {
            reason: "client closed".into(),
            ops: 2,
            duration_us: 5_000_000,
        },
    )
}

/// A small two-session log: s1 (ended, one allow one deny) and s2 (open).
async fn populate(rec: &Recorder) {
    assert_eq!(rec.append(start("s1", 1_000)).await.unwrap(), 1);
    rec.append(query(
        "s1",
        1_100,
        1,
        "[select] SELECT * FROM orders",
        allow("read-orders"),
    ))
    .await
    .unwrap();
    rec.append_nowait(result("s1", 1_200, 1, "SELECT 3", 3));
    rec.append(query("s1", 1_300, 2, "DELETE FROM orders", deny("no-writes")))
        .await
        .unwrap();
    rec.append(start("s2", 2_000)).await.unwrap();
    rec.append_nowait(ev(
        "s1",
        1_400,
        EventBody::OpResult {
            op: 2,
            tag: None,
            rows: 0,
            duration_us: 0,
            error: Some(OpError {
                code: "42501".into(),
                message: "denied".into(),
            }),
            skipped: true,
        },
    ));
    assert_eq!(rec.append(end("s1", 9_000)).await.unwrap(), 7);
}

#[tokio::test]
async fn append_is_durable_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(&cfg(dir.path(), Durability::Sync)).unwrap();
    populate(&rec).await;
    let st = rec.stats();
    assert_eq!((st.appended, st.failed, st.last_seq, st.pending), (7, 0, 7, 0));
    rec.shutdown();

    let r = LogReader::open(dir.path()).unwrap();
    let all = r.events(1, 100).unwrap();
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    assert_eq!(all[0].prev_hash, GENESIS_HASH);
    for w in all.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].hash);
    }
    assert!(matches!(all[0].body, EventBody::SessionStart { .. }));
    assert_eq!(
        r.events(3, 2).unwrap().iter().map(|e| e.seq).collect::<Vec<_>>(),
        [3, 4]
    );
    assert!(r.events(8, 10).unwrap().is_empty());

    let s1 = r.session_events("s1").unwrap();
    assert_eq!(s1.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 6, 7]);
    assert!(s1.iter().all(|e| e.session_id == "s1"));
    assert_eq!(r.session_events("s2").unwrap().len(), 1);
    assert!(r.session_events("s").unwrap().is_empty());
    assert!(r.session_events("nope").unwrap().is_empty());
}

#[tokio::test]
async fn sessions_summary_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(&cfg(dir.path(), Durability::Sync)).unwrap();
    populate(&rec).await;
    rec.append(NewEvent {
        time_us: 3_000,
        session_id: "s3".into(),
        principal: None,
        body: EventBody::AuthFailure {
            protocol: "postgres".into(),
            source: "10.0.0.9:4000".into(),
            user: "mallory".into(),
            target: "app".into(),
            reason: "bad key".into(),
        },
    })
    .await
    .unwrap();
    let r = LogReader::open(dir.path()).unwrap(); // while the writer is live
    let ss = r.sessions().unwrap();
    assert_eq!(
        ss.iter().map(|s| s.session_id.as_str()).collect::<Vec<_>>(),
        ["s3", "s2", "s1"]
    );
    let s1 = &ss[2];
    assert_eq!(s1.principal.as_deref(), Some("agent:etl"));
    assert_eq!(
        (s1.target.as_str(), s1.source.as_str()),
        ("app", "127.0.0.1:50000")
    );
    assert_eq!(s1.start_us, 1_000);
    assert_eq!(s1.end_us, Some(9_000));
    assert_eq!(s1.end_reason.as_deref(), Some("client closed"));
    assert_eq!((s1.ops, s1.denied), (2, 1));
    let s2 = &ss[1];
    assert!(!s2.is_ended());
    assert_eq!((s2.ops, s2.denied), (0, 0));
    let s3 = &ss[0];
    assert!(s3.auth_failed && s3.principal.is_none());
    assert_eq!(s3.user.as_deref(), Some("mallory"));
    assert_eq!(r.session("s1").unwrap().as_ref(), Some(s1));
    rec.shutdown();
}

#[tokio::test]
async fn chain_verifies_and_detects_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(&cfg(dir.path(), Durability::Sync)).unwrap();
    populate(&rec).await;
    rec.shutdown();

    let report = LogReader::open(dir.path()).unwrap().verify_chain().unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.events_checked, report.last_seq), (7, 7));

    // Rewrite event 4's statement text directly in RocksDB.
    {
        let db = rocksdb::DB::open_cf(
            &rocksdb::Options::default(),
            dir.path(),
            ["events", "by_session", "sessions", "meta"],
        )
        .unwrap();
        let cf = db.cf_handle("events").unwrap();
        let key = 4u64.to_be_bytes();
        let v = String::from_utf8(db.get_cf(cf, key).unwrap().unwrap()).unwrap();
        assert!(v.contains("DELETE FROM orders"));
        db.put_cf(cf, key, v.replace("DELETE FROM orders", "SELECT 1 FROM orders"))
            .unwrap();
    }
    let report = LogReader::open(dir.path()).unwrap().verify_chain().unwrap();
    let broken = report.broken.clone().unwrap();
    assert_eq!(broken.seq, 4, "{report:?}");
    assert!(broken.reason.contains("hash"), "{broken:?}");
    assert_eq!(report.events_checked, 3);
}

#[tokio::test]
async fn verify_detects_deleted_and_truncated_events() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(&cfg(dir.path(), Durability::Sync)).unwrap();
    populate(&rec).await;
    rec.shutdown();
    let open = || {
        rocksdb::DB::open_cf(
            &rocksdb::Options::default(),
            dir.path(),
            ["events", "by_session", "sessions", "meta"],
        )
        .unwrap()
    };
    {
        let db = open();
        db.delete_cf(db.cf_handle("events").unwrap(), 7u64.to_be_bytes())
            .unwrap();
    }
    let report = LogReader::open(dir.path()).unwrap().verify_chain().unwrap();
    assert_eq!(report.broken.as_ref().map(|b| b.seq), Some(7), "{report:?}");
    // A truncated log is refused by the writer rather than silently continued.
    assert!(matches!(
        Recorder::open(&cfg(dir.path(), Durability::Sync)),
        Err(RecorderError::Corrupt(_))
    ));
    {
        let db = open();
        db.delete_cf(db.cf_handle("events").unwrap(), 3u64.to_be_bytes())
            .unwrap();
    }
    let report = LogReader::open(dir.path()).unwrap().verify_chain().unwrap();
    let b = report.broken.unwrap();
    assert_eq!(b.seq, 3);
    assert!(b.reason.contains("missing"), "{b:?}");
}

#[tokio::test]
async fn reopen_recovers_head_and_continues_chain() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(&cfg(dir.path(), Durability::Sync)).unwrap();
    populate(&rec).await;
    rec.shutdown();
    drop(rec);

    let rec = Recorder::open(&cfg(dir.path(), Durability::Buffered)).unwrap();
    assert_eq!(rec.stats().last_seq, 7);
    assert_eq!(
        rec.append(query("s2", 2_100, 1, "SELECT 2", allow("p")))
            .await
            .unwrap(),
        8
    );
    rec.append(end("s2", 2_200)).await.unwrap();
    rec.shutdown();

    let r = LogReader::open(dir.path()).unwrap();
    let report = r.verify_chain().unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.last_seq, 9);
    let evs = r.events(7, 10).unwrap();
    assert_eq!(evs[1].prev_hash, evs[0].hash);
    // The summary of the session that spanned the restart kept counting.
    let s2 = r.session("s2").unwrap().unwrap();
    assert_eq!((s2.ops, s2.start_us, s2.end_us), (1, 2_000, Some(2_200)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_group_committed() {
    const TASKS: u64 = 64;
    const PER_TASK: u64 = 40;
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(&cfg(dir.path(), Durability::Sync)).unwrap();
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let rec = rec.clone();
        handles.push(tokio::spawn(async move {
            let session = format!("sess-{t}");
            let mut seqs = vec![rec.append(start(&session, 10)).await.unwrap()];
            for i in 0..PER_TASK - 1 {
                let e = query(&session, 20, i, "SELECT 1", allow("p"));
                seqs.push(rec.append(e).await.unwrap());
            }
            seqs
        }));
    }
    let mut seqs = Vec::new();
    for h in handles {
        let s = h.await.unwrap();
        assert!(s.windows(2).all(|w| w[0] < w[1]), "per-task order kept");
        seqs.extend(s);
    }
    seqs.sort_unstable();
    let n = TASKS * PER_TASK;
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
    let st = rec.stats();
    assert_eq!((st.appended, st.last_seq, st.failed), (n, n, 0));
    assert!(
        st.batches < n / 4,
        "group commit: {} batches for {n} events",
        st.batches
    );
    let r = LogReader::open(dir.path()).unwrap();
    assert!(r.verify_chain().unwrap().is_ok());
    assert_eq!(r.sessions().unwrap().len(), TASKS as usize);
    assert!(r.sessions().unwrap().iter().all(|s| s.ops == PER_TASK - 1));
    rec.shutdown();
}

#[tokio::test]
async fn append_after_shutdown_fails() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(&cfg(dir.path(), Durability::Sync)).unwrap();
    rec.append_nowait(start("s1", 1));
    let other = rec.clone();
    rec.shutdown();
    rec.shutdown(); // idempotent
    // The queued event was flushed by shutdown.
    assert_eq!(rec.stats().last_seq, 1);
    assert!(matches!(
        other.append(end("s1", 2)).await,
        Err(RecorderError::Closed)
    ));
    other.append_nowait(end("s1", 3));
    let st = rec.stats();
    assert_eq!((st.appended, st.failed), (1, 2));
    // The database lock is released: it can be opened again.
    let again = Recorder::open(&cfg(dir.path(), Durability::Sync)).unwrap();
    assert_eq!(again.append(end("s1", 4)).await.unwrap(), 2);
}

#[tokio::test]
async fn reader_sees_commits_of_a_live_writer() {
    for durability in [Durability::Sync, Durability::Buffered] {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recorder::open(&cfg(dir.path(), durability)).unwrap();
        // An empty log reads as empty.
        let r = LogReader::open(dir.path()).unwrap();
        assert!(r.sessions().unwrap().is_empty());
        assert!(r.verify_chain().unwrap().is_ok());
        populate(&rec).await;
        let r = LogReader::open(dir.path()).unwrap();
        assert_eq!(r.last_seq().unwrap(), 7, "{durability:?}");
        assert_eq!(r.session_events("s1").unwrap().len(), 6);
        assert!(r.verify_chain().unwrap().is_ok());
        // The writer keeps working while the reader is open.
        assert_eq!(rec.append(end("s2", 10_000)).await.unwrap(), 8);
        rec.shutdown();
    }
}

#[test]
fn reader_on_missing_dir_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        LogReader::open(&dir.path().join("nope")),
        Err(RecorderError::NotFound { .. })
    ));
}

#[tokio::test]
async fn transcript_shows_statements_decisions_and_policies() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(&cfg(dir.path(), Durability::Sync)).unwrap();
    populate(&rec).await;
    rec.shutdown();
    let r = LogReader::open(dir.path()).unwrap();
    let text = render_transcript(&r.session_events("s1").unwrap());
    println!("{text}");
    for needle in [
        "session s1  agent:etl",
        "session start  agent:etl from 127.0.0.1:50000 to app via postgres",
        "op 1 query  ALLOW  policies: read-orders",
        "[select] SELECT * FROM orders",
        "op 1 result  SELECT 3  3 rows  1.234 ms",
        "op 2 query  DENY \"writes are not allowed\"  policies: no-writes",
        "DELETE FROM orders",
        "op 2 result  skipped  error 42501: denied",
        "session end  client closed (2 ops, 5.000 s)",
        "1970-01-01T00:00:00.001Z",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    assert_eq!(render_transcript(&[]), "");
}
