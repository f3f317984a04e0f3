#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::collections::BTreeMap;
use std::path::Path;

use gatehouse_core::config::{CheckpointConfig, Durability, RecorderConfig, SecretRef};
use gatehouse_core::{Principal, PrincipalKind, SqlStatement, StatementKind, Verdict};
use gatehouse_recorder::{
    Checkpoint, CheckpointSigner, Event, EventBody, ExportOptions, FindingKind, GENESIS_HASH, LogReader,
    NewEvent, OpError, Outcome, PublicKeys, Recorder, RecorderError, TailPolicy, VerifyReport,
    canonical_from_stored, chain_hash, export_bundle, render_transcript, verify_bundle,
};

fn cfg(dir: &Path, durability: Durability) -> RecorderConfig {
    RecorderConfig {
        dir: dir.to_path_buf(),
        durability,
        max_batch: 4096,
        checkpoints: None,
        shipping: None,
        literals: Default::default(),
        results: Default::default(),
    }
}

fn agent() -> Principal {
    Principal {
        kind: PrincipalKind::Agent,
        id: "etl".into(),
        groups: vec!["bots".into()],
        attrs: BTreeMap::new(),
        on_behalf_of: Some("alice".into()),
        actor_chain: Vec::new(),
    }
}

fn ev(session: &str, time_us: i64, body: EventBody) -> NewEvent {
    NewEvent {
        time_us,
        session_id: session.into(),
        principal: Some("agent:etl".into()),
        on_behalf_of: None,
        actor_chain: Vec::new(),
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
            target_tags: [("env".to_string(), "prod".to_string())].into(),
            auth: None,
            grant: None,
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
            unheld: None,
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
            result: None,
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
            result: None,
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
        on_behalf_of: None,
        actor_chain: Vec::new(),
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

/// Open a log's RocksDB directly, as someone tampering with it would.
fn raw_db(dir: &Path) -> rocksdb::DB {
    let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir).unwrap();
    rocksdb::DB::open_cf(&rocksdb::Options::default(), dir, cfs).unwrap()
}

fn kinds(report: &VerifyReport) -> Vec<FindingKind> {
    report.findings.iter().map(|f| f.kind).collect()
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
    // Without checkpoints and keys, an intact chain is still only "incomplete".
    assert_eq!(kinds(&report), [FindingKind::NoKey]);
    assert_eq!(report.outcome(TailPolicy::live(60)), Outcome::Incomplete);

    // Rewrite event 4's statement text directly in RocksDB.
    {
        let db = raw_db(dir.path());
        let cf = db.cf_handle("events").unwrap();
        let key = 4u64.to_be_bytes();
        let v = String::from_utf8(db.get_cf(cf, key).unwrap().unwrap()).unwrap();
        assert!(v.contains("DELETE FROM orders"));
        db.put_cf(cf, key, v.replace("DELETE FROM orders", "SELECT 1 FROM orders"))
            .unwrap();
    }
    let report = LogReader::open(dir.path()).unwrap().verify_chain().unwrap();
    let first = report.first_tampering().unwrap();
    assert_eq!(
        (first.kind, first.seq),
        (FindingKind::Altered, Some(4)),
        "{report:?}"
    );
    // One edit, one finding: the next event still links to the recorded hash.
    assert_eq!(kinds(&report), [FindingKind::Altered, FindingKind::NoKey]);
    assert_eq!(report.outcome(TailPolicy::live(60)), Outcome::Tampered);
}

#[tokio::test]
async fn verify_detects_deleted_and_truncated_events() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(&cfg(dir.path(), Durability::Sync)).unwrap();
    populate(&rec).await;
    rec.shutdown();
    {
        let db = raw_db(dir.path());
        db.delete_cf(db.cf_handle("events").unwrap(), 7u64.to_be_bytes())
            .unwrap();
    }
    let report = LogReader::open(dir.path()).unwrap().verify_chain().unwrap();
    let t = report.first_tampering().unwrap();
    assert_eq!((t.kind, t.seq), (FindingKind::Truncated, Some(7)), "{report:?}");
    // A truncated log is refused by the writer rather than silently continued.
    assert!(matches!(
        Recorder::open(&cfg(dir.path(), Durability::Sync)),
        Err(RecorderError::Corrupt(_))
    ));
    {
        let db = raw_db(dir.path());
        db.delete_cf(db.cf_handle("events").unwrap(), 3u64.to_be_bytes())
            .unwrap();
    }
    let report = LogReader::open(dir.path()).unwrap().verify_chain().unwrap();
    let b = report.first_tampering().unwrap();
    assert_eq!((b.kind, b.seq), (FindingKind::Missing, Some(3)), "{report:?}");
    assert!(b.message.contains("event 3 is missing"), "{b:?}");
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

// --- Signed checkpoints, offline verification and bundles ---------------------------------

struct SignedLog {
    dir: tempfile::TempDir,
    keys: PublicKeys,
    signer_pem: String,
}

/// A populated log (7 events) with a checkpoint every 3 events, closed (so signed to its end).
async fn signed_log() -> SignedLog {
    let dir = tempfile::tempdir().unwrap();
    let (private, public, _) = CheckpointSigner::generate().unwrap();
    let key_file = dir.path().join("signing.pem");
    std::fs::write(&key_file, &private).unwrap();
    let log = dir.path().join("log");
    let mut c = cfg(&log, Durability::Sync);
    c.checkpoints = Some(CheckpointConfig {
        key: SecretRef::File(key_file),
        every_events: 3,
        every_secs: 3600,
    });
    let rec = Recorder::open(&c).unwrap();
    populate(&rec).await;
    rec.shutdown();
    let mut keys = PublicKeys::default();
    keys.add_pem(&public).unwrap();
    SignedLog {
        dir,
        keys,
        signer_pem: private,
    }
}

impl SignedLog {
    fn log(&self) -> std::path::PathBuf {
        self.dir.path().join("log")
    }

    fn verify(&self) -> VerifyReport {
        LogReader::open(&self.log()).unwrap().verify(&self.keys).unwrap()
    }

    /// Seqs of the checkpoints (which events a group commit ends at varies from run to run).
    fn checkpoint_seqs(&self) -> Vec<u64> {
        let r = LogReader::open(&self.log()).unwrap();
        r.checkpoints().unwrap().iter().map(|c| c.seq).collect()
    }

    /// The first checkpoint at or after `seq`.
    fn checkpoint_from(&self, seq: u64) -> u64 {
        *self.checkpoint_seqs().iter().find(|s| **s >= seq).unwrap()
    }
}

/// Re-seal `ev` after `prev` exactly as the writer does: the attacker's tool.
fn reseal(ev: &mut Event, prev: [u8; 32]) -> (Vec<u8>, [u8; 32]) {
    ev.prev_hash = hex::encode(prev);
    ev.hash = String::new();
    let canonical = serde_json::to_vec(&*ev).unwrap();
    let hash = chain_hash(&prev, &canonical);
    ev.hash = hex::encode(hash);
    (serde_json::to_vec(&*ev).unwrap(), hash)
}

#[tokio::test]
async fn checkpoints_sign_the_chain_and_a_closed_log_verifies_intact() {
    let l = signed_log().await;
    let r = LogReader::open(&l.log()).unwrap();
    let cps = r.checkpoints().unwrap();
    // At the first commit after opening, then by count (at the group commit that reaches 3
    // more events), then the rest when the log closed (7).
    let seqs: Vec<u64> = cps.iter().map(|c| c.seq).collect();
    assert!(seqs.len() >= 2 && seqs[0] < 7, "{seqs:?}");
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{seqs:?}");
    assert_eq!(seqs.last(), Some(&7));
    let evs = r.events(1, 10).unwrap();
    assert_eq!(cps.last().unwrap().hash, evs[6].hash);
    let report = l.verify();
    assert!(report.findings.is_empty(), "{report:?}");
    assert_eq!(report.outcome(TailPolicy::Strict), Outcome::Intact);
    assert_eq!(
        (report.checkpoints_verified, report.last_signed_seq),
        (seqs.len() as u64, 7)
    );

    // Another key (e.g. only the rotated-in one given): nothing can be vouched for.
    let mut other = PublicKeys::default();
    other.add_pem(&CheckpointSigner::generate().unwrap().1).unwrap();
    let report = r.verify(&other).unwrap();
    assert!(report.is_ok());
    assert!(kinds(&report).contains(&FindingKind::UnknownKey), "{report:?}");
    assert_eq!(report.outcome(TailPolicy::live(60)), Outcome::Incomplete);
}

#[tokio::test]
async fn a_consistent_rewrite_is_caught_only_by_the_signed_checkpoint() {
    let l = signed_log().await;
    // Rewrite event 4 (the denied DELETE becomes an allowed SELECT) and re-seal every later
    // event and the head marker, so the chain itself is perfectly consistent again.
    {
        let db = raw_db(&l.log());
        let cf = db.cf_handle("events").unwrap();
        let mut prev = {
            let v = db.get_cf(cf, 3u64.to_be_bytes()).unwrap().unwrap();
            canonical_from_stored(&v).unwrap().1
        };
        for seq in 4..=7u64 {
            let v = db.get_cf(cf, seq.to_be_bytes()).unwrap().unwrap();
            let mut ev: Event = serde_json::from_slice(&v).unwrap();
            if seq == 4 {
                let EventBody::Decision { verdict, .. } = &mut ev.body else {
                    panic!("event 4 is the DELETE decision")
                };
                *verdict = allow("read-orders");
            }
            let (bytes, hash) = reseal(&mut ev, prev);
            db.put_cf(cf, seq.to_be_bytes(), bytes).unwrap();
            prev = hash;
        }
        let head = serde_json::json!({"seq": 7, "hash": hex::encode(prev)}).to_string();
        db.put_cf(db.cf_handle("meta").unwrap(), b"head", head).unwrap();
    }
    let r = LogReader::open(&l.log()).unwrap();
    // The events alone cannot tell: every hash and link checks out.
    let chain_only = r.verify_chain().unwrap();
    assert!(
        chain_only
            .findings
            .iter()
            .all(|f| matches!(f.kind, FindingKind::CheckpointMismatch | FindingKind::NoKey)),
        "{chain_only:?}"
    );
    // The first checkpoint signed after event 4 was written can.
    let cp = l.checkpoint_from(4);
    let report = l.verify();
    let t = report.first_tampering().unwrap();
    assert_eq!(
        (t.kind, t.seq),
        (FindingKind::CheckpointMismatch, Some(cp)),
        "{report:?}"
    );
    assert_eq!(report.outcome(TailPolicy::live(60)), Outcome::Tampered);
    let before: Vec<u64> = l.checkpoint_seqs().into_iter().filter(|s| *s < 4).collect();
    assert_eq!(report.last_signed_seq, before.last().copied().unwrap_or(0));

    // Re-signing needs the private key: a forged checkpoint (hash replaced) fails its signature.
    {
        let db = raw_db(&l.log());
        let cf = db.cf_handle("checkpoints").unwrap();
        for seq in l.checkpoint_seqs().into_iter().filter(|s| *s >= 4) {
            let v = db.get_cf(cf, seq.to_be_bytes()).unwrap().unwrap();
            let mut cp: Checkpoint = serde_json::from_slice(&v).unwrap();
            let ev = r.events(seq, 1).unwrap().remove(0);
            cp.hash = ev.hash;
            db.put_cf(cf, seq.to_be_bytes(), serde_json::to_vec(&cp).unwrap())
                .unwrap();
        }
    }
    let report = l.verify();
    let t = report.first_tampering().unwrap();
    assert_eq!(
        (t.kind, t.seq),
        (FindingKind::BadSignature, Some(cp)),
        "{report:?}"
    );
}

#[tokio::test]
async fn swapped_events_and_a_cut_tail_are_named() {
    let l = signed_log().await;
    {
        let db = raw_db(&l.log());
        let cf = db.cf_handle("events").unwrap();
        let a = db.get_cf(cf, 2u64.to_be_bytes()).unwrap().unwrap();
        let b = db.get_cf(cf, 3u64.to_be_bytes()).unwrap().unwrap();
        db.put_cf(cf, 2u64.to_be_bytes(), b).unwrap();
        db.put_cf(cf, 3u64.to_be_bytes(), a).unwrap();
    }
    let report = l.verify();
    let t = report.first_tampering().unwrap();
    assert_eq!((t.kind, t.seq), (FindingKind::Reordered, Some(2)), "{report:?}");

    // Cut the last two events, and the head marker with them: the checkpoint at 7 remembers.
    let l = signed_log().await;
    {
        let db = raw_db(&l.log());
        let cf = db.cf_handle("events").unwrap();
        db.delete_cf(cf, 6u64.to_be_bytes()).unwrap();
        db.delete_cf(cf, 7u64.to_be_bytes()).unwrap();
        let v = db.get_cf(cf, 5u64.to_be_bytes()).unwrap().unwrap();
        let h = hex::encode(canonical_from_stored(&v).unwrap().1);
        let head = serde_json::json!({"seq": 5, "hash": h}).to_string();
        db.put_cf(db.cf_handle("meta").unwrap(), b"head", head).unwrap();
    }
    let report = l.verify();
    let t = report.first_tampering().unwrap();
    assert_eq!((t.kind, t.seq), (FindingKind::Truncated, Some(6)), "{report:?}");
    assert!(t.message.contains("2 events were cut off the end"), "{t:?}");
}

#[tokio::test]
async fn an_idle_log_is_signed_after_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let (private, _, _) = CheckpointSigner::generate().unwrap();
    let key_file = dir.path().join("k.pem");
    std::fs::write(&key_file, &private).unwrap();
    let log = dir.path().join("log");
    let mut c = cfg(&log, Durability::Sync);
    c.checkpoints = Some(CheckpointConfig {
        key: SecretRef::File(key_file),
        every_events: 1000,
        every_secs: 1,
    });
    let rec = Recorder::open(&c).unwrap();
    // The first commit after opening is signed at once; the next one waits for the interval.
    rec.append(start("s", 1)).await.unwrap();
    rec.append(start("t", 2)).await.unwrap();
    let mut seqs = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        seqs = LogReader::open(&log)
            .unwrap()
            .checkpoints()
            .unwrap()
            .iter()
            .map(|c| c.seq)
            .collect();
        if seqs.len() >= 2 {
            break;
        }
    }
    assert_eq!(seqs, [1, 2], "an idle writer signs its unsigned head");
    rec.shutdown();
    // Nothing new: no further checkpoint at close.
    let cps = LogReader::open(&log).unwrap().checkpoints().unwrap();
    assert_eq!(cps.len(), 2);
}

