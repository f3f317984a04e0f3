#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use gatehouse_core::config::{Durability, RecorderConfig};

use crate::{EventBody, LogReader, NewEvent, Recorder, RecorderError};

fn notice(session: &str, msg: &str) -> NewEvent {
    NewEvent {
        time_us: 1,
        session_id: session.into(),
        principal: None,
        on_behalf_of: None,
        actor_chain: Vec::new(),
        body: EventBody::Notice {
            level: "info".into(),
            message: msg.into(),
        },
    }
}

#[tokio::test]
async fn failed_write_refuses_batch_keeps_head_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(&RecorderConfig {
        dir: dir.path().to_path_buf(),
        durability: Durability::Sync,
        max_batch: 16,
        checkpoints: None,
        shipping: None,
        literals: Default::default(),
        results: Default::default(),
    })
    .unwrap();
    assert_eq!(rec.append(notice("s", "a")).await.unwrap(), 1);

    rec.fail_next_batches(1);
    let err = rec.append(notice("s", "lost")).await.unwrap_err();
    assert!(matches!(err, RecorderError::Write(_)), "{err}");
    assert_eq!(rec.stats().last_seq, 1);
    assert_eq!(rec.stats().failed, 1);

    // The recorder reopens the database and continues the chain from the durable head, then
    // records the outage itself.
    assert_eq!(rec.append(notice("s", "b")).await.unwrap(), 2);
    // An unacknowledged event (a fact, e.g. a result) from a failed batch is kept and written
    // late, ahead of the next batch; it is not lost.
    rec.fail_next_batches(1);
    rec.append_nowait(notice("s", "late"));
    for _ in 0..500 {
        if rec.stats().pending == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(rec.append(notice("s", "c")).await.unwrap(), 5);
    rec.shutdown();
    let st = rec.stats();
    assert_eq!((st.appended, st.failed, st.last_seq), (6, 1, 6));

    let r = LogReader::open(dir.path()).unwrap();
    assert!(r.verify_chain().unwrap().is_ok());
    let events = r.events(1, 10).unwrap();
    let msgs: Vec<(String, String)> = events
        .into_iter()
        .map(|e| match e.body {
            EventBody::Notice { message, .. } => (e.session_id, message),
            other => panic!("{other:?}"),
        })
        .collect();
    let plain: Vec<&str> = msgs
        .iter()
        .filter(|(s, _)| s == "s")
        .map(|(_, m)| m.as_str())
        .collect();
    assert_eq!(plain, ["a", "b", "late", "c"]);
    let outages: Vec<&str> = msgs
        .iter()
        .filter(|(s, _)| s == crate::writer::GATEWAY_SESSION)
        .map(|(_, m)| m.as_str())
        .collect();
    assert_eq!(outages.len(), 2, "{msgs:?}");
    assert!(
        outages[0].contains("1 operations refused unrecorded, 0 events recorded late, 0 events lost"),
        "{}",
        outages[0]
    );
    assert!(
        outages[1].contains("0 operations refused unrecorded, 1 events recorded late, 0 events lost"),
        "{}",
        outages[1]
    );
}

#[tokio::test]
async fn invalid_event_is_refused_alone() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(&buffered(dir.path())).unwrap();
    let err = rec.append(notice("bad\0id", "x")).await.unwrap_err();
    assert!(matches!(err, RecorderError::Invalid(_)), "{err}");
    assert_eq!(rec.append(notice("ok", "y")).await.unwrap(), 1);
    assert_eq!(rec.stats().failed, 1);
}

fn buffered(dir: &std::path::Path) -> RecorderConfig {
    RecorderConfig {
        dir: dir.to_path_buf(),
        durability: Durability::Buffered,
        max_batch: 16,
        checkpoints: None,
        shipping: None,
        literals: Default::default(),
        results: Default::default(),
    }
}

