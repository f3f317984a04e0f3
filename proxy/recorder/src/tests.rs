#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use gatehouse_core::config::{Durability, RecorderConfig};

use crate::{EventBody, LogReader, NewEvent, Recorder, RecorderError};

fn notice(session: &str, msg: &str) -> NewEvent {
    NewEvent {
        time_us: 1,
        session_id: session.into(),
        principal: None,
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
    })
    .unwrap();
    assert_eq!(rec.append(notice("s", "a")).await.unwrap(), 1);

    rec.fail_next_batches(1);
    let err = rec.append(notice("s", "lost")).await.unwrap_err();
    assert!(matches!(err, RecorderError::Write(_)), "{err}");
    assert_eq!(rec.stats().last_seq, 1);
    assert_eq!(rec.stats().failed, 1);

    // The recorder reopens the database and continues the chain from the durable head.
    assert_eq!(rec.append(notice("s", "b")).await.unwrap(), 2);
    rec.fail_next_batches(1);
    rec.append_nowait(notice("s", "lost too"));
    for _ in 0..500 {
        if rec.stats().failed == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(rec.stats().failed, 2);
    assert_eq!(rec.append(notice("s", "c")).await.unwrap(), 3);
    rec.shutdown();
    let st = rec.stats();
    assert_eq!((st.appended, st.failed, st.last_seq), (3, 2, 3));

    let r = LogReader::open(dir.path()).unwrap();
    assert!(r.verify_chain().unwrap().is_ok());
    let msgs: Vec<String> = r
        .events(1, 10)
        .unwrap()
        .into_iter()
        .map(|e| match e.body {
            EventBody::Notice { message, .. } => message,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(msgs, ["a", "b", "c"]);
}

#[tokio::test]
async fn invalid_event_is_refused_alone() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(&RecorderConfig {
        dir: dir.path().to_path_buf(),
        durability: Durability::Buffered,
        max_batch: 16,
    })
    .unwrap();
    let err = rec.append(notice("bad\0id", "x")).await.unwrap_err();
    assert!(matches!(err, RecorderError::Invalid(_)), "{err}");
    assert_eq!(rec.append(notice("ok", "y")).await.unwrap(), 1);
    assert_eq!(rec.stats().failed, 1);
}