#[tokio::test]
async fn a_bad_signing_key_stops_the_recorder_from_opening() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("k.pem");
    std::fs::write(
        &key_file,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let mut c = cfg(&dir.path().join("log"), Durability::Sync);
    c.checkpoints = Some(CheckpointConfig {
        key: SecretRef::File(key_file),
        every_events: 10,
        every_secs: 10,
    });
    let err = Recorder::open(&c).unwrap_err();
    assert!(err.to_string().contains("checkpoint signing key"), "{err}");
}

fn export(
    l: &SignedLog,
    out: &Path,
    from_us: i64,
    to_us: i64,
    sign: bool,
) -> gatehouse_recorder::BundleSummary {
    let signer = CheckpointSigner::from_pem(&l.signer_pem).unwrap();
    let r = LogReader::open(&l.log()).unwrap();
    export_bundle(
        &r,
        &ExportOptions {
            from_us,
            to_us,
            out,
            signer: sign.then_some(&signer),
        },
    )
    .unwrap()
}

/// Rewrite `events.jsonl` of a copy of `src` with `f` applied to its lines.
fn tampered_copy(src: &Path, dst: &Path, f: impl FnOnce(&mut Vec<String>)) {
    std::fs::create_dir_all(dst.join("transcripts")).unwrap();
    for name in [
        "manifest.json",
        "manifest.sig",
        "checkpoints.jsonl",
        "sessions.jsonl",
        "events.ocsf.jsonl",
    ] {
        std::fs::copy(src.join(name), dst.join(name)).unwrap();
    }
    for e in std::fs::read_dir(src.join("transcripts")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join("transcripts").join(e.file_name())).unwrap();
    }
    let text = std::fs::read_to_string(src.join("events.jsonl")).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    f(&mut lines);
    std::fs::write(dst.join("events.jsonl"), lines.join("\n") + "\n").unwrap();
}