async fn indexed_through(rec: &Recorder, seq: u64) {
    for _ in 0..1000 {
        if rec.stats().indexed_seq >= seq {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("the indexer did not reach {seq}: {:?}", rec.stats());
}

fn search(dir: &std::path::Path, principal: Option<&str>, limit: usize) -> crate::SearchResult {
    LogReader::open(dir)
        .unwrap()
        .search(&crate::SearchQuery {
            kind: Some("notice".into()),
            principal: principal.map(str::to_string),
            from_us: i64::MIN,
            to_us: i64::MAX,
            limit,
            ..Default::default()
        })
        .unwrap()
}

fn seqs(r: &crate::SearchResult) -> Vec<u64> {
    r.events.iter().map(|e| e.seq).collect()
}

#[tokio::test]
async fn search_reads_what_the_indexer_has_not_reached_and_the_indexer_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(&buffered(dir.path())).unwrap();
    let by = |session: &str, who: &str, time_us: i64| NewEvent {
        principal: Some(who.to_string()),
        time_us,
        ..notice(session, "m")
    };
    // Times out of seq order: results are newest first by time, indexed or not.
    for (i, t) in [10, 30, 50].into_iter().enumerate() {
        assert_eq!(rec.append(by("a", "user:alice", t)).await.unwrap(), i as u64 + 1);
    }
    indexed_through(&rec, 3).await;

    rec.pause_indexer(true);
    for t in [20, 40, 60] {
        rec.append(by("b", "user:bob", t)).await.unwrap();
    }
    // Events 4 to 6 are durable but not indexed: a search reads them and merges them in.
    assert_eq!(rec.stats().indexed_seq, 3);
    let r = search(dir.path(), None, 100);
    assert_eq!((seqs(&r), r.unindexed), (vec![6, 3, 5, 2, 4, 1], 3));
    let r = search(dir.path(), None, 4);
    assert_eq!((seqs(&r), r.truncated), (vec![6, 3, 5, 2], true));
    let r = search(dir.path(), Some("user:bob"), 100);
    assert_eq!(seqs(&r), [6, 5, 4]);
    let r = search(dir.path(), Some("user:alice"), 2);
    assert_eq!((seqs(&r), r.truncated), (vec![3, 2], true));

    // The next batch shows the indexer the gap: it reads 4 to 6 back from the log.
    rec.pause_indexer(false);
    rec.append(by("b", "user:bob", 70)).await.unwrap();
    indexed_through(&rec, 7).await;
    let r = search(dir.path(), Some("user:bob"), 100);
    assert_eq!((seqs(&r), r.unindexed), (vec![7, 6, 5, 4], 0));

    // What a shutdown leaves unindexed is indexed at the next start.
    rec.pause_indexer(true);
    rec.append(by("a", "user:alice", 80)).await.unwrap();
    rec.shutdown();
    let r = search(dir.path(), Some("user:alice"), 100);
    assert_eq!((seqs(&r), r.unindexed), (vec![8, 3, 2, 1], 1));
    let rec = Recorder::open(&buffered(dir.path())).unwrap();
    indexed_through(&rec, 8).await;
    rec.shutdown();
    let r = search(dir.path(), Some("user:alice"), 100);
    assert_eq!((seqs(&r), r.unindexed), (vec![8, 3, 2, 1], 0));
}

#[tokio::test]
async fn batches_the_indexer_never_received_are_read_back_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(&buffered(dir.path())).unwrap();
    let ev = |who: &str| NewEvent {
        principal: Some(who.to_string()),
        ..notice("s", "m")
    };
    rec.append(ev("user:a")).await.unwrap();
    indexed_through(&rec, 1).await;
    // Three commits in quick succession (the indexer gathers them in one window); the middle
    // one never reaches it.
    rec.drop_index_batch(3);
    for who in ["user:b", "user:c", "user:d"] {
        rec.append(ev(who)).await.unwrap();
    }
    indexed_through(&rec, 4).await;
    assert_eq!(rec.stats().index_dropped_batches, 1);
    let r = search(dir.path(), Some("user:c"), 10);
    assert_eq!((seqs(&r), r.unindexed), (vec![3], 0));
    // The last batch before a quiet spell goes missing: the indexer reads it back on its own.
    rec.drop_index_batch(5);
    rec.append(ev("user:e")).await.unwrap();
    indexed_through(&rec, 5).await;
    assert_eq!(rec.stats().index_dropped_batches, 2);
    rec.shutdown();
    let r = search(dir.path(), None, 10);
    assert_eq!((seqs(&r), r.unindexed), (vec![5, 4, 3, 2, 1], 0));
}

/// A decision of `who` on `text` at `time_us`.
fn decision(session: &str, who: &str, time_us: i64, text: &str, deny: bool) -> NewEvent {
    use gatehouse_core::{SqlStatement, Verdict};
    let policy_ids = vec![if deny { "read-only" } else { "read-anywhere" }.to_string()];
    NewEvent {
        time_us,
        session_id: session.into(),
        principal: Some(who.into()),
        on_behalf_of: None,
        actor_chain: Vec::new(),
        body: EventBody::Decision {
            op: 1,
            action: "query".into(),
            statement: Some(SqlStatement {
                text: text.into(),
                ..SqlStatement::default()
            }),
            verdict: if deny {
                Verdict::Deny {
                    reason: "no".into(),
                    policy_ids,
                }
            } else {
                Verdict::Allow { policy_ids }
            },
            policy_generation: 1,
            errors: vec![],
            plugins: vec![],
            hold: None,
            approval: None,
            unheld: None,
        },
    }
}

/// Mark the log's indexes as the previous layout's (`postings-v1`, no session terms): they
/// count for nothing, and the next start builds them again.
fn previous_index_layout(dir: &std::path::Path) {
    let db = crate::store::open_rw(dir).unwrap();
    db.put_cf(
        crate::store::cf(&db, "meta").unwrap(),
        crate::store::META_INDEX_FORMAT,
        b"postings-v1",
    )
    .unwrap();
}

