//! Restoring a log from what was shipped (`gatehouse audit restore`).
//!
//! Local retention deletes what the sink acknowledged, so after a while the gateway's own log
//! no longer reaches back to the window an audit asks about (a year, where the gateway keeps a
//! month), and a lost host takes its log with it. The sink still holds every segment from
//! event 1. [`restore_from_sink`] reads them into a new local log, byte for byte as shipped,
//! with their checkpoints, and builds what the writer would have built alongside: the chain
//! head, session summaries and the search indexes. Every `--log` command then works on it:
//! `verify`, `search`, `sessions`, `show`, `replay`, `events`, `export` (a bundle for any
//! window the sink holds) and `policy whatif`.
//!
//! A sink that expires its oldest segments itself (`sink_expires`, an S3 lifecycle rule) no
//! longer holds event 1: it is restored from the first segment it holds, and the restored log
//! records where it starts ([`crate::RestoredStart`]). That record is not signed (a restore
//! holds no private key), so `verify --log` on such a log says where it starts and why, and
//! gives *incomplete*, never *intact*; `verify --shipped` on the sink is the evidence.
//!
//! Nothing is restored that does not verify: the segments go through the same walk as
//! `audit verify --shipped` while they are copied (one read of the sink), into a new directory
//! beside the output, which is renamed into place only when the walk found the shipped log
//! intact, signed to its end by the keys given. Otherwise that directory is removed and the
//! report says why. (A restore killed midway leaves its `.NAME.restoring-…` directory; a
//! later restore never touches it.) A restored log is an ordinary log: `verify --log` checks it again from
//! its own contents.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rocksdb::{DB, WriteBatch, WriteOptions};

use crate::checkpoint::PublicKeys;
use crate::error::RecorderError;
use crate::indexer::{Indexer, Shared};
use crate::ship::{Sink, finish_sink, walk_sink};
use crate::store::{
    self, CF_CHECKPOINTS, CF_EVENTS, CF_META, META_HEAD, META_RESTORED_START, RestoredStart, StoredHead,
    seq_key,
};
use crate::summaries;
use crate::verify::{Outcome, TailPolicy, VerifyReport, Walk};

/// How long index building may go without progress before the restore stops waiting for it
/// (the log is complete either way: searches read what is not indexed).
const INDEX_STALL: Duration = Duration::from_secs(60);

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    /// The shipped log's verification, made while it was copied.
    pub report: VerifyReport,
    /// Its verdict (events after the last checkpoint are never tolerated).
    pub outcome: Outcome,
    /// Whether the output directory now holds the log: only when `outcome` is intact.
    pub written: bool,
    /// Seq through which the search indexes were built (the head, unless building stalled).
    pub indexed_seq: u64,
}

