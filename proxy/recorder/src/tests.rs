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
    let rec = Recorder::open(&RecorderConfig {
        dir: dir.path().to_path_buf(),
        durability: Durability::Buffered,
        max_batch: 16,
        checkpoints: None,
        shipping: None,
        literals: Default::default(),
        results: Default::default(),
    })
    .unwrap();
    let err = rec.append(notice("bad\0id", "x")).await.unwrap_err();
    assert!(matches!(err, RecorderError::Invalid(_)), "{err}");
    assert_eq!(rec.append(notice("ok", "y")).await.unwrap(), 1);
    assert_eq!(rec.stats().failed, 1);
}