/// The blocks of posting lists answer every query exactly as reading every event does:
/// newest first by (time, seq) with times out of seq order across blocks, limits, windows,
/// conditions together; whether the blocks came from live commits of every size or from a
/// rebuild.
#[tokio::test]
async fn indexed_search_answers_as_reading_every_event_does() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(&buffered(dir.path())).unwrap();
    let texts = [
        "SELECT name FROM users WHERE id = 1",
        "DELETE FROM orders",
        "select count(*) from Orders o join users u on u.id = o.uid",
        "UPDATE users SET name = 'x'",
    ];
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move |n: u64| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) % n
    };
    let mut n = 0u64;
    for group in 0..40 {
        // Commits of 1 to 12 events; every few, the indexer catches up (a block ends).
        let size = 1 + next(12);
        for i in 0..size {
            n += 1;
            // Mostly rising times, with some far back or ahead (a skewed clock).
            let time = match next(10) {
                0 => 1_000 + next(500) as i64,
                1 => 100_000 + next(500) as i64,
                _ => 10_000 + n as i64 * 10,
            };
            let who = format!("user:u{}", next(4));
            let e = decision(
                // An empty id is a session too.
                ["s0", "s1", "s2", "s3", ""][next(5) as usize],
                &who,
                time,
                texts[next(4) as usize],
                next(5) == 0,
            );
            if i + 1 == size {
                rec.append(e).await.unwrap();
            } else {
                rec.append_nowait(e);
            }
        }
        if group % 3 == 0 {
            indexed_through(&rec, n).await;
        }
    }
    indexed_through(&rec, n).await;
    rec.shutdown();

    let q = |f: &dyn Fn(&mut crate::SearchQuery)| {
        let mut q = crate::SearchQuery {
            from_us: i64::MIN,
            to_us: i64::MAX,
            limit: 1000,
            ..Default::default()
        };
        f(&mut q);
        q
    };
    let mut queries = Vec::new();
    for limit in [1, 3, 10, 1000] {
        queries.push(q(&|q| q.limit = limit));
        queries.push(q(&|q| {
            q.limit = limit;
            q.principal = Some("user:u2".into());
        }));
        queries.push(q(&|q| {
            q.limit = limit;
            q.text = Some("FROM orders".into());
        }));
        queries.push(q(&|q| {
            q.limit = limit;
            q.text = Some("users".into());
            q.decision = Some("deny".into());
        }));
        queries.push(q(&|q| {
            q.limit = limit;
            q.policy = Some("read-only".into());
            q.principal = Some("user:u1".into());
        }));
        queries.push(q(&|q| {
            q.limit = limit;
            q.from_us = 1_200;
            q.to_us = 10_500;
        }));
        queries.push(q(&|q| {
            q.limit = limit;
            q.kind = Some("decision".into());
            q.from_us = 10_100;
            q.to_us = 100_200;
        }));
        queries.push(q(&|q| {
            q.limit = limit;
            q.session = Some(format!("s{}", limit % 5));
        }));
        queries.push(q(&|q| {
            q.limit = limit;
            q.session = Some("s2".into());
            q.decision = Some("deny".into());
            q.from_us = 10_100;
        }));
    }
    queries.push(q(&|q| q.session = Some(String::new())));
    queries.push(q(&|q| q.session = Some("s".into())));
    let answers = |expect_unindexed: u64| {
        let r = LogReader::open(dir.path()).unwrap();
        // A session's events (replay, transcripts, bundles) come through the same indexes:
        // exactly those reading every event finds, in log order.
        let all = r.events(1, usize::MAX).unwrap();
        for id in ["s0", "s1", "s2", "s3", "s4", "s", ""] {
            let want: Vec<u64> = all.iter().filter(|e| e.session_id == id).map(|e| e.seq).collect();
            let got: Vec<u64> = r.session_events(id).unwrap().iter().map(|e| e.seq).collect();
            assert_eq!(got, want, "session {id:?}");
        }
        queries
            .iter()
            .map(|q| {
                let res = r.search(q).unwrap();
                assert_eq!(res.unindexed, expect_unindexed, "{q:?}");
                let keys: Vec<(i64, u64)> = res.events.iter().map(|e| (e.time_us, e.seq)).collect();
                assert!(keys.windows(2).all(|w| w[0] > w[1]), "{q:?}: {keys:?}");
                assert!(keys.iter().all(|(t, _)| (q.from_us..=q.to_us).contains(t)));
                (seqs(&res), res.truncated)
            })
            .collect::<Vec<_>>()
    };
    let live = answers(0);
    assert!(
        live.iter().any(|(s, t)| s.len() == 10 && *t),
        "some queries are truncated"
    );
    assert!(live.iter().any(|(s, t)| s.len() > 10 && !*t), "some are not");

    // Indexes of another layout (here the previous one, without session terms) count for
    // nothing, and are dropped when the recorder next starts: every event is read, and must
    // give the same answers.
    previous_index_layout(dir.path());
    assert_eq!(answers(n), live);
    // Rebuilt by the indexer's catch-up (other block boundaries): the same again.
    let rec = Recorder::open(&buffered(dir.path())).unwrap();
    indexed_through(&rec, n).await;
    rec.shutdown();
    assert_eq!(answers(0), live);

    // Every posting list damaged: each block's events are read from the log instead.
    {
        let db = crate::store::open_rw(dir.path()).unwrap();
        let cf = crate::store::cf(&db, crate::search::CF_SEARCH).unwrap();
        let lists: Vec<Box<[u8]>> = db
            .iterator_cf(cf, rocksdb::IteratorMode::Start)
            .map(|i| i.unwrap().0)
            .filter(|k| k[0] == b'P')
            .collect();
        assert!(!lists.is_empty());
        for k in lists {
            db.put_cf(cf, k, [0x80]).unwrap();
        }
    }
    assert_eq!(answers(0), live);

    // Some events indexed, the last ones not (the indexer stopped): a session's events come
    // from both. (Clean indexes first: the damaged ones above are rebuilt.)
    previous_index_layout(dir.path());
    let rec = Recorder::open(&buffered(dir.path())).unwrap();
    indexed_through(&rec, n).await;
    rec.pause_indexer(true);
    for (i, id) in ["s1", "", "s1", "s3"].iter().enumerate() {
        rec.append(decision(id, "user:u9", 200_000 + i as i64, texts[i], false))
            .await
            .unwrap();
    }
    rec.shutdown();
    let r = LogReader::open(dir.path()).unwrap();
    assert_eq!(r.search(&q(&|_| {})).unwrap().unindexed, 4);
    let all = r.events(1, usize::MAX).unwrap();
    for id in ["s1", "", "s3", "s4"] {
        let want: Vec<u64> = all.iter().filter(|e| e.session_id == id).map(|e| e.seq).collect();
        let got: Vec<u64> = r.session_events(id).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(got, want, "session {id:?}");
        assert!(id == "s4" || got.iter().any(|s| *s <= n) && got.iter().any(|s| *s > n));
    }
}

/// Every session's summary as if each event were applied in order from the first (what a
/// summary is defined to be), newest session first as listed.
fn summaries_from_scratch(r: &LogReader) -> Vec<crate::SessionSummary> {
    let mut all: std::collections::HashMap<String, Option<crate::SessionSummary>> = Default::default();
    for ev in r.events(1, usize::MAX).unwrap() {
        crate::summaries::apply_event(all.entry(ev.session_id.clone()).or_default(), &ev);
    }
    let mut out: Vec<crate::SessionSummary> = all.into_values().flatten().collect();
    out.sort_by(|a, b| b.start_us.cmp(&a.start_us).then(b.first_seq.cmp(&a.first_seq)));
    out
}