/// Restore the log shipped to `sink` into the new directory `out` (it must not exist, or be
/// an empty directory), if it verifies with `keys`: see the module documentation. An `Err`
/// means the output is not usable ([`RecorderError::Invalid`]), the sink could not be read,
/// or the log not written; a shipped log that does not verify is an `Ok` with
/// `written: false`.
pub async fn restore_from_sink(
    sink: &Sink,
    keys: &PublicKeys,
    out: &Path,
) -> Result<Restored, RecorderError> {
    let unusable = |why: &str| RecorderError::Invalid(format!("{}: {why}", out.display()));
    match std::fs::symlink_metadata(out) {
        Ok(m) if m.file_type().is_symlink() => return Err(unusable("is a symbolic link")),
        Ok(m) if !m.is_dir() => return Err(unusable("is not a directory")),
        Ok(_) => {
            let mut entries = std::fs::read_dir(out).map_err(|e| unusable(&e.to_string()))?;
            if entries.next().is_some() {
                return Err(unusable("the output directory is not empty"));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(unusable(&e.to_string())),
    }
    let (parent, partial) = partial_dir(out)?;
    let result = match restore_into(sink, keys, &partial).await {
        Ok(r) if r.written => {
            // (`out` is empty if it exists, checked above.)
            let emptied = if out.exists() {
                std::fs::remove_dir(out)
            } else {
                Ok(())
            };
            match emptied.and_then(|()| std::fs::rename(&partial, out)) {
                Ok(()) => {
                    // The rename is durable once the directory holding it is synced; the log
                    // is in place (and verified) either way.
                    if let Err(e) = std::fs::File::open(&parent).and_then(|d| d.sync_all()) {
                        tracing::warn!(path = %parent.display(), error = %e, "cannot sync the directory of the restored log");
                    }
                    return Ok(r);
                }
                Err(e) => Err(RecorderError::Open {
                    path: out.display().to_string(),
                    message: e.to_string(),
                }),
            }
        }
        other => other,
    };
    if let Err(e) = std::fs::remove_dir_all(&partial) {
        tracing::warn!(path = %partial.display(), error = %e, "cannot remove an unfinished restore");
    }
    result
}

/// `out`'s parent, and a new directory in it where the log is built:
/// `.NAME.restoring-PID-NANOS`, created here (never one that existed: a restore running
/// beside this one, or left by one that was killed, is not touched).
fn partial_dir(out: &Path) -> Result<(PathBuf, PathBuf), RecorderError> {
    let open_err = |path: &Path, e: std::io::Error| RecorderError::Open {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let name = out
        .file_name()
        .ok_or_else(|| RecorderError::Invalid(format!("{}: names no directory", out.display())))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| open_err(&parent, e))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let partial = parent.join(format!(
        ".{}.restoring-{}-{nanos}",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::create_dir(&partial).map_err(|e| open_err(&partial, e))?;
    Ok((parent, partial))
}

async fn restore_into(sink: &Sink, keys: &PublicKeys, dir: &Path) -> Result<Restored, RecorderError> {
    let db = Arc::new(store::open_rw(dir)?);
    // The directory only counts once it is complete and renamed: one fsync at the end.
    let wo = WriteOptions::default();
    let (cf_events, cf_checkpoints) = (store::cf(&db, CF_EVENTS)?, store::cf(&db, CF_CHECKPOINTS)?);
    let mut walk = Walk::new(keys, Vec::new(), 1);
    // What the first event restored links to: where a restore of an expiring sink starts.
    let mut first_prev: Option<String> = None;
    let others = walk_sink(sink, &mut walk, |checkpoint, events| {
        if first_prev.is_none()
            && let Some((_, stored)) = events.first()
        {
            #[derive(serde::Deserialize)]
            struct Prev {
                prev_hash: String,
            }
            // Unreadable: the walk reported the event, and nothing is written.
            first_prev = serde_json::from_slice::<Prev>(stored).ok().map(|p| p.prev_hash);
        }
        let mut wb = WriteBatch::default();
        for (seq, stored) in events {
            wb.put_cf(cf_events, seq_key(*seq), stored);
        }
        // A segment's checkpoint covers its last event (as the shipper cuts them); the walk
        // checks no other, so no other is kept.
        if let Some(cp) = checkpoint
            && events.last().is_some_and(|(seq, _)| *seq == cp.seq)
        {
            let v = serde_json::to_vec(cp).map_err(|e| RecorderError::Encode(e.to_string()))?;
            wb.put_cf(cf_checkpoints, seq_key(cp.seq), v);
        }
        db.write_opt(wb, &wo)
            .map_err(|e| RecorderError::Write(e.to_string()))
    })
    .await?;
    let report = finish_sink(walk, others);
    let outcome = report.outcome(TailPolicy::Strict);
    if outcome != Outcome::Intact {
        return Ok(Restored {
            report,
            outcome,
            written: false,
            indexed_seq: 0,
        });
    }
    // The head, as the writer keeps it with every commit.
    let head = StoredHead {
        seq: report.last_seq,
        hash: report.last_hash.clone(),
    };
    let v = serde_json::to_vec(&head).map_err(|e| RecorderError::Encode(e.to_string()))?;
    let meta = store::cf(&db, CF_META)?;
    db.put_cf(meta, META_HEAD, v)
        .map_err(|e| RecorderError::Write(e.to_string()))?;
    if let Some(first_seq) = report.expired_before {
        // (An intact walk read the first event, so its link was read too.)
        let start = RestoredStart {
            first_seq,
            prev_hash: first_prev.unwrap_or_default(),
            sink: sink.url().to_string(),
            restored_us: gatehouse_core::time::now_micros(),
        };
        let v = serde_json::to_vec(&start).map_err(|e| RecorderError::Encode(e.to_string()))?;
        db.put_cf(meta, META_RESTORED_START, v)
            .map_err(|e| RecorderError::Write(e.to_string()))?;
    }
    // What the writer and its indexer build alongside the events.
    summaries::rebuild(&db, head.seq)?;
    store::reset_index_if_unsound(&db)?;
    let indexed_seq = build_indexes(&db, head.seq).await;
    db.flush_wal(true)
        .map_err(|e| RecorderError::Write(e.to_string()))?;
    // Every command then opens the restored log from its tables, with no WAL to replay (it
    // is complete either way).
    if let Err(e) = store::flush_all(&db) {
        tracing::warn!(error = %e, "cannot flush the restored log: opening it replays its WAL");
    }
    // Every handle is gone before the directory is renamed.
    match Arc::try_unwrap(db) {
        Ok(db) => drop(db),
        Err(_) => {
            return Err(RecorderError::Write(
                "the restored log is still in use".to_string(),
            ));
        }
    }
    Ok(Restored {
        report,
        outcome,
        written: true,
        indexed_seq,
    })
}

/// Build the search indexes of events 1..=`head` with the recorder's own indexer; returns how
/// far it got (it stops waiting when building makes no progress for [`INDEX_STALL`]).
async fn build_indexes(db: &Arc<DB>, head: u64) -> u64 {
    let shared = Arc::new(Shared::new(db.clone(), store::indexed_through(db), head));
    let mut indexer = match Indexer::start(shared.clone()) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, "the restored log is not indexed: searches read it whole");
            return 0;
        }
    };
    let mut progress = (shared.indexed.load(Ordering::Acquire), Instant::now());
    loop {
        let now = shared.indexed.load(Ordering::Acquire);
        if now >= head {
            break;
        }
        if now != progress.0 {
            progress = (now, Instant::now());
        } else if progress.1.elapsed() > INDEX_STALL {
            tracing::warn!(
                indexed = now,
                head,
                "building the restored log's search indexes stalled: searches read the rest"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    indexer.stop();
    drop(indexer);
    shared.set_db(None);
    shared.indexed.load(Ordering::Acquire)
}