#[tokio::test]
async fn bundles_verify_offline_and_name_each_kind_of_tampering() {
    let l = signed_log().await;
    let out = l.dir.path().join("bundle");
    let s = export(&l, &out, i64::MIN, i64::MAX, true);
    assert_eq!(
        (s.first_seq, s.last_seq, s.events, s.sessions, s.checkpoints),
        (1, 7, 7, 2, l.checkpoint_seqs().len())
    );
    assert_eq!(s.unsigned_events, 0);
    let report = verify_bundle(&out, &l.keys).unwrap();
    assert!(report.findings.is_empty(), "{report:?}");
    assert_eq!(report.outcome(TailPolicy::Strict), Outcome::Intact);
    let transcript = std::fs::read_to_string(out.join("transcripts/s1.txt")).unwrap();
    assert!(transcript.contains("DELETE FROM orders"), "{transcript}");
    // The same events for a SIEM, in OCSF: the denied DELETE is a blocked datastore delete.
    let ocsf: Vec<serde_json::Value> = std::fs::read_to_string(out.join("events.ocsf.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let delete = ocsf
        .iter()
        .find(|v| v["query_info"]["query_string"] == "DELETE FROM orders")
        .unwrap_or_else(|| panic!("{ocsf:?}"));
    assert_eq!(
        (delete["class_uid"].as_u64(), delete["disposition"].as_str()),
        (Some(6005), Some("Blocked"))
    );
    assert!(ocsf.iter().any(|v| v["class_uid"] == 3002), "{ocsf:?}");

    let check = |name: &str, f: &dyn Fn(&mut Vec<String>), kind: FindingKind, seq: Option<u64>| {
        let dst = l.dir.path().join(name);
        tampered_copy(&out, &dst, f);
        let report = verify_bundle(&dst, &l.keys).unwrap();
        let t = report.first_tampering().unwrap();
        assert_eq!((t.kind, t.seq), (kind, seq), "{name}: {report:?}");
        // The file no longer matches the signed manifest either.
        assert!(
            kinds(&report).contains(&FindingKind::FileModified),
            "{name}: {report:?}"
        );
        assert_eq!(report.outcome(TailPolicy::live(60)), Outcome::Tampered);
    };
    check(
        "edited",
        &|lines| lines[3] = lines[3].replacen("DELETE", "SELECT", 1),
        FindingKind::Altered,
        Some(4),
    );
    check(
        "deleted",
        &|lines| {
            lines.remove(4);
        },
        FindingKind::Missing,
        Some(5),
    );
    check(
        "swapped",
        &|lines| lines.swap(1, 2),
        FindingKind::Reordered,
        Some(2),
    );
    check(
        "truncated",
        &|lines| lines.truncate(5),
        FindingKind::Truncated,
        Some(6),
    );

    // A derived file edited: only the manifest can tell.
    let dst = l.dir.path().join("transcript-edited");
    tampered_copy(&out, &dst, |_| {});
    std::fs::write(dst.join("transcripts/s1.txt"), "nothing happened\n").unwrap();
    let report = verify_bundle(&dst, &l.keys).unwrap();
    assert_eq!(
        report.first_tampering().map(|f| f.kind),
        Some(FindingKind::FileModified)
    );
    // The manifest itself edited: its signature fails.
    let dst = l.dir.path().join("manifest-edited");
    tampered_copy(&out, &dst, |_| {});
    let m = std::fs::read_to_string(dst.join("manifest.json")).unwrap();
    std::fs::write(
        dst.join("manifest.json"),
        m.replacen("\"last_seq\": 7", "\"last_seq\": 5", 1),
    )
    .unwrap();
    let report = verify_bundle(&dst, &l.keys).unwrap();
    assert!(kinds(&report).contains(&FindingKind::BadSignature), "{report:?}");
}

#[tokio::test]
async fn a_window_is_extended_to_its_next_checkpoint_and_unsigned_manifests_are_incomplete() {
    let l = signed_log().await;
    // Only event 4 (t=1300) is in the window; the range runs on to the next checkpoint, and
    // starts mid-chain without breaking verification.
    let out = l.dir.path().join("window");
    let s = export(&l, &out, 1_300, 1_300, false);
    let cp = l.checkpoint_from(4);
    assert_eq!(
        (s.first_seq, s.window_last_seq, s.last_seq, s.events),
        (4, 4, cp, cp - 3)
    );
    let report = verify_bundle(&out, &l.keys).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(kinds(&report), [FindingKind::Unsigned]);
    assert_eq!(report.outcome(TailPolicy::live(60)), Outcome::Incomplete);
    assert_eq!((report.first_seq, report.last_signed_seq), (4, cp));
    // An empty window is a valid, empty bundle.
    let empty = l.dir.path().join("empty");
    let s = export(&l, &empty, 5_000, 6_000, true);
    assert_eq!(s.events, 0);
    assert!(verify_bundle(&empty, &l.keys).unwrap().is_ok());
    // Exporting over a non-empty directory is refused.
    let r = LogReader::open(&l.log()).unwrap();
    let again = export_bundle(
        &r,
        &ExportOptions {
            from_us: 0,
            to_us: 1,
            out: &out,
            signer: None,
        },
    );
    assert!(matches!(again, Err(RecorderError::Invalid(_))));
}

#[tokio::test]
async fn deleting_recent_checkpoints_leaves_a_stale_signature_not_a_pass() {
    let l = signed_log().await;
    let cps = l.checkpoint_seqs();
    let kept = cps[0];
    assert!(kept < 7, "{cps:?}");
    // Remove every checkpoint after the first, and rewrite the tail after it (re-sealed, so the
    // chain itself is consistent): only the signatures could tell, and they are gone.
    {
        let db = raw_db(&l.log());
        let cf = db.cf_handle("checkpoints").unwrap();
        for seq in cps.iter().skip(1) {
            db.delete_cf(cf, seq.to_be_bytes()).unwrap();
        }
        let ev_cf = db.cf_handle("events").unwrap();
        let v = db.get_cf(ev_cf, kept.to_be_bytes()).unwrap().unwrap();
        let mut prev = canonical_from_stored(&v).unwrap().1;
        for seq in kept + 1..=7 {
            let v = db.get_cf(ev_cf, seq.to_be_bytes()).unwrap().unwrap();
            let mut ev: Event = serde_json::from_slice(&v).unwrap();
            if let EventBody::Decision { verdict, .. } = &mut ev.body {
                *verdict = allow("read-orders");
            }
            let (bytes, hash) = reseal(&mut ev, prev);
            db.put_cf(ev_cf, seq.to_be_bytes(), bytes).unwrap();
            prev = hash;
        }
        let head = serde_json::json!({"seq": 7, "hash": hex::encode(prev)}).to_string();
        db.put_cf(db.cf_handle("meta").unwrap(), b"head", head).unwrap();
    }
    let report = l.verify();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(kinds(&report), [FindingKind::UnsignedTail]);
    assert_eq!(report.last_signed_seq, kept);
    assert!(report.last_signed_time_us > 0);
    // Seconds after the checkpoint was signed, a running gateway looks just like this.
    assert_eq!(report.outcome(TailPolicy::live(60)), Outcome::Intact);
    // Once the last signature is older than the gateway's signing interval allows, it is not.
    let later = TailPolicy::Live {
        now_us: report.last_signed_time_us + 3_600_000_000,
        grace_us: 60_000_000,
    };
    assert_eq!(report.outcome(later), Outcome::Incomplete);
    assert_eq!(report.outcome(TailPolicy::Strict), Outcome::Incomplete);
}

#[tokio::test]
async fn a_removed_head_marker_and_corrupt_checkpoints_are_findings() {
    let l = signed_log().await;
    {
        let db = raw_db(&l.log());
        db.delete_cf(db.cf_handle("meta").unwrap(), b"head").unwrap();
    }
    let report = l.verify();
    let t = report.first_tampering().unwrap();
    assert_eq!((t.kind, t.seq), (FindingKind::Truncated, Some(7)), "{report:?}");
    assert!(t.message.contains("head marker is missing"), "{t:?}");

    let l = signed_log().await;
    let first = l.checkpoint_seqs()[0];
    {
        let db = raw_db(&l.log());
        let cf = db.cf_handle("checkpoints").unwrap();
        db.put_cf(cf, first.to_be_bytes(), b"{\"seq\": not json").unwrap();
    }
    // Not an unreadable log: a finding naming the record.
    let report = l.verify();
    let t = report.first_tampering().unwrap();
    assert_eq!(
        (t.kind, t.seq),
        (FindingKind::BadSignature, Some(first)),
        "{report:?}"
    );
}

#[tokio::test]
async fn an_empty_log_is_never_intact() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(&cfg(dir.path(), Durability::Sync)).unwrap();
    rec.shutdown();
    let r = LogReader::open(dir.path()).unwrap();
    let report = r.verify_chain().unwrap();
    assert!(report.is_ok());
    assert_eq!(kinds(&report), [FindingKind::NoKey, FindingKind::Empty]);
    assert_eq!(report.outcome(TailPolicy::live(60)), Outcome::Incomplete);
    let mut keys = PublicKeys::default();
    keys.add_pem(&CheckpointSigner::generate().unwrap().1).unwrap();
    let report = r.verify(&keys).unwrap();
    assert_eq!(kinds(&report), [FindingKind::Empty]);
    assert_eq!(report.outcome(TailPolicy::live(60)), Outcome::Incomplete);
}

#[tokio::test]
async fn bundle_verification_reads_only_regular_files() {
    let l = signed_log().await;
    let out = l.dir.path().join("bundle");
    export(&l, &out, i64::MIN, i64::MAX, true);
    // A listed file replaced by a link to a file outside the bundle (with the same content, so
    // only the link itself is wrong), and an unlisted FIFO (reading it would block forever).
    let dst = l.dir.path().join("linked");
    tampered_copy(&out, &dst, |_| {});
    std::fs::copy(out.join("report.html"), dst.join("report.html")).unwrap();
    let outside = l.dir.path().join("outside.txt");
    std::fs::copy(out.join("transcripts/s1.txt"), &outside).unwrap();
    std::fs::remove_file(dst.join("transcripts/s1.txt")).unwrap();
    std::os::unix::fs::symlink(&outside, dst.join("transcripts/s1.txt")).unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(dst.join("transcripts/extra"))
        .status()
        .unwrap();
    assert!(fifo.success());
    let report = verify_bundle(&dst, &l.keys).unwrap();
    let modified: Vec<&str> = report
        .findings
        .iter()
        .filter(|f| f.kind == FindingKind::FileModified)
        .map(|f| f.message.as_str())
        .collect();
    assert!(
        modified.len() == 1 && modified[0].contains("not a regular file"),
        "{report:?}"
    );
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.kind == FindingKind::Unsigned && f.message.contains("transcripts/extra")),
        "{report:?}"
    );
    assert_eq!(report.outcome(TailPolicy::Strict), Outcome::Tampered);
}

#[tokio::test]
async fn a_tampered_log_is_not_exported_and_unsigned_logs_say_so() {
    let l = signed_log().await;
    {
        let db = raw_db(&l.log());
        let cf = db.cf_handle("events").unwrap();
        let v = db.get_cf(cf, 4u64.to_be_bytes()).unwrap().unwrap();
        let edited = String::from_utf8(v).unwrap().replacen("DELETE", "SELECT", 1);
        db.put_cf(cf, 4u64.to_be_bytes(), edited).unwrap();
    }
    let r = LogReader::open(&l.log()).unwrap();
    let out = l.dir.path().join("refused");
    let signer = CheckpointSigner::from_pem(&l.signer_pem).unwrap();
    let err = export_bundle(
        &r,
        &ExportOptions {
            from_us: i64::MIN,
            to_us: i64::MAX,
            out: &out,
            signer: Some(&signer),
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("event 4 was altered"), "{err}");
    assert!(!out.join("manifest.json").exists());

    // A log written without a signing key: the report must not claim signatures.
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(&cfg(&dir.path().join("log"), Durability::Sync)).unwrap();
    populate(&rec).await;
    rec.shutdown();
    let r = LogReader::open(&dir.path().join("log")).unwrap();
    let out = dir.path().join("bundle");
    export_bundle(
        &r,
        &ExportOptions {
            from_us: i64::MIN,
            to_us: i64::MAX,
            out: &out,
            signer: None,
        },
    )
    .unwrap();
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("covered by no signed checkpoint"), "{html}");
    assert!(!html.contains("Ed25519-signed checkpoint"), "{html}");
}

// --- Shipping ----------------------------------------------------------------------------

fn shipping(sink: &Path, encryption_key: Option<&Path>) -> gatehouse_core::config::ShippingConfig {
    gatehouse_core::config::ShippingConfig {
        sink: format!("file://{}", sink.display()),
        endpoint: None,
        region: "us-east-1".into(),
        access_key_id: None,
        secret_access_key: None,
        allow_http: false,
        interval_secs: 1,
        backlog_alert_events: 100,
        encryption_key: encryption_key.map(|p| SecretRef::File(p.to_path_buf())),
        keep_local_secs: None,
        retention_interval_secs: 300,
        sink_check_interval_secs: 3600,
        sink_expires: false,
        sink_lost_accepted: Vec::new(),
    }
}