/// The summary as stored, and the mark (not what readers see).
fn stored_summary(dir: &std::path::Path, id: &str) -> (Option<crate::SessionSummary>, Option<u64>) {
    let db = crate::store::open_ro(dir).unwrap();
    let cf = crate::store::cf(&db, crate::store::CF_SESSIONS).unwrap();
    let s = db
        .get_cf(cf, id.as_bytes())
        .unwrap()
        .map(|v| serde_json::from_slice(&v).unwrap());
    (s, crate::summaries::mark(&db).unwrap())
}

fn session_start(session: &str, who: &str) -> NewEvent {
    NewEvent {
        time_us: 5,
        session_id: session.into(),
        principal: Some(who.into()),
        on_behalf_of: None,
        actor_chain: Vec::new(),
        body: EventBody::SessionStart {
            protocol: "postgres".into(),
            source: "127.0.0.1:50000".into(),
            target: "app".into(),
            client_app: Some("psql".into()),
            auth_method: "scram-sha-256".into(),
            principal: gatehouse_core::Principal {
                kind: gatehouse_core::PrincipalKind::User,
                id: who.trim_start_matches("user:").into(),
                groups: Vec::new(),
                attrs: Default::default(),
                on_behalf_of: None,
                actor_chain: Vec::new(),
            },
            target_tags: Default::default(),
            auth: None,
            grant: None,
        },
    }
}

fn session_end(session: &str) -> NewEvent {
    NewEvent {
        body: EventBody::SessionEnd {
            reason: "client closed".into(),
            ops: 0,
            duration_us: 1,
        },
        ..notice(session, "")
    }
}

/// Decisions and results only move a summary's counters, and the writer writes those at most
/// `SUMMARY_FLUSH` later; readers apply the events past the mark meanwhile. Listings are exact
/// at every moment: while counters are unwritten, after a crash left them so, once the next
/// start wrote them, and after an idle flush.
#[tokio::test]
async fn session_summaries_are_exact_before_their_counters_are_written_and_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(&buffered(dir.path())).unwrap();
    let check = |when: &str| {
        let r = LogReader::open(dir.path()).unwrap();
        let exact = summaries_from_scratch(&r);
        assert_eq!(r.sessions().unwrap(), exact, "{when}");
        for s in &exact {
            assert_eq!(r.session(&s.session_id).unwrap().as_ref(), Some(s), "{when}");
        }
        exact
    };
    rec.hold_summaries(true);
    rec.append(session_start("a", "user:ann")).await.unwrap();
    rec.append(session_start("b", "user:bob")).await.unwrap();
    // A session the gateway's own notices opened, whose principal comes later.
    rec.append(notice("c", "first")).await.unwrap();
    for i in 0..30 {
        rec.append(decision("a", "user:ann", 10 + i, "SELECT 1", i % 7 == 0))
            .await
            .unwrap();
        rec.append_nowait(notice("a", "result"));
        if i % 3 == 0 {
            rec.append(decision("b", "user:bob", 10 + i, "DELETE FROM t", true))
                .await
                .unwrap();
        }
        if i == 20 {
            rec.append(decision("c", "agent:late", 10 + i, "SELECT 2", false))
                .await
                .unwrap();
        }
    }
    rec.append(session_end("b")).await.unwrap();
    // A late event of an ended session (a result recorded after the end).
    rec.append(decision("b", "user:bob", 90, "SELECT 9", false))
        .await
        .unwrap();
    let exact = check("counters unwritten");
    let a = exact.iter().find(|s| s.session_id == "a").unwrap().clone();
    assert_eq!((a.ops, a.denied), (30, 5));
    let (stored_a, mark) = stored_summary(dir.path(), "a");
    let stored_a = stored_a.unwrap();
    assert!(
        stored_a.ops < a.ops,
        "the test covers unwritten counters: {stored_a:?}"
    );
    // It followed the first three events (each written at once), then stopped at the first
    // counter-only change.
    assert_eq!(mark, Some(3));
    // Ended, and named late: written in their own batches.
    let (stored_b, _) = stored_summary(dir.path(), "b");
    assert_eq!(stored_b.as_ref(), exact.iter().find(|s| s.session_id == "b"));
    let (stored_c, _) = stored_summary(dir.path(), "c");
    assert_eq!(stored_c.unwrap().principal.as_deref(), Some("agent:late"));

    // A crash: what was unwritten stays so (the hook skips the flush at shutdown too).
    rec.shutdown();
    check("after a crash");
    assert!(stored_summary(dir.path(), "a").0.unwrap().ops < a.ops);

    // The next start writes them and moves the mark to the head.
    let rec = Recorder::open(&buffered(dir.path())).unwrap();
    let head = rec.stats().last_seq;
    assert_eq!(stored_summary(dir.path(), "a"), (Some(a.clone()), Some(head)));
    check("after the restart");
    // A batch whose changes are all written at once moves the mark with it.
    rec.append(session_start("d", "user:dee")).await.unwrap();
    assert_eq!(stored_summary(dir.path(), "d").1, Some(head + 1));

    // Unheld: an idle writer writes pending counters within `SUMMARY_FLUSH`.
    for i in 0..5 {
        rec.append(decision("a", "user:ann", 100 + i, "SELECT 3", false))
            .await
            .unwrap();
    }
    let head = rec.stats().last_seq;
    let mut flushed = false;
    for _ in 0..500 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        let (s, mark) = stored_summary(dir.path(), "a");
        if mark == Some(head) {
            assert_eq!(s.unwrap().ops, a.ops + 5);
            flushed = true;
            break;
        }
    }
    assert!(flushed, "pending summaries written when idle");
    let a_ops_before = a.ops + 5;
    check("after an idle flush");

    // A failed write: the writer reopens the log before the next batch, and the reopening
    // writes what was pending (held or not); the failed batch's event is nowhere.
    rec.hold_summaries(true);
    for i in 0..4 {
        rec.append(decision("a", "user:ann", 200 + i, "SELECT 4", i == 0))
            .await
            .unwrap();
    }
    let head = rec.stats().last_seq;
    let (s, mark) = stored_summary(dir.path(), "a");
    assert!(
        mark < Some(head) && s.unwrap().last_seq < head,
        "counters pending"
    );
    rec.fail_next_batches(1);
    assert!(
        rec.append(decision("a", "user:ann", 300, "SELECT 5", false))
            .await
            .is_err()
    );
    check("after a failed write");
    rec.append(decision("a", "user:ann", 301, "SELECT 6", false))
        .await
        .unwrap();
    let exact = check("after the reopen");
    let a = exact.iter().find(|s| s.session_id == "a").unwrap();
    assert_eq!((a.ops, a.last_seq), (a_ops_before + 5, head + 1));
    let (s, mark) = stored_summary(dir.path(), "a");
    // Everything up to the reopen written; the event after it (held) not yet.
    assert_eq!(mark, Some(head));
    assert_eq!(s.unwrap().ops, a.ops - 1);
    rec.hold_summaries(false);

    rec.shutdown();
    check("after a clean shutdown");
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("timed out waiting until {what}");
}

/// A new checkpoint signing key in `dir`: the reference the config takes, and the public key.
fn signing_key(dir: &std::path::Path) -> (gatehouse_core::config::SecretRef, crate::PublicKeys) {
    let (private, public, _) = crate::CheckpointSigner::generate().unwrap();
    let key_file = dir.join("signing.pem");
    std::fs::write(&key_file, &private).unwrap();
    let mut keys = crate::PublicKeys::default();
    keys.add_pem(&public).unwrap();
    (gatehouse_core::config::SecretRef::File(key_file), keys)
}

fn assert_intact(r: &LogReader, keys: &crate::PublicKeys) {
    let report = r.verify(keys).unwrap();
    assert_eq!(
        report.outcome(crate::TailPolicy::Strict),
        crate::Outcome::Intact,
        "{report:?}"
    );
}

/// Sync durability's second stage: a decision is acknowledged only after the fsync that
/// covers it, the writer goes on writing while that fsync is in flight, the shipper ships
/// nothing past what is durable, and a failed fsync refuses the appends waiting on it and is
/// itself recorded.
#[tokio::test]
async fn awaited_appends_wait_for_their_fsync_while_the_writer_goes_on() {
    use gatehouse_core::config::{CheckpointConfig, ShippingConfig};

    let dir = tempfile::tempdir().unwrap();
    let (key, keys) = signing_key(dir.path());
    let log = dir.path().join("log");
    let c = RecorderConfig {
        dir: log.clone(),
        durability: Durability::Sync,
        max_batch: 16,
        // Every batch carries a checkpoint, so each could be shipped as soon as it is written.
        checkpoints: Some(CheckpointConfig {
            key,
            every_events: 1,
            every_secs: 3600,
        }),
        shipping: Some(ShippingConfig {
            sink: format!("file://{}", dir.path().join("sink").display()),
            endpoint: None,
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            interval_secs: 1,
            backlog_alert_events: 100,
            encryption_key: None,
            keep_local_secs: None,
            retention_interval_secs: 300,
            sink_check_interval_secs: 3600,
            sink_expires: false,
            sink_lost_accepted: Vec::new(),
        }),
        literals: Default::default(),
        results: Default::default(),
    };
    let rec = Recorder::open(&c).unwrap();
    let shipper = crate::Shipper::from_config(&c, rec.clone()).unwrap().unwrap();
    assert_eq!(rec.append(notice("s", "a")).await.unwrap(), 1);
    assert_eq!(rec.stats().durable_seq, 1);
    assert_eq!(shipper.ship_sealed().await.unwrap(), 1);

    rec.hold_sync(true);
    let r = rec.clone();
    let b = tokio::spawn(async move { r.append(notice("s", "b")).await });
    wait_until("b is written", || rec.stats().last_seq == 2).await;
    rec.append_nowait(notice("s", "c"));
    let r = rec.clone();
    let d = tokio::spawn(async move { r.append(notice("s", "d")).await });
    // The fsync in flight does not hold up the writer...
    wait_until("c and d are written", || rec.stats().last_seq == 4).await;
    // ...but it holds up every acknowledgement, and the shipper.
    assert!(!b.is_finished() && !d.is_finished());
    assert_eq!(rec.stats().durable_seq, 1);
    assert_eq!(
        LogReader::open(&log)
            .unwrap()
            .checkpoint_at_or_after(2)
            .unwrap()
            .map(|c| c.seq),
        Some(2),
        "written and signed"
    );
    assert_eq!(shipper.ship_sealed().await.unwrap(), 0, "nothing durable to ship");
    rec.hold_sync(false);
    assert_eq!(b.await.unwrap().unwrap(), 2);
    assert_eq!(d.await.unwrap().unwrap(), 4);
    assert_eq!(rec.stats().durable_seq, 4);
    assert!(shipper.ship_sealed().await.unwrap() >= 1);
    assert_eq!(crate::ship::load_cursor(&log).unwrap().seq, 4);

    // A failed fsync: the append waiting on it is refused (its operation is not forwarded);
    // the event stays written, and the log says which events were not confirmed durable.
    // First done by the writer itself (nothing else to write and no fsync in flight)...
    rec.fail_next_syncs(1);
    let err = rec.append(notice("s", "e")).await.unwrap_err();
    assert!(
        matches!(&err, RecorderError::Write(m) if m.contains("cannot fsync")),
        "{err}"
    );
    assert_eq!(rec.stats().failed, 1);
    assert_eq!(rec.stats().durable_seq, 4);
    assert_eq!(rec.append(notice("s", "f")).await.unwrap(), 7);
    assert_eq!(rec.stats().durable_seq, 7);
    // ...then by the syncer.
    rec.hold_sync(true);
    rec.fail_next_syncs(1);
    let r = rec.clone();
    let g = tokio::spawn(async move { r.append(notice("s", "g")).await });
    wait_until("g is written", || rec.stats().last_seq == 8).await;
    rec.hold_sync(false);
    assert!(g.await.unwrap().is_err());
    assert_eq!(rec.stats().failed, 2);
    assert_eq!(rec.stats().durable_seq, 7);
    assert_eq!(rec.append(notice("s", "h")).await.unwrap(), 10);
    assert_eq!(rec.stats().durable_seq, 10);
    rec.shutdown();

    let r = LogReader::open(&log).unwrap();
    let events = r.events(5, 10).unwrap();
    let texts: Vec<String> = events
        .iter()
        .map(|e| match &e.body {
            EventBody::Notice { message, .. } => message.clone(),
            other => panic!("unexpected event {other:?}"),
        })
        .collect();
    assert_eq!(texts.len(), 6, "{texts:?}");
    for (i, text, failed) in [(0, "e", 5), (3, "g", 8)] {
        assert_eq!(
            (texts[i].as_str(), texts[i + 2].as_str()),
            (text, ["f", "h"][i / 3])
        );
        let notice = &texts[i + 1];
        assert!(
            notice.contains("fsync of the event log failed")
                && notice.contains(&format!("events {failed} to {failed}"))
                && notice.contains("1 operations waiting on them were refused"),
            "{notice}"
        );
        assert_eq!(events[i + 1].session_id, crate::GATEWAY_SESSION);
    }
    assert_intact(&r, &keys);
}