#[tokio::test]
async fn the_shipper_sends_sealed_segments_once_and_resumes_from_its_cursor() {
    let l = signed_log().await;
    let sink_dir = l.dir.path().join("sink");
    let key_file = l.dir.path().join("enc.key");
    std::fs::write(&key_file, "11".repeat(32)).unwrap();
    let mut c = cfg(&l.log(), Durability::Sync);
    c.checkpoints = Some(CheckpointConfig {
        key: SecretRef::File(l.dir.path().join("signing.pem")),
        every_events: 3,
        every_secs: 3600,
    });
    c.shipping = Some(shipping(&sink_dir, Some(&key_file)));
    let rec = Recorder::open(&c).unwrap();
    let shipper = gatehouse_recorder::Shipper::from_config(&c, rec.clone())
        .unwrap()
        .unwrap();
    // Every checkpoint of the closed log is a segment boundary.
    let n = shipper.ship_sealed().await.unwrap();
    assert_eq!(n as usize, l.checkpoint_seqs().len());
    assert_eq!(
        shipper.ship_sealed().await.unwrap(),
        0,
        "nothing new: nothing sent"
    );
    let cursor = gatehouse_recorder::ship::load_cursor(&l.log()).unwrap();
    assert_eq!(cursor.seq, 7);
    // Encrypted at rest: no event text in the sink.
    for e in std::fs::read_dir(sink_dir.join("segments")).unwrap() {
        let bytes = std::fs::read(e.unwrap().path()).unwrap();
        assert!(bytes.starts_with(b"GHSEG-AES256GCM-V1\n"));
        assert!(!String::from_utf8_lossy(&bytes).contains("orders"));
    }
    let sink = gatehouse_recorder::Sink::from_config(c.shipping.as_ref().unwrap()).unwrap();
    let report = gatehouse_recorder::verify_sink(&sink, &l.keys).await.unwrap();
    assert!(report.findings.is_empty(), "{report:?}");
    assert_eq!((report.events_checked, report.last_signed_seq), (7, 7));

    // More events, a crash-like loss of the cursor: the same segments are cut and sent again
    // under the same names, so the sink ends with each event once.
    rec.append(start("s3", 9_000)).await.unwrap();
    rec.shutdown();
    std::fs::remove_file(l.log().join("shipping/cursor.json")).unwrap();
    let before: Vec<_> = std::fs::read_dir(sink_dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    shipper.ship_sealed().await.unwrap();
    let after: Vec<_> = std::fs::read_dir(sink_dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(after.len(), before.len() + 1, "{before:?} -> {after:?}");
    let report = gatehouse_recorder::verify_sink(&sink, &l.keys).await.unwrap();
    assert!(report.findings.is_empty(), "{report:?}");
    assert_eq!(report.events_checked, 8);

    // A segment renamed to another range does not decrypt under its new name.
    let mut names: Vec<_> = after.iter().map(|n| n.to_string_lossy().to_string()).collect();
    names.sort();
    let seg = sink_dir.join("segments");
    let last = names.last().unwrap().clone();
    std::fs::rename(
        seg.join(&last),
        seg.join("00000000000000000008-00000000000000000009.seg"),
    )
    .unwrap();
    let report = gatehouse_recorder::verify_sink(&sink, &l.keys).await.unwrap();
    let t = report.first_tampering().unwrap();
    assert_eq!(t.kind, FindingKind::Altered, "{report:?}");
    assert!(t.message.contains("does not decrypt"), "{t:?}");
}

#[tokio::test]
async fn a_tampered_local_log_is_not_shipped() {
    let l = signed_log().await;
    {
        let db = raw_db(&l.log());
        let cf = db.cf_handle("events").unwrap();
        let v = db.get_cf(cf, 2u64.to_be_bytes()).unwrap().unwrap();
        let edited = String::from_utf8(v).unwrap().replacen("orders", "ordersX", 1);
        db.put_cf(cf, 2u64.to_be_bytes(), edited).unwrap();
    }
    let sink_dir = l.dir.path().join("sink");
    let mut c = cfg(&l.log(), Durability::Sync);
    c.checkpoints = Some(CheckpointConfig {
        key: SecretRef::File(l.dir.path().join("signing.pem")),
        every_events: 3,
        every_secs: 3600,
    });
    c.shipping = Some(shipping(&sink_dir, None));
    let rec = Recorder::open(&c).unwrap();
    let shipper = gatehouse_recorder::Shipper::from_config(&c, rec.clone())
        .unwrap()
        .unwrap();
    let err = shipper.ship_sealed().await.unwrap_err();
    assert!(err.contains("event 2 was altered"), "{err}");
    assert!(shipper.status().halted.load(std::sync::atomic::Ordering::Relaxed));
    // Segments before the damage went; nothing from it on.
    let names: Vec<String> = std::fs::read_dir(sink_dir.join("segments"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    let first_cp = l.checkpoint_seqs()[0];
    assert!(
        names.iter().all(|n| n.ends_with(&format!("-{first_cp:020}.seg"))),
        "{names:?}"
    );
    rec.shutdown();
}

// --- Search -------------------------------------------------------------------------------

fn seqs_of(r: &LogReader, q: gatehouse_recorder::SearchQuery) -> Vec<u64> {
    r.search(&q).unwrap().events.iter().map(|e| e.seq).collect()
}

fn q() -> gatehouse_recorder::SearchQuery {
    gatehouse_recorder::SearchQuery {
        from_us: i64::MIN,
        to_us: i64::MAX,
        limit: 100,
        ..Default::default()
    }
}

fn search_checks(r: &LogReader) {
    let s = |f: &dyn Fn(&mut gatehouse_recorder::SearchQuery)| {
        let mut query = q();
        f(&mut query);
        seqs_of(r, query)
    };
    // Newest first.
    assert_eq!(
        s(&|q| q.principal = Some("agent:etl".into())),
        [7, 5, 6, 4, 3, 2, 1]
    );
    assert_eq!(
        s(&|q| q.principal = Some("agent:nobody".into())),
        Vec::<u64>::new()
    );
    assert_eq!(s(&|q| q.decision = Some("deny".into())), [4]);
    assert_eq!(s(&|q| q.policy = Some("no-writes".into())), [4]);
    assert_eq!(s(&|q| q.text = Some("delete from".into())), [4]);
    assert_eq!(s(&|q| q.text = Some("ORDERS".into())), [4, 2]);
    assert_eq!(s(&|q| q.text = Some("from orders".into())), [4, 2]);
    assert_eq!(
        s(&|q| q.text = Some("orders delete".into())),
        Vec::<u64>::new(),
        "the phrase, not just its words"
    );
    assert_eq!(
        s(&|q| {
            q.text = Some("orders".into());
            q.decision = Some("allow".into());
        }),
        [2]
    );
    assert_eq!(s(&|q| q.kind = Some("session_start".into())), [5, 1]);
    assert_eq!(
        s(&|q| {
            q.target = Some("app".into());
            q.kind = Some("decision".into());
        }),
        [4, 2]
    );
    assert_eq!(
        s(&|q| {
            q.kind = Some("decision".into());
            q.from_us = 1_200;
            q.to_us = 1_300;
        }),
        [4]
    );
    assert_eq!(
        s(&|q| {
            q.from_us = 1_100;
            q.to_us = 1_300;
        }),
        [4, 3, 2]
    );
    let mut limited = q();
    limited.principal = Some("agent:etl".into());
    limited.limit = 2;
    let res = r.search(&limited).unwrap();
    assert_eq!(res.events.len(), 2);
    assert!(res.truncated);
}

#[tokio::test]
async fn search_finds_events_by_every_field_from_the_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(&cfg(dir.path(), Durability::Sync)).unwrap();
    populate(&rec).await;
    rec.shutdown();
    search_checks(&LogReader::open(dir.path()).unwrap());

    assert_eq!(unindexed(dir.path()), 0);

    // A log from an earlier version: its indexes in another layout (here a key per event and
    // term), no index format. Searches read every event; the indexes are dropped and built
    // again at the next start.
    {
        let db = raw_db(dir.path());
        let cf = db.cf_handle("search").unwrap();
        let keys: Vec<Box<[u8]>> = db
            .iterator_cf(cf, rocksdb::IteratorMode::Start)
            .map(|i| i.unwrap().0)
            .collect();
        assert!(!keys.is_empty());
        for k in keys {
            db.delete_cf(cf, k).unwrap();
        }
        let mut old = b"puser:bob\0".to_vec();
        old.extend_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 3]);
        db.put_cf(cf, old, b"").unwrap();
        db.delete_cf(db.cf_handle("meta").unwrap(), b"index_format")
            .unwrap();
    }
    search_checks(&LogReader::open(dir.path()).unwrap());
    assert_eq!(unindexed(dir.path()), 7);
    reindexed_at_next_start(dir.path()).await;
    assert_eq!(
        search_key_kinds(dir.path()),
        [b'B', b'D', b'P'].into(),
        "the old layout's keys are gone"
    );

    // An older version run on the log again (a rollback) writes its keys and moves its own
    // mark: at the next start its keys go and its mark is 0 again; these indexes stay.
    {
        let db = raw_db(dir.path());
        db.put_cf(db.cf_handle("search").unwrap(), b"kdecision\0x", b"")
            .unwrap();
        db.put_cf(db.cf_handle("meta").unwrap(), b"indexed", 7u64.to_be_bytes())
            .unwrap();
    }
    Recorder::open(&cfg(dir.path(), Durability::Sync))
        .unwrap()
        .shutdown();
    assert_eq!(search_key_kinds(dir.path()), [b'B', b'D', b'P'].into());
    {
        let db = raw_db(dir.path());
        let meta = db.cf_handle("meta").unwrap();
        assert_eq!(db.get_cf(meta, b"indexed").unwrap().unwrap(), 0u64.to_be_bytes());
        assert_eq!(
            db.get_cf(meta, b"postings_indexed").unwrap().unwrap(),
            7u64.to_be_bytes()
        );
    }
    assert_eq!(unindexed(dir.path()), 0);

    // A malformed mark: everything is read, and the indexes are dropped and built again at
    // the next start (not built over the old blocks: no event is found twice).
    {
        let db = raw_db(dir.path());
        db.put_cf(db.cf_handle("meta").unwrap(), b"postings_indexed", b"bad")
            .unwrap();
    }
    search_checks(&LogReader::open(dir.path()).unwrap());
    assert_eq!(unindexed(dir.path()), 7);
    reindexed_at_next_start(dir.path()).await;
}

/// Start the recorder on the test log of [`search_checks`] (7 events) and stop it once the
/// indexer has reached the end (a shutdown before that would leave the rest to the start
/// after); then every search is answered from the indexes alone.
async fn reindexed_at_next_start(dir: &Path) {
    let rec = Recorder::open(&cfg(dir, Durability::Sync)).unwrap();
    indexed_through(&rec, 7).await;
    rec.shutdown();
    search_checks(&LogReader::open(dir).unwrap());
    assert_eq!(unindexed(dir), 0);
}

/// The kinds of key (`D`, `P`, `B`, or an old layout's) in the search column family.
fn search_key_kinds(dir: &Path) -> std::collections::BTreeSet<u8> {
    search_keys(dir).iter().map(|(k, _)| *k).collect()
}

/// Wait until the indexer has indexed through `seq`.
async fn indexed_through(rec: &Recorder, seq: u64) {
    for _ in 0..2000 {
        if rec.stats().indexed_seq >= seq {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("the indexer did not reach {seq}: {:?}", rec.stats());
}

/// Events a search over everything had to read because the indexes did not reach them.
fn unindexed(dir: &Path) -> u64 {
    LogReader::open(dir).unwrap().search(&q()).unwrap().unindexed
}

/// The keys of one column family, as seqs where the key ends with one (by_session).
fn trailing_seqs(dir: &Path, cf_name: &str) -> Vec<u64> {
    let db = raw_db(dir);
    let cf = db.cf_handle(cf_name).unwrap();
    db.iterator_cf(cf, rocksdb::IteratorMode::Start)
        .map(|i| {
            let (k, _) = i.unwrap();
            u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap())
        })
        .collect()
}

/// The search column family's keys as (kind, block): `D` directory entries, `P` posting
/// lists, `B` block manifests, each naming the block (its first event's seq).
fn search_keys(dir: &Path) -> Vec<(u8, u64)> {
    let db = raw_db(dir);
    let cf = db.cf_handle("search").unwrap();
    db.iterator_cf(cf, rocksdb::IteratorMode::Start)
        .map(|i| {
            let (k, _) = i.unwrap();
            let block = match k[0] {
                b'D' => &k[k.len() - 8..],
                _ => &k[1..9],
            };
            (k[0], u64::from_be_bytes(block.try_into().unwrap()))
        })
        .collect()
}

fn segment_names(sink: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(sink.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

/// The signed test log, reopened with a filesystem sink and retention deleting whatever the
/// sink holds (`keep_local_secs = 0`): the log, the sink's directory, the config, the
/// recorder and its shipper.
/// `earlier_version`: the log also has the by-session index versions before `postings-v2`
/// wrote with every event.
async fn retaining_log(
    earlier_version: bool,
) -> (
    SignedLog,
    std::path::PathBuf,
    RecorderConfig,
    Recorder,
    gatehouse_recorder::Shipper,
) {
    let l = signed_log().await;
    if earlier_version {
        let events = LogReader::open(&l.log()).unwrap().events(1, 100).unwrap();
        let n = events.len();
        {
            let db = raw_db(&l.log());
            let cf = db.cf_handle("by_session").unwrap();
            for ev in events {
                let mut k = ev.session_id.into_bytes();
                k.push(0);
                k.extend_from_slice(&ev.seq.to_be_bytes());
                db.put_cf(cf, k, []).unwrap();
            }
        }
        assert_eq!(trailing_seqs(&l.log(), "by_session").len(), n);
    }
    let sink_dir = l.dir.path().join("sink");
    let mut c = cfg(&l.log(), Durability::Sync);
    c.checkpoints = Some(CheckpointConfig {
        key: SecretRef::File(l.dir.path().join("signing.pem")),
        every_events: 3,
        every_secs: 3600,
    });
    let mut sh = shipping(&sink_dir, None);
    sh.keep_local_secs = Some(0);
    c.shipping = Some(sh);
    let rec = Recorder::open(&c).unwrap();
    let shipper = gatehouse_recorder::Shipper::from_config(&c, rec.clone())
        .unwrap()
        .unwrap();
    (l, sink_dir, c, rec, shipper)
}

/// The sink's segments as (first, last, file name), in log order.
fn segments_in(sink: &Path) -> Vec<(u64, u64, String)> {
    segment_names(sink)
        .into_iter()
        .map(|n| {
            let (a, b) = n.strip_suffix(".seg").unwrap().split_once('-').unwrap();
            (a.parse().unwrap(), b.parse().unwrap(), n)
        })
        .collect()
}

fn move_segment(from: &Path, to: &Path, name: &str) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::rename(from.join(name), to.join(name)).unwrap();
}

#[tokio::test]
async fn segments_the_sink_lost_below_the_local_floor_are_reported_and_stop_local_retention() {
    use std::sync::atomic::Ordering::Relaxed;
    let (l, sink_dir, mut c, rec, shipper) = retaining_log(false).await;
    shipper.ship_sealed().await.unwrap();
    let pass = shipper.retention_pass().await.unwrap();
    assert_eq!(pass.floor, 7, "{pass:?}");
    let st = shipper.status();
    assert_eq!(st.sink_first_seq.load(Relaxed), 1);
    // Now the sink alone holds events 1 to 7 (in segments that end at the log's checkpoints,
    // which vary from run to run).
    shipper.retention_pass().await.unwrap();
    assert!(st.sink_lost().is_empty());
    assert_eq!(st.sink_checks.load(Relaxed), 2);
    let below: Vec<_> = segments_in(&sink_dir).into_iter().filter(|s| s.1 <= 7).collect();
    assert!(
        below.len() >= 2 && below[0].0 == 1 && below[below.len() - 1].1 == 7,
        "{below:?}"
    );
    let (oldest, last) = (below[0].clone(), below[below.len() - 1].clone());
    let range = |s: &(u64, u64, String)| {
        if s.0 == s.1 {
            s.0.to_string()
        } else {
            format!("{} to {}", s.0, s.1)
        }
    };
    let segments = sink_dir.join("segments");
    let aside = l.dir.path().join("aside");

    // A hole below the floor: reported, and retention deletes nothing more.
    move_segment(&segments, &aside, &last.2);
    let err = shipper.retention_pass().await.unwrap().held.unwrap();
    assert!(
        err.contains(&format!("lost events {} below the local floor", range(&last))),
        "{err}"
    );
    assert_eq!(st.sink_lost(), vec![(last.0, last.1)]);
    assert_eq!(st.sink_lost_events.load(Relaxed), last.1 - last.0 + 1);
    // While something is lost, passes between whole-sink checks list from the first lost
    // event: still missing, then back.
    let err = shipper.retention_pass_listing(false).await.unwrap().held.unwrap();
    assert!(err.contains(&format!("lost events {}", range(&last))), "{err}");
    move_segment(&aside, &segments, &last.2);
    shipper.retention_pass_listing(false).await.unwrap();
    assert!(st.sink_lost().is_empty());
    assert_eq!(st.sink_lost_events.load(Relaxed), 0);
    assert_eq!(st.sink_checks.load(Relaxed), 3);

    // An empty object holds nothing, even at the start.
    let oldest_bytes = std::fs::read(segments.join(&oldest.2)).unwrap();
    std::fs::write(segments.join(&oldest.2), b"").unwrap();
    let err = shipper.retention_pass().await.unwrap().held.unwrap();
    assert!(
        err.contains(&format!("lost events {} below", range(&oldest))),
        "{err}"
    );
    // The operator can accept a loss there is no copy of: it no longer holds retention back.
    c.shipping.as_mut().unwrap().sink_lost_accepted = vec![[oldest.0, oldest.1]];
    let accepting = gatehouse_recorder::Shipper::from_config(&c, rec.clone())
        .unwrap()
        .unwrap();
    accepting.retention_pass().await.unwrap();
    assert!(accepting.status().sink_lost().is_empty());
    c.shipping.as_mut().unwrap().sink_lost_accepted = vec![[5, 4]];
    let bad = gatehouse_recorder::Shipper::from_config(&c, rec.clone())
        .err()
        .unwrap();
    assert!(bad.to_string().contains("not a range"), "{bad}");
    c.shipping.as_mut().unwrap().sink_lost_accepted = Vec::new();
    std::fs::write(segments.join(&oldest.2), &oldest_bytes).unwrap();

    // A sink that expires its oldest segments itself: their absence is no loss…
    c.shipping.as_mut().unwrap().sink_expires = true;
    let expiring = gatehouse_recorder::Shipper::from_config(&c, rec.clone())
        .unwrap()
        .unwrap();
    move_segment(&segments, &aside, &oldest.2);
    expiring.retention_pass().await.unwrap();
    assert!(expiring.status().sink_lost().is_empty());
    assert_eq!(expiring.status().sink_first_seq.load(Relaxed), below[1].0);
    // … but a hole after the first segment it holds is.
    move_segment(&aside, &segments, &oldest.2);
    move_segment(&segments, &aside, &last.2);
    let err = expiring.retention_pass().await.unwrap().held.unwrap();
    assert!(
        err.contains(&format!("lost events {} below", range(&last))),
        "{err}"
    );
    // When everything before it goes too, that is recorded as expiry, not as a return.
    for s in &below[..below.len() - 1] {
        move_segment(&segments, &aside, &s.2);
    }
    expiring.retention_pass().await.unwrap();
    assert!(expiring.status().sink_lost().is_empty());

    // Each change is in the log, once.
    rec.shutdown();
    let r = LogReader::open(&l.log()).unwrap();
    let notices: Vec<(String, String)> = r
        .events(1, 100)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.body {
            EventBody::Notice { level, message } => Some((level, message)),
            _ => None,
        })
        .collect();
    let count = |level: &str, text: &str| {
        notices
            .iter()
            .filter(|(l, m)| l == level && m.contains(text))
            .count()
    };
    let lost_last = format!(
        "no longer holds events {}, which local retention deleted",
        range(&last)
    );
    // Once by the first shipper, once by the expiring one.
    assert_eq!(count("error", &lost_last), 2, "{notices:?}");
    assert_eq!(
        count(
            "info",
            &format!("holds events {} again, which it had lost", range(&last))
        ),
        1,
        "{notices:?}"
    );
    assert_eq!(
        count("error", &format!("no longer holds events {},", range(&oldest))),
        1,
        "{notices:?}"
    );
    assert_eq!(
        count(
            "warn",
            &format!("does not hold events {}: accepted as lost", range(&oldest))
        ),
        1,
        "{notices:?}"
    );
    assert_eq!(
        count(
            "warn",
            &format!(
                "events {}, which {} had lost, now count as expired: it deleted every segment before event 8",
                range(&last),
                c.shipping.as_ref().unwrap().sink
            )
        ),
        1,
        "{notices:?}"
    );
    // Nothing was deleted past the floor meanwhile, and the log still verifies.
    assert_eq!(r.floor().unwrap().unwrap().seq, 7);
    let report = r.verify(&l.keys).unwrap();
    assert_eq!(report.outcome(TailPolicy::Strict), Outcome::Intact, "{report:?}");
}

/// Local retention waits while the sink lacks events below the floor, however much more is
/// shipped meanwhile, and goes on once the sink holds them again. A sink shipped to after
/// another gets what the local log still holds and is checked from the floor it first saw:
/// the events below are in the other sink.
#[tokio::test]
async fn local_retention_waits_for_lost_events_and_a_new_sink_is_checked_from_its_first_floor() {
    let (l, sink_dir, mut c, rec, shipper) = retaining_log(false).await;
    shipper.ship_sealed().await.unwrap();
    assert_eq!(shipper.retention_pass().await.unwrap().floor, 7);
    let segments = sink_dir.join("segments");
    let aside = l.dir.path().join("aside");
    let first = segments_in(&sink_dir).into_iter().next().unwrap();
    assert_eq!(first.0, 1);
    move_segment(&segments, &aside, &first.2);
    for i in 0..6 {
        rec.append(start(&format!("more{i}"), 30_000 + i)).await.unwrap();
    }
    assert!(shipper.ship_sealed().await.unwrap() > 0);
    let pass = shipper.retention_pass().await.unwrap();
    assert_eq!((pass.deleted, pass.floor), (0, 7), "{pass:?}");
    assert!(
        pass.held.as_deref().is_some_and(|h| h.contains("lost events 1")),
        "{pass:?}"
    );
    move_segment(&aside, &segments, &first.2);
    let pass = shipper.retention_pass_listing(false).await.unwrap();
    assert!(
        pass.held.is_none() && pass.deleted > 0 && pass.floor > 7,
        "{pass:?}"
    );
    let floor = pass.floor;

    // Another sink from now on.
    let other_dir = l.dir.path().join("sink2");
    let mut sh = shipping(&other_dir, None);
    sh.keep_local_secs = Some(0);
    c.shipping = Some(sh);
    let other = gatehouse_recorder::Shipper::from_config(&c, rec.clone())
        .unwrap()
        .unwrap();
    // (Retention deleted all the old sink acknowledged: nothing is left to send again.)
    let pass = other.retention_pass().await.unwrap();
    assert!(pass.held.is_none() && pass.floor == floor, "{pass:?}");
    assert!(other.status().sink_lost().is_empty());
    // That is said once, in the log (before retention deletes the notice with what follows;
    // an awaited append after the passes commits their notices first).
    other.retention_pass().await.unwrap();
    rec.append(start("probe", 35_000)).await.unwrap();
    let said = LogReader::open(&l.log())
        .unwrap()
        .events(floor + 1, 1000)
        .unwrap()
        .into_iter()
        .filter(|e| {
            matches!(&e.body, EventBody::Notice { message, .. }
                if message.contains(&format!("floor (event {floor}) was set while shipping to")))
        })
        .count();
    assert_eq!(said, 1);
    for i in 0..6 {
        rec.append(start(&format!("later{i}"), 40_000 + i)).await.unwrap();
    }
    assert!(other.ship_sealed().await.unwrap() > 0);
    let pass = other.retention_pass().await.unwrap();
    assert!(pass.held.is_none() && pass.floor > floor, "{pass:?}");
    // The floor now names the new sink; still, nothing below the old floor is asked of it.
    let pass = other.retention_pass().await.unwrap();
    assert!(pass.held.is_none(), "{pass:?}");
    assert!(other.status().sink_lost().is_empty());
    assert!(segments_in(&other_dir).iter().all(|s| s.0 > floor));
    rec.shutdown();
    let r = LogReader::open(&l.log()).unwrap();
    assert!(r.floor().unwrap().unwrap().sink.contains("sink2"));
    let report = r.verify(&l.keys).unwrap();
    assert_eq!(report.outcome(TailPolicy::Strict), Outcome::Intact, "{report:?}");
}

#[tokio::test]
async fn local_retention_deletes_only_what_the_sink_holds_and_the_rest_verifies_from_its_floor() {
    let (l, sink_dir, c, rec, shipper) = retaining_log(true).await;

    // Nothing acknowledged by the sink: nothing deleted, however old.
    let pass = shipper.retention_pass().await.unwrap();
    assert_eq!((pass.deleted, pass.floor), (0, 0));
    assert_eq!(
        LogReader::open(&l.log()).unwrap().events(1, 100).unwrap().len(),
        7
    );

    // Shipped: everything up to the last acknowledged checkpoint goes, the head included.
    shipper.ship_sealed().await.unwrap();
    let pass = shipper.retention_pass().await.unwrap();
    assert_eq!((pass.deleted, pass.floor, pass.resent), (7, 7, 0));
    rec.shutdown();
    let r = LogReader::open(&l.log()).unwrap();
    let floor = r.floor().unwrap().unwrap();
    assert_eq!(floor.seq, 7);
    assert!(floor.sink.starts_with("file://"), "{floor:?}");
    // Only the retention notice is left (recorded after the floor, and signed at close).
    let left = r.events(1, 100).unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].seq, 8);
    assert!(
        matches!(&left[0].body, EventBody::Notice { message, .. } if message.contains("deleted events 1 to 7")),
        "{left:?}"
    );
    // Index entries went with the events: search and session listings find nothing of them.
    let blocks = search_keys(&l.log());
    assert!(
        !blocks.is_empty() && blocks.iter().all(|(_, b)| *b > 7),
        "{blocks:?}"
    );
    // (The by-session entries of an earlier version too.)
    assert!(trailing_seqs(&l.log(), "by_session").is_empty());
    assert!(r.session_events("s1").unwrap().is_empty());
    let found = r
        .search(&gatehouse_recorder::SearchQuery {
            text: Some("orders".into()),
            from_us: i64::MIN,
            to_us: i64::MAX,
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert!(found.events.is_empty(), "{found:?}");
    // Only the floor's checkpoint is left of the old ones.
    assert_eq!(r.checkpoints().unwrap().first().unwrap().seq, 7);
    let report = r.verify(&l.keys).unwrap();
    assert_eq!(report.floor, Some(7));
    assert_eq!(report.outcome(TailPolicy::Strict), Outcome::Intact, "{report:?}");
    assert_eq!((report.first_seq, report.last_seq), (8, 8));
    // A bundle cannot reach back past the floor.
    let signer = CheckpointSigner::from_pem(&l.signer_pem).unwrap();
    let out = l.dir.path().join("bundle");
    let err = export_bundle(
        &r,
        &ExportOptions {
            out: &out,
            from_us: 0,
            to_us: i64::MAX,
            signer: Some(&signer),
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("deleted from the local log"), "{err}");
    drop(r);

    // The log reopens at its floor and goes on; more is shipped; the sink loses a segment it
    // acknowledged: the next pass notices, sends it again, and then deletes.
    let rec = Recorder::open(&c).unwrap();
    for i in 0..4 {
        rec.append(start(&format!("late{i}"), 10_000 + i)).await.unwrap();
    }
    let shipper = gatehouse_recorder::Shipper::from_config(&c, rec.clone())
        .unwrap()
        .unwrap();
    assert_eq!(
        shipper
            .status()
            .floor_seq
            .load(std::sync::atomic::Ordering::Relaxed),
        7
    );
    shipper.ship_sealed().await.unwrap();
    let names = segment_names(&sink_dir);
    let lost = names
        .iter()
        .find(|n| n.starts_with("00000000000000000008-"))
        .unwrap()
        .clone();
    let lost_bytes = std::fs::read(sink_dir.join("segments").join(&lost)).unwrap();
    std::fs::remove_file(sink_dir.join("segments").join(&lost)).unwrap();
    let pass = shipper.retention_pass().await.unwrap();
    assert_eq!(pass.resent, 1, "{pass:?}");
    assert!(pass.floor > 8 && pass.deleted == pass.floor - 7, "{pass:?}");
    assert_eq!(
        std::fs::read(sink_dir.join("segments").join(&lost)).unwrap(),
        lost_bytes
    );
    rec.shutdown();
    shipper.ship_sealed().await.unwrap();
    let sink = gatehouse_recorder::Sink::from_config(c.shipping.as_ref().unwrap()).unwrap();
    let shipped = gatehouse_recorder::verify_sink(&sink, &l.keys).await.unwrap();
    assert_eq!(
        shipped.outcome(TailPolicy::Strict),
        Outcome::Intact,
        "{shipped:?}"
    );
    let r = LogReader::open(&l.log()).unwrap();
    let report = r.verify(&l.keys).unwrap();
    assert_eq!(report.outcome(TailPolicy::Strict), Outcome::Intact, "{report:?}");
    let notices: Vec<String> = r
        .events(1, 100)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.body {
            EventBody::Notice { message, .. } => Some(message),
            _ => None,
        })
        .collect();
    assert!(
        notices.iter().any(|m| m.contains("no longer holds events 8 to")),
        "{notices:?}"
    );
    let last_cp = r.checkpoints().unwrap().last().unwrap().seq;
    let floor = r.floor().unwrap().unwrap();
    assert!(last_cp > floor.seq);
    drop(r);

    // A retention job interrupted after it began (its marker written, some index entries
    // gone): readers already leave its events out, and the next start finishes it.
    {
        let db = raw_db(&l.log());
        let mut marker = floor.clone();
        marker.seq = last_cp;
        db.put_cf(
            db.cf_handle("meta").unwrap(),
            b"retaining",
            serde_json::to_vec(&marker).unwrap(),
        )
        .unwrap();
    }
    let r = LogReader::open(&l.log()).unwrap();
    assert_eq!(r.effective_floor().unwrap(), last_cp);
    assert!(r.session_events("late3").unwrap().is_empty());
    drop(r);
    let rec = Recorder::open(&c).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let f = LogReader::open(&l.log()).unwrap().floor().unwrap().unwrap();
        if f.seq == last_cp {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the interrupted job was not resumed"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    rec.shutdown();
    let r = LogReader::open(&l.log()).unwrap();
    let report = r.verify(&l.keys).unwrap();
    assert_eq!(report.floor, Some(last_cp));
    assert_eq!(report.outcome(TailPolicy::Strict), Outcome::Intact, "{report:?}");
    let floor = last_cp;
    drop(r);

    // Tampering with the floor is caught: removed (the deleted events show as missing) …
    let floor_record = {
        let db = raw_db(&l.log());
        let meta = db.cf_handle("meta").unwrap();
        let v = db.get_cf(meta, b"floor").unwrap().unwrap();
        db.delete_cf(meta, b"floor").unwrap();
        v
    };
    let report = l.verify();
    // (No event is left after this floor: the checkpoint and head marker now cover events
    // that are not there.)
    assert!(
        matches!(
            report.first_tampering().unwrap().kind,
            FindingKind::Missing | FindingKind::Truncated
        ),
        "{report:?}"
    );
    // … or rewritten by someone without the signing key (here: its time) …
    {
        let db = raw_db(&l.log());
        let mut forged: gatehouse_recorder::Floor = serde_json::from_slice(&floor_record).unwrap();
        forged.time_us += 1;
        db.put_cf(
            db.cf_handle("meta").unwrap(),
            b"floor",
            serde_json::to_vec(&forged).unwrap(),
        )
        .unwrap();
    }
    let report = l.verify();
    assert_eq!(
        report.first_tampering().unwrap().kind,
        FindingKind::BadSignature,
        "{report:?}"
    );
    // … or its checkpoint forged.
    {
        let db = raw_db(&l.log());
        db.put_cf(db.cf_handle("meta").unwrap(), b"floor", &floor_record)
            .unwrap();
        let cps = db.cf_handle("checkpoints").unwrap();
        let v = db.get_cf(cps, floor.to_be_bytes()).unwrap().unwrap();
        let mut cp: Checkpoint = serde_json::from_slice(&v).unwrap();
        cp.time_us += 1;
        db.put_cf(cps, floor.to_be_bytes(), serde_json::to_vec(&cp).unwrap())
            .unwrap();
    }
    let report = l.verify();
    assert_eq!(
        report.first_tampering().unwrap().kind,
        FindingKind::BadSignature,
        "{report:?}"
    );
}

#[tokio::test]
async fn retention_deletes_nothing_when_the_sink_holds_another_segment_under_the_name() {
    let (l, sink_dir, _, rec, shipper) = retaining_log(false).await;
    shipper.ship_sealed().await.unwrap();
    // The object named for the last segment now holds something else (same name, another
    // writer): its checkpoint is not this log's.
    let last = segment_names(&sink_dir).pop().unwrap();
    let path = sink_dir.join("segments").join(&last);
    let text = std::fs::read_to_string(&path).unwrap();
    let (header, rest) = text.split_once('\n').unwrap();
    let mut h: serde_json::Value = serde_json::from_str(header).unwrap();
    h["checkpoint"]["time_us"] = serde_json::json!(1);
    std::fs::write(&path, format!("{h}\n{rest}")).unwrap();
    let err = shipper.retention_pass().await.unwrap_err();
    assert!(err.contains("is not the segment this log shipped"), "{err}");
    rec.shutdown();
    let r = LogReader::open(&l.log()).unwrap();
    assert!(r.floor().unwrap().is_none());
    assert_eq!(r.events(1, 100).unwrap().first().unwrap().seq, 1);
}

/// A log restored from the sink holds what local retention deleted, byte for byte: it
/// verifies on its own, lists, searches (from indexes) and exports as the original did. A
/// sink that does not verify restores nothing, and a directory holding anything is never
/// written to.
#[tokio::test]
async fn a_log_restored_from_the_sink_holds_what_retention_deleted() {
    let (l, _sink_dir, c, rec, shipper) = retaining_log(false).await;
    let sessions_of = |r: &LogReader| -> Vec<gatehouse_recorder::SessionSummary> {
        r.sessions()
            .unwrap()
            .into_iter()
            .filter(|s| s.session_id != gatehouse_recorder::GATEWAY_SESSION)
            .collect()
    };
    let orders = || gatehouse_recorder::SearchQuery {
        text: Some("orders".into()),
        ..q()
    };
    let (events, sessions, s1, found) = {
        let r = LogReader::open(&l.log()).unwrap();
        (
            r.events(1, 100).unwrap(),
            sessions_of(&r),
            r.session_events("s1").unwrap(),
            seqs_of(&r, orders()),
        )
    };
    assert_eq!(events.len(), 7);
    assert!(!found.is_empty());
    // Shipped, then deleted locally; the log goes on and that is shipped too.
    shipper.ship_sealed().await.unwrap();
    let pass = shipper.retention_pass().await.unwrap();
    assert_eq!(pass.deleted, 7, "{pass:?}");
    for i in 0..3 {
        rec.append(start(&format!("late{i}"), 20_000 + i)).await.unwrap();
    }
    rec.shutdown();
    shipper.ship_sealed().await.unwrap();
    let local = LogReader::open(&l.log()).unwrap();
    let (local_last, local_events) = (local.last_seq().unwrap(), local.events(1, 100).unwrap());
    assert!(local.session_events("s1").unwrap().is_empty());
    drop(local);

    let sink = gatehouse_recorder::Sink::from_config(c.shipping.as_ref().unwrap()).unwrap();
    // Something in the segments folder that is no segment: not intact, nothing restored.
    let stray = l.dir.path().join("sink/segments/notes.txt");
    std::fs::write(&stray, "hello").unwrap();
    let out = l.dir.path().join("restored");
    let refused = gatehouse_recorder::restore_from_sink(&sink, &l.keys, &out)
        .await
        .unwrap();
    assert!(
        !refused.written && refused.outcome == Outcome::Incomplete,
        "{refused:?}"
    );
    assert!(!out.exists());
    std::fs::remove_file(&stray).unwrap();
    // Into an empty directory that exists.
    std::fs::create_dir(&out).unwrap();
    let restored = gatehouse_recorder::restore_from_sink(&sink, &l.keys, &out)
        .await
        .unwrap();
    assert!(restored.written, "{restored:?}");
    assert_eq!(restored.outcome, Outcome::Intact);
    assert_eq!(restored.report.last_seq, local_last);
    assert_eq!(restored.indexed_seq, local_last, "indexed to its end");
    let r = LogReader::open(&out).unwrap();
    let report = r.verify(&l.keys).unwrap();
    assert_eq!(report.outcome(TailPolicy::Strict), Outcome::Intact, "{report:?}");
    assert_eq!(
        (report.first_seq, report.last_seq, report.floor),
        (1, local_last, None)
    );
    // The deleted events as they were recorded, and the local log's newer ones.
    let all = r.events(1, 100).unwrap();
    assert_eq!(all[..7], events[..]);
    assert_eq!(all[7..], local_events[..]);
    // Summaries, a session's events and searches as the original gave them, from indexes.
    let again = sessions_of(&r);
    for s in &sessions {
        assert!(again.contains(s), "{s:?} not in {again:?}");
    }
    assert!(again.iter().any(|s| s.session_id == "late2"), "{again:?}");
    assert_eq!(r.session_events("s1").unwrap(), s1);
    assert_eq!(seqs_of(&r, orders()), found);
    assert_eq!(unindexed(&out), 0);
    // A bundle of the whole window, which the local log refuses, verifies on its own.
    let signer = CheckpointSigner::from_pem(&l.signer_pem).unwrap();
    let bundle = l.dir.path().join("bundle");
    export_bundle(
        &r,
        &ExportOptions {
            out: &bundle,
            from_us: 0,
            to_us: i64::MAX,
            signer: Some(&signer),
        },
    )
    .unwrap();
    let b = verify_bundle(&bundle, &l.keys).unwrap();
    assert_eq!(b.outcome(TailPolicy::Strict), Outcome::Intact, "{b:?}");
    assert_eq!((b.first_seq, b.last_seq), (1, local_last));
    drop(r);

    // Never into a directory that holds something.
    let err = gatehouse_recorder::restore_from_sink(&sink, &l.keys, &out)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RecorderError::Invalid(m) if m.contains("not empty")),
        "{err}"
    );
    // Without the right key nothing is vouched for: nothing is written.
    let (_, other, _) = CheckpointSigner::generate().unwrap();
    let mut wrong = PublicKeys::default();
    wrong.add_pem(&other).unwrap();
    let out2 = l.dir.path().join("restored2");
    let r2 = gatehouse_recorder::restore_from_sink(&sink, &wrong, &out2)
        .await
        .unwrap();
    assert!(!r2.written && r2.outcome != Outcome::Intact, "{r2:?}");
    assert!(!out2.exists());
    // One byte of a shipped event changed: tampering is named and nothing is written, not
    // even the directory it was being built in.
    let segments = l.dir.path().join("sink/segments");
    let (seg, text) = segment_names(&l.dir.path().join("sink"))
        .into_iter()
        .map(|n| {
            let text = std::fs::read_to_string(segments.join(&n)).unwrap();
            (segments.join(n), text)
        })
        .find(|(_, text)| text.contains("orders"))
        .unwrap();
    std::fs::write(&seg, text.replacen("orders", "ordert", 1)).unwrap();
    let r3 = gatehouse_recorder::restore_from_sink(&sink, &l.keys, &out2)
        .await
        .unwrap();
    assert!(!r3.written, "{r3:?}");
    assert_eq!(r3.outcome, Outcome::Tampered);
    assert_eq!(
        r3.report.first_tampering().unwrap().kind,
        FindingKind::Altered,
        "{r3:?}"
    );
    assert!(!out2.exists());
    let left: Vec<_> = std::fs::read_dir(l.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("restoring"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_sink_that_expires_its_oldest_segments_verifies_and_restores_from_its_first_one() {
    let l = signed_log().await;
    let sink_dir = l.dir.path().join("sink");
    let mut c = cfg(&l.log(), Durability::Sync);
    c.checkpoints = Some(CheckpointConfig {
        key: SecretRef::File(l.dir.path().join("signing.pem")),
        every_events: 3,
        every_secs: 3600,
    });
    c.shipping = Some(shipping(&sink_dir, None));
    let rec = Recorder::open(&c).unwrap();
    let shipper = gatehouse_recorder::Shipper::from_config(&c, rec.clone())
        .unwrap()
        .unwrap();
    // Later events at real times (after every checkpoint of the first part was signed); s1
    // goes on among them.
    let now = gatehouse_core::time::now_micros();
    rec.append(query("s1", now, 3, "SELECT * FROM orders", allow("read-orders")))
        .await
        .unwrap();
    for i in 0..6 {
        rec.append(start(&format!("late{i}"), now + 1 + i)).await.unwrap();
    }
    rec.shutdown();
    shipper.ship_sealed().await.unwrap();
    let (events, last) = {
        let r = LogReader::open(&l.log()).unwrap();
        (r.events(1, 100).unwrap(), r.last_seq().unwrap())
    };
    assert_eq!(events.len() as u64, last);
    let segs = segments_in(&sink_dir);
    assert!(segs.len() >= 4, "{segs:?}");
    let segments = sink_dir.join("segments");
    let aside = l.dir.path().join("aside");

    // The lifecycle rule expires the oldest segment.
    move_segment(&segments, &aside, &segs[0].2);
    let first = segs[1].0;
    // Configured as a sink that keeps everything, that is a loss.
    let keeping = gatehouse_recorder::Sink::from_config(c.shipping.as_ref().unwrap()).unwrap();
    assert!(!keeping.expires());
    let r = gatehouse_recorder::verify_sink(&keeping, &l.keys).await.unwrap();
    let t = r.first_tampering().unwrap();
    assert_eq!((t.kind, t.seq), (FindingKind::Missing, Some(1)), "{r:?}");
    assert_eq!(r.expired_before, None);
    // As one that expires its oldest segments, it is checked from the first one it holds.
    let mut sh = c.shipping.clone().unwrap();
    sh.sink_expires = true;
    let sink = gatehouse_recorder::Sink::from_config(&sh).unwrap();
    let r = gatehouse_recorder::verify_sink(&sink, &l.keys).await.unwrap();
    assert_eq!(r.outcome(TailPolicy::Strict), Outcome::Intact, "{r:?}");
    assert_eq!(
        (r.expired_before, r.first_seq, r.last_seq, r.last_signed_seq),
        (Some(first), first, last, last)
    );
    assert_eq!(r.events_checked, last - first + 1);
    // A hole after it is still a loss.
    move_segment(&segments, &aside, &segs[2].2);
    let r = gatehouse_recorder::verify_sink(&sink, &l.keys).await.unwrap();
    let t = r.first_tampering().unwrap();
    assert_eq!((t.kind, t.seq), (FindingKind::Missing, Some(segs[2].0)), "{r:?}");
    move_segment(&aside, &segments, &segs[2].2);
    // The first event held is covered like every other: its link to what expired is part of
    // its hash, and the checkpoints after it sign that.
    let first_seg = segments.join(&segs[1].2);
    let original = std::fs::read_to_string(&first_seg).unwrap();
    let prev = &events[(first - 2) as usize].hash;
    let flipped = format!("{}{}", if prev.starts_with('0') { "1" } else { "0" }, &prev[1..]);
    assert_eq!(original.matches(prev.as_str()).count(), 1);
    std::fs::write(&first_seg, original.replacen(prev.as_str(), &flipped, 1)).unwrap();
    let r = gatehouse_recorder::verify_sink(&sink, &l.keys).await.unwrap();
    let t = r.first_tampering().unwrap();
    assert_eq!((t.kind, t.seq), (FindingKind::Altered, Some(first)), "{r:?}");
    let refused = gatehouse_recorder::restore_from_sink(&sink, &l.keys, &l.dir.path().join("no"))
        .await
        .unwrap();
    assert!(
        !refused.written && refused.outcome == Outcome::Tampered,
        "{refused:?}"
    );
    std::fs::write(&first_seg, &original).unwrap();

    // Restored from its first segment: the events held, byte for byte, and where it starts.
    let out = l.dir.path().join("restored");
    let restored = gatehouse_recorder::restore_from_sink(&sink, &l.keys, &out)
        .await
        .unwrap();
    assert!(restored.written, "{restored:?}");
    assert_eq!(restored.outcome, Outcome::Intact);
    assert_eq!(restored.report.expired_before, Some(first));
    assert_eq!(restored.indexed_seq, last);
    let r = LogReader::open(&out).unwrap();
    assert_eq!(r.events(1, 100).unwrap()[..], events[(first - 1) as usize..]);
    let start_record = r.restored_start().unwrap().unwrap();
    assert_eq!(
        (
            start_record.first_seq,
            &start_record.prev_hash,
            start_record.sink.as_str()
        ),
        (first, prev, sh.sink.as_str())
    );
    // It verifies, but nothing signed says where it starts: incomplete, never intact.
    let report = r.verify(&l.keys).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(kinds(&report), vec![FindingKind::UnsignedStart], "{report:?}");
    assert_eq!(report.outcome(TailPolicy::Strict), Outcome::Incomplete);
    assert_eq!(
        (
            report.expired_before,
            report.first_seq,
            report.last_seq,
            report.last_signed_seq
        ),
        (Some(first), first, last, last)
    );
    // Searches and sessions from its indexes.
    let late5 = seqs_of(
        &r,
        gatehouse_recorder::SearchQuery {
            session: Some("late5".into()),
            ..q()
        },
    );
    let late5_seq = events.iter().find(|e| e.session_id == "late5").unwrap().seq;
    assert_eq!(late5, vec![late5_seq]);
    let orders = || gatehouse_recorder::SearchQuery {
        text: Some("orders".into()),
        ..q()
    };
    let found = seqs_of(&r, orders());
    let mut held = seqs_of(&LogReader::open(&l.log()).unwrap(), orders());
    held.retain(|s| *s >= first);
    assert!(!found.is_empty());
    assert_eq!(found, held);
    assert!(r.sessions().unwrap().iter().any(|s| s.session_id == "late0"));
    assert_eq!(unindexed(&out), 0);

    // A bundle reaching back into what expired is refused; one after it verifies on its own,
    // and s1's transcript, whose start expired, says so.
    let signer = CheckpointSigner::from_pem(&l.signer_pem).unwrap();
    let err = export_bundle(
        &r,
        &ExportOptions {
            out: &l.dir.path().join("b0"),
            from_us: 0,
            to_us: i64::MAX,
            signer: Some(&signer),
        },
    )
    .unwrap_err();
    assert!(
        matches!(&err, RecorderError::Invalid(m) if m.contains("expired events 1 to")),
        "{err}"
    );
    let bound = r.checkpoint_at_or_after(first).unwrap().unwrap().time_us;
    assert!(bound < now, "the first part was signed before the later events");
    let bundle = l.dir.path().join("b1");
    export_bundle(
        &r,
        &ExportOptions {
            out: &bundle,
            from_us: bound + 1,
            to_us: i64::MAX,
            signer: Some(&signer),
        },
    )
    .unwrap();
    let b = verify_bundle(&bundle, &l.keys).unwrap();
    assert_eq!(b.outcome(TailPolicy::Strict), Outcome::Intact, "{b:?}");
    let s1 = std::fs::read_dir(bundle.join("transcripts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().contains("s1"))
        .unwrap();
    let text = std::fs::read_to_string(s1).unwrap();
    assert!(text.starts_with("[this log was restored from"), "{text}");
    drop(r);

    // Removing the restored log's first event is still tampering.
    {
        let db = raw_db(&out);
        db.delete_cf(db.cf_handle("events").unwrap(), first.to_be_bytes())
            .unwrap();
    }
    let report = LogReader::open(&out).unwrap().verify(&l.keys).unwrap();
    let t = report.first_tampering().unwrap();
    assert_eq!((t.kind, t.seq), (FindingKind::Missing, Some(first)), "{report:?}");
}

#[tokio::test]
async fn a_start_record_added_to_a_log_never_hides_its_removed_oldest_events() {
    // Someone able to edit the log deletes its first events and adds the record a restore
    // from an expiring sink writes: the verdict is never intact.
    let l = signed_log().await;
    let cut = l.checkpoint_seqs()[0] + 1;
    assert!(cut < 7, "{:?}", l.checkpoint_seqs());
    let events = LogReader::open(&l.log()).unwrap().events(1, 100).unwrap();
    {
        let db = raw_db(&l.log());
        let cf = db.cf_handle("events").unwrap();
        for seq in 1..cut {
            db.delete_cf(cf, seq.to_be_bytes()).unwrap();
        }
        let record = serde_json::json!({
            "first_seq": cut,
            "prev_hash": events[(cut - 2) as usize].hash,
            "sink": "s3://bucket",
            "restored_us": 1,
        });
        db.put_cf(
            db.cf_handle("meta").unwrap(),
            b"restored_start",
            serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
    }
    let report = l.verify();
    assert_eq!(
        report.outcome(TailPolicy::live(3600)),
        Outcome::Incomplete,
        "{report:?}"
    );
    assert!(kinds(&report).contains(&FindingKind::UnsignedStart), "{report:?}");
    assert_eq!(report.expired_before, Some(cut));
}

#[tokio::test]
async fn a_cleanly_closed_log_leaves_no_wal_to_replay() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(&cfg(dir.path(), Durability::Sync)).unwrap();
    let text = format!("SELECT '{}'", "x".repeat(1000));
    for op in 0..2000u64 {
        rec.append_nowait(query("s1", 1_000 + op as i64, op, &text, allow("p")));
    }
    rec.append(end("s1", 9_000)).await.unwrap();
    let wal = |dir: &Path| -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .map(|e| e.metadata().unwrap().len())
            .sum()
    };
    assert!(
        wal(dir.path()) > 500_000,
        "the events are in the WAL while it runs"
    );
    rec.shutdown();
    // Its memtables were written out: whoever opens it next has nothing to replay.
    assert!(
        wal(dir.path()) < 64 << 10,
        "{} bytes of WAL left",
        wal(dir.path())
    );
    let r = LogReader::open(dir.path()).unwrap();
    assert_eq!(r.last_seq().unwrap(), 2001);
    assert_eq!(r.verify_chain().unwrap().events_checked, 2001);
}