/// Local retention deletes events whose sessions' counters are still pending in the writer's
/// memory. It writes them, and the mark, with its marker first, so listings stay exact once
/// the events are gone: an open session keeps counting what was deleted, one that ended below
/// the floor leaves the listings, and a crash after it loses nothing either.
#[tokio::test]
async fn retention_keeps_listings_exact_while_counters_are_pending() {
    use gatehouse_core::config::CheckpointConfig;

    let dir = tempfile::tempdir().unwrap();
    let (key, keys) = signing_key(dir.path());
    let log = dir.path().join("log");
    let mut c = buffered(&log);
    // Every batch is signed: any event can be the floor.
    c.checkpoints = Some(CheckpointConfig {
        key,
        every_events: 1,
        every_secs: 3600,
    });
    let rec = Recorder::open(&c).unwrap();
    rec.hold_summaries(true);
    rec.append(session_start("a", "user:ann")).await.unwrap();
    rec.append(session_start("b", "user:bob")).await.unwrap();
    for i in 0..6 {
        rec.append(decision("a", "user:ann", 10 + i, "SELECT 1", i == 2))
            .await
            .unwrap();
        rec.append(decision("b", "user:bob", 10 + i, "SELECT 2", false))
            .await
            .unwrap();
    }
    rec.append(session_end("b")).await.unwrap();
    let floor = rec
        .append(decision("a", "user:ann", 20, "SELECT 3", false))
        .await
        .unwrap();
    rec.append(decision("a", "user:ann", 21, "SELECT 4", true))
        .await
        .unwrap();
    let exact = summaries_from_scratch(&LogReader::open(&log).unwrap());
    let a = exact.iter().find(|s| s.session_id == "a").unwrap().clone();
    assert_eq!((a.ops, a.denied), (8, 2));
    let (stored_a, mark) = stored_summary(&log, "a");
    assert!(
        stored_a.unwrap().ops < a.ops && mark < Some(floor),
        "the test covers counters pending across the floor"
    );

    assert_eq!(rec.retain_through(floor, "file:///sink").await.unwrap(), floor);
    let r = LogReader::open(&log).unwrap();
    assert_eq!(r.floor().unwrap().map(|f| f.seq), Some(floor));
    assert!(r.events(1, usize::MAX).unwrap().iter().all(|e| e.seq > floor));
    // `a` counts all its operations, deleted ones too; `b` ended below the floor and is gone.
    assert_eq!(r.sessions().unwrap(), vec![a.clone()]);
    assert_eq!(r.session("b").unwrap(), None);

    // Counters keep pending past the floor, through a crash (the hook skips the flush at
    // shutdown too) and the reopen.
    rec.append(decision("a", "user:ann", 30, "SELECT 5", false))
        .await
        .unwrap();
    let r = LogReader::open(&log).unwrap();
    let now = r.session("a").unwrap().unwrap();
    assert_eq!(
        (now.ops, now.denied, now.first_seq),
        (a.ops + 1, a.denied, a.first_seq)
    );
    rec.shutdown();
    let r = LogReader::open(&log).unwrap();
    assert_eq!(r.sessions().unwrap(), vec![now.clone()]);
    let rec = Recorder::open(&c).unwrap();
    rec.append(decision("a", "user:ann", 31, "SELECT 6", false))
        .await
        .unwrap();
    rec.shutdown();
    let r = LogReader::open(&log).unwrap();
    let last = r.session("a").unwrap().unwrap();
    assert_eq!((last.ops, last.first_seq), (a.ops + 2, a.first_seq));
    assert_intact(&r, &keys);
}

/// A restored log's summaries are rebuilt from its events in chunks (bounded memory): with
/// sessions spanning many chunks, every summary equals the one applying every event in order
/// gives, the mark ends at the head, and rebuilding again changes nothing.
#[tokio::test]
async fn summaries_rebuilt_in_chunks_equal_those_applying_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(&buffered(dir.path())).unwrap();
    for s in ["a", "b", "c"] {
        rec.append(session_start(s, &format!("user:{s}"))).await.unwrap();
    }
    for i in 0..7 {
        for s in ["a", "b", "c"] {
            rec.append(decision(s, &format!("user:{s}"), 10 + i, "SELECT 1", i % 3 == 0))
                .await
                .unwrap();
        }
    }
    rec.append(session_end("b")).await.unwrap();
    rec.append(decision("late", "user:d", 99, "SELECT 2", false))
        .await
        .unwrap();
    rec.shutdown();
    let want: Vec<_> = summaries_from_scratch(&LogReader::open(dir.path()).unwrap())
        .into_iter()
        .filter(|s| s.session_id != crate::GATEWAY_SESSION)
        .collect();
    assert_eq!(want.len(), 4, "{want:?}");
    for chunk in [1, 2, 5, 1000] {
        {
            let db = crate::store::open_rw(dir.path()).unwrap();
            let cf = crate::store::cf(&db, crate::store::CF_SESSIONS).unwrap();
            for s in ["a", "b", "c", "late"] {
                db.delete_cf(cf, s.as_bytes()).unwrap();
            }
            let head = crate::store::recover_head(&db).unwrap().seq;
            crate::summaries::rebuild_in_chunks(&db, head, chunk).unwrap();
            assert_eq!(crate::summaries::mark(&db).unwrap(), Some(head), "chunk {chunk}");
            // Again: idempotent.
            crate::summaries::rebuild_in_chunks(&db, head, chunk).unwrap();
        }
        let r = LogReader::open(dir.path()).unwrap();
        let got: Vec<_> = r
            .sessions()
            .unwrap()
            .into_iter()
            .filter(|s| s.session_id != crate::GATEWAY_SESSION)
            .collect();
        assert_eq!(got, want, "chunk {chunk}");
        for s in &want {
            assert_eq!(
                stored_summary(dir.path(), &s.session_id).0.as_ref(),
                Some(s),
                "chunk {chunk}"
            );
        }
    }
}

#[test]
fn covered_ranges_merge_in_any_order_and_name_their_gaps() {
    use crate::ship::{Covered, describe_ranges};
    // Segments as a listing returns them: in no order, touching, overlapping, repeated.
    let segs = [
        (7, 9),
        (1, 3),
        (13, 13),
        (4, 6),
        (5, 6),
        (1, 3),
        (20, 30),
        (15, 16),
    ];
    let mut c = Covered::default();
    for (a, b) in segs {
        c.add(a, b);
    }
    assert_eq!(
        c.0.iter().map(|(a, b)| (*a, *b)).collect::<Vec<_>>(),
        vec![(1, 9), (13, 13), (15, 16), (20, 30)]
    );
    assert_eq!(c.gaps(1, 30), vec![(10, 12), (14, 14), (17, 19)]);
    assert_eq!(c.gaps(1, 35), vec![(10, 12), (14, 14), (17, 19), (31, 35)]);
    assert_eq!(c.gaps(5, 8), Vec::<(u64, u64)>::new());
    assert_eq!(c.gaps(11, 14), vec![(11, 12), (14, 14)]);
    assert_eq!(Covered::default().gaps(1, 3), vec![(1, 3)]);
    assert!(c.gaps(2, 9).is_empty() && c.gaps(13, 13).is_empty());
    assert_eq!((c.gaps(9, 10), c.gaps(14, 14)), (vec![(10, 10)], vec![(14, 14)]));
    // One range bridging several.
    c.add(10, 19);
    assert_eq!(
        c.0.iter().map(|(a, b)| (*a, *b)).collect::<Vec<_>>(),
        vec![(1, 30)]
    );
    assert_eq!(c.gaps(1, 30), Vec::<(u64, u64)>::new());
    // The end of the numbers.
    let mut c = Covered::default();
    c.add(u64::MAX - 1, u64::MAX);
    c.add(1, u64::MAX - 2);
    assert_eq!(c.gaps(1, u64::MAX), Vec::<(u64, u64)>::new());

    assert_eq!(describe_ranges(&[(4, 6), (9, 9)]), "4 to 6, 9");
    let many: Vec<(u64, u64)> = (0..8).map(|i| (i * 10 + 1, i * 10 + 2)).collect();
    assert_eq!(
        describe_ranges(&many),
        "1 to 2, 11 to 12, 21 to 22, 31 to 32, 41 to 42 and 3 more ranges (6 events)"
    );
}

#[test]
fn lost_events_change_event_by_event_not_range_by_range() {
    use crate::ship::{Covered, LostChanges, lost_changes};
    let covered = |r: &[(u64, u64)]| {
        let mut c = Covered::default();
        for &(a, b) in r {
            c.add(a, b);
        }
        c
    };
    // 1 to 7 lost, then 4 to 7 put back: that is back; 1 to 3 is no new loss.
    assert_eq!(
        lost_changes(&[(1, 7)], &[(1, 3)], &covered(&[(4, 7)]), None),
        LostChanges {
            back: vec![(4, 7)],
            ..Default::default()
        }
    );
    // 1 to 3 lost, then 4 to 7 too: only 4 to 7 is new.
    assert_eq!(
        lost_changes(&[(1, 3)], &[(1, 7)], &covered(&[]), None),
        LostChanges {
            new: vec![(4, 7)],
            ..Default::default()
        }
    );
    // A split: 3 to 4 back, the rest still lost.
    assert_eq!(
        lost_changes(&[(1, 6)], &[(1, 2), (5, 6)], &covered(&[(3, 4)]), None),
        LostChanges {
            back: vec![(3, 4)],
            ..Default::default()
        }
    );
    // An expiring sink whose first segment now starts at 9: what was lost before it has
    // expired; 9 and 10 are still lost.
    assert_eq!(
        lost_changes(&[(1, 3), (7, 10)], &[(9, 10)], &covered(&[]), Some(9)),
        LostChanges {
            expired: vec![(1, 3), (7, 8)],
            ..Default::default()
        }
    );
    // Nothing changed: nothing said.
    assert_eq!(
        lost_changes(&[(2, 2)], &[(2, 2)], &covered(&[]), Some(9)),
        LostChanges::default()
    );
}

#[test]
fn each_sink_is_checked_from_the_floor_it_first_saw_across_switches() {
    use crate::ship::sink_since;
    let dir = tempfile::tempdir().unwrap();
    let floor = |seq: u64, sink: &str| crate::store::Floor {
        seq,
        hash: String::new(),
        time_us: 0,
        sink: sink.to_string(),
        key_id: String::new(),
        signature: String::new(),
    };
    let at = |sink: &str, f: Option<&crate::store::Floor>| sink_since(dir.path(), sink, f).unwrap();
    // Shipped to A from the start: everything from 1, with or without a floor.
    assert_eq!(at("a", None), (1, None));
    assert_eq!(at("a", Some(&floor(100, "a"))), (1, None));
    // B takes over at floor 100: from 101, said once.
    assert_eq!(at("b", Some(&floor(100, "a"))), (101, Some("a".to_string())));
    assert_eq!(at("b", Some(&floor(100, "a"))), (101, None));
    assert_eq!(at("b", Some(&floor(200, "b"))), (101, None));
    // Back to A before B moved the floor: A still holds its own from 1.
    assert_eq!(at("a", Some(&floor(100, "a"))), (1, None));
    // Back to A after B moved the floor to 200: A from 201.
    assert_eq!(at("a", Some(&floor(200, "b"))), (201, Some("b".to_string())));
    assert_eq!(at("a", Some(&floor(300, "a"))), (201, None));
    // And B again after A moved it to 300: from 301, not its old 101.
    assert_eq!(at("b", Some(&floor(300, "a"))), (301, Some("a".to_string())));
    // A damaged record is an error that says how to recover, not a guess.
    std::fs::write(dir.path().join("shipping").join("sink_since.json"), b"{").unwrap();
    let err = sink_since(dir.path(), "b", Some(&floor(300, "b"))).unwrap_err();
    assert!(err.contains("put the file back, or remove it"), "{err}");
}

/// A filesystem sink whose listings wait until `gate` opens: a whole-sink check of a sink so
/// large that listing it takes a long time.
#[derive(Debug)]
struct GatedListing {
    inner: object_store::local::LocalFileSystem,
    gate: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    /// Listings started.
    listings: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Display for GatedListing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gated({})", self.inner)
    }
}

#[async_trait::async_trait]
impl object_store::ObjectStore for GatedListing {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn delete(&self, location: &object_store::path::Path) -> object_store::Result<()> {
        self.inner.delete(location).await
    }

    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures_util::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        use futures_util::StreamExt as _;
        self.listings.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut gate = self.gate.subscribe();
        let inner = self.inner.list(prefix);
        futures_util::stream::once(async move {
            let _ = gate.wait_for(|open| *open).await;
            inner
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
    ) -> object_store::Result<()> {
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
    ) -> object_store::Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}

/// A whole-sink check lists the entire sink, which can take long on a large one: shipping
/// goes on meanwhile, and the check completes once the listing does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipping_goes_on_while_a_whole_sink_check_lists_a_slow_sink() {
    use gatehouse_core::config::{CheckpointConfig, ShippingConfig};
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let (key, keys) = signing_key(dir.path());
    let sink_dir = dir.path().join("sink");
    let cfg = RecorderConfig {
        dir: dir.path().join("log"),
        durability: Durability::Sync,
        max_batch: 64,
        checkpoints: Some(CheckpointConfig {
            key,
            every_events: 2,
            every_secs: 3600,
        }),
        shipping: Some(ShippingConfig {
            sink: format!("file://{}", sink_dir.display()),
            endpoint: None,
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            interval_secs: 1,
            backlog_alert_events: 1_000,
            encryption_key: None,
            keep_local_secs: None,
            retention_interval_secs: 1,
            sink_check_interval_secs: 1,
            sink_expires: false,
            sink_lost_accepted: Vec::new(),
        }),
        literals: Default::default(),
        results: Default::default(),
    };
    let rec = Recorder::open(&cfg).unwrap();
    let mut shipper = crate::Shipper::from_config(&cfg, rec.clone()).unwrap().unwrap();
    let gate = Arc::new(tokio::sync::watch::channel(false).0);
    let listings = Arc::new(std::sync::atomic::AtomicU64::new(0));
    shipper.replace_store(Arc::new(GatedListing {
        inner: object_store::local::LocalFileSystem::new_with_prefix(&sink_dir).unwrap(),
        gate: gate.clone(),
        listings: listings.clone(),
    }));
    let shipper = Arc::new(shipper);
    let status = shipper.status();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn({
        let shipper = shipper.clone();
        async move {
            shipper
                .run(async {
                    let _ = stop_rx.await;
                })
                .await
        }
    });
    // The first retention pass lists the whole sink, and its listing hangs.
    wait_until("the whole-sink check to start listing", || {
        listings.load(Ordering::SeqCst) > 0
    })
    .await;
    assert_eq!(status.sink_checks.load(Ordering::SeqCst), 0);
    // Meanwhile events keep being recorded, and shipped.
    for i in 0..6 {
        rec.append(notice("s", &format!("during the listing {i}")))
            .await
            .unwrap();
    }
    let last = rec.stats().last_seq;
    wait_until("the new events to be shipped during the listing", || {
        status.acked_seq.load(Ordering::SeqCst) >= last - 1
    })
    .await;
    assert_eq!(
        status.sink_checks.load(Ordering::SeqCst),
        0,
        "the listing still hangs"
    );
    // Once the listing ends, the check completes (and later ones follow).
    gate.send_replace(true);
    wait_until("the whole-sink check to complete", || {
        status.sink_checks.load(Ordering::SeqCst) > 0
    })
    .await;
    assert!(status.sink_lost().is_empty());
    let _ = stop_tx.send(());
    task.await.unwrap();
    rec.shutdown();
    let report = crate::verify_sink(
        &crate::Sink::from_config(cfg.shipping.as_ref().unwrap()).unwrap(),
        &keys,
    )
    .await
    .unwrap();
    assert!(report.is_ok(), "{report:?}");
}
