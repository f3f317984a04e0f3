//! The write side: [`Recorder`] and its group-commit writer thread.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gatehouse_core::config::{Durability, RecorderConfig};
use rocksdb::{DB, WriteBatch, WriteOptions};
use tokio::sync::oneshot;

use crate::checkpoint::CheckpointSigner;
use crate::error::RecorderError;
use crate::event::{Event, EventBody, NewEvent, canonical_from_stored, seal};
use crate::indexer::{self, Committed, Indexer};
use crate::store::{
    self, CF_BY_SESSION, CF_CHECKPOINTS, CF_EVENTS, CF_META, CF_SESSIONS, Floor, Head, META_FLOOR, META_HEAD,
    META_RETAINING, SessionSummary, StoredHead, by_session_key, seq_from_key, seq_key,
};
use crate::summaries::{self, META_SUMMARIES, SUMMARY_FLUSH};

/// Open sessions whose summaries the writer keeps in memory; past this it starts over
/// (summaries are re-read from the database on demand).
const SUMMARY_CACHE_MAX: usize = 65_536;

type Waiter = oneshot::Sender<Result<u64, RecorderError>>;

struct Pending {
    ev: NewEvent,
    done: Option<Waiter>,
}

/// What the writer thread is asked to do.
// Events go by value, as before there were other messages: boxing them would add an
// allocation per event on the hot path to save bytes in a queue of rare retention requests.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Event(Pending),
    /// Local retention: delete the events up to a checkpoint (see [`Recorder::retain_through`]).
    Retain(Box<RetainRequest>),
}

struct RetainRequest {
    seq: u64,
    sink: String,
    done: oneshot::Sender<Result<u64, RecorderError>>,
}

/// Events whose summaries (and by-session entries of earlier versions) one retention step
/// deletes: small enough that a step never holds up a waiting append for long.
const RETAIN_STEP_EVENTS: u64 = 500;
/// Search index terms (a directory entry and a posting list each) one retention step
/// deletes, in whole blocks (see `search.rs`); at least one block.
const RETAIN_STEP_TERMS: usize = 4096;
/// Under load, at most one retention step this often (when idle, steps run back to back).
const RETAIN_STEP_EVERY: Duration = Duration::from_millis(5);

/// A retention deletion in progress: a marker (readers treat it as the floor), then index
/// entries, a few hundred events at a time between group commits; then, in one atomic batch,
/// the events themselves, the older checkpoints and the new floor. An interruption (crash,
/// shutdown) leaves the events and the marker in place; the next start finishes the job.
struct RetainJob {
    floor: Floor,
    /// The next event whose index entries to delete.
    next: u64,
    /// The next search index block to look at.
    next_block: u64,
    /// Previous floor (0: none).
    from: u64,
    /// Sessions whose summary was checked; a cache, cleared past [`RETAIN_SESSIONS_CACHE`].
    sessions: std::collections::HashSet<String>,
    /// Whether the by-session index of earlier versions has entries (looked at once per job:
    /// once emptied, only tombstones are left to step over until compaction).
    legacy_by_session: Option<bool>,
    last_step: Instant,
    /// Who waits for the outcome (none for a job resumed after a restart).
    done: Option<oneshot::Sender<Result<u64, RecorderError>>>,
}

/// Most sessions a retention job remembers having checked.
const RETAIN_SESSIONS_CACHE: usize = 10_000;

/// Counters, readable at any time (e.g. for `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecorderStats {
    /// Events made durable since open.
    pub appended: u64,
    /// Events that could not be recorded (write failures, appends after shutdown).
    pub failed: u64,
    /// Successful group commits (one WriteBatch each).
    pub batches: u64,
    /// Seq of the last event written (0: empty log).
    pub last_seq: u64,
    /// Seq through which the log is durable: fsynced (sync durability; it trails `last_seq`
    /// by the batches whose fsync is in flight) or written (buffered). The shipper ships no
    /// further.
    pub durable_seq: u64,
    /// Events enqueued and not yet committed or failed.
    pub pending: u64,
    /// Seq through which the search indexes are written (they trail `last_seq`; searches read
    /// the events past it).
    pub indexed_seq: u64,
    /// Committed batches the indexer's queue was too full to take (it read them back from the
    /// log instead: a sign it falls behind).
    pub index_dropped_batches: u64,
}

#[derive(Default)]
struct Counters {
    appended: AtomicU64,
    failed: AtomicU64,
    batches: AtomicU64,
    last_seq: AtomicU64,
    durable_seq: AtomicU64,
    /// Sync jobs queued or in flight (the syncer is idle at 0).
    sync_jobs: AtomicU64,
    pending: AtomicU64,
    closed_logged: AtomicBool,
    /// Set with `sync_failure` by the syncer; the writer records it in the log.
    sync_failed: AtomicBool,
    sync_failure: Mutex<Option<SyncFailure>>,
    /// Test hook: fail this many upcoming batches as if the write had failed.
    #[cfg(test)]
    fail_batches: AtomicU64,
    /// Test hook: counters-only summary changes are not flushed (as if the writer crashed
    /// before their flush), not even at shutdown.
    #[cfg(test)]
    hold_summaries: AtomicBool,
    /// Test hook: the syncer waits before each fsync while this is set (and the writer
    /// always hands fsyncs to it).
    #[cfg(test)]
    hold_sync: AtomicBool,
    /// Test hook: fail this many upcoming fsyncs.
    #[cfg(test)]
    fail_syncs: AtomicU64,
}

struct Inner {
    tx: RwLock<Option<Sender<Msg>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    counters: Arc<Counters>,
    index: Arc<indexer::Shared>,
}

/// The write side of the event log. Cheap to clone; all clones share one writer thread.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("stats", &self.stats()).finish()
    }
}

impl Recorder {
    /// Open (creating if needed) the log in `cfg.dir`, recover the chain head and start the
    /// writer thread.
    pub fn open(cfg: &RecorderConfig) -> Result<Recorder, RecorderError> {
        let open_err = |message: String| RecorderError::Open {
            path: cfg.dir.display().to_string(),
            message,
        };
        let checkpoints = match &cfg.checkpoints {
            None => None,
            Some(c) => {
                let pem = c
                    .key
                    .resolve()
                    .map_err(|e| open_err(format!("checkpoint signing key: {e}")))?;
                let signer = CheckpointSigner::from_pem(&pem)
                    .map_err(|e| open_err(format!("checkpoint signing key: {e}")))?;
                let every = Duration::from_secs(c.every_secs.max(1));
                Some(Checkpoints {
                    signer,
                    every_events: c.every_events.max(1),
                    every,
                    seq: 0,
                    // As if the last checkpoint were an interval old: the first commit after
                    // (re)start is signed at once, so a verifier never finds a running
                    // gateway's tail without a recent signature to anchor it.
                    at: Instant::now().checked_sub(every).unwrap_or_else(Instant::now),
                    retry_at: None,
                })
            }
        };
        let db = Arc::new(store::open_rw(&cfg.dir)?);
        store::reset_index_if_unsound(&db)?;
        let head = store::recover_head(&db)?;
        summaries::catch_up(&db, head.seq)?;
        let index = Arc::new(indexer::Shared::new(
            db.clone(),
            store::indexed_through(&db).min(head.seq),
            head.seq,
        ));
        let mut checkpoints = checkpoints;
        if let Some(c) = &mut checkpoints {
            c.seq = store::last_checkpoint_seq(&db)?;
        }
        let counters = Arc::new(Counters::default());
        counters.last_seq.store(head.seq, Ordering::Relaxed);
        counters.durable_seq.store(head.seq, Ordering::Relaxed);
        let sync = cfg.durability == Durability::Sync;
        let syncer = if sync {
            Some(Syncer::start(counters.clone())?)
        } else {
            None
        };
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            dir: cfg.dir.clone(),
            db: Some(db),
            head,
            sync,
            max_batch: cfg.max_batch.max(1),
            counters: counters.clone(),
            summaries: HashMap::new(),
            dirty: HashSet::new(),
            summaries_flushed: Instant::now(),
            outage: None,
            backlog: VecDeque::new(),
            unsynced: None,
            checkpoints,
            retain: None,
            indexer: Indexer::start(index.clone())?,
            syncer,
            batch_event_bytes: 768,
        };
        let mut writer = writer;
        writer.resume_retention();
        let key_id = writer.checkpoints.as_ref().map(|c| c.signer.key_id().to_string());
        let thread = std::thread::Builder::new()
            .name("gatehouse-recorder".to_string())
            .spawn(move || writer.run(rx))
            .map_err(|e| RecorderError::Open {
                path: cfg.dir.display().to_string(),
                message: format!("cannot start the writer thread: {e}"),
            })?;
        tracing::info!(
            dir = %cfg.dir.display(),
            last_seq = head.seq,
            durability = ?cfg.durability,
            checkpoint_key = key_id.as_deref().unwrap_or("none (checkpoints off)"),
            "event log opened"
        );
        Ok(Recorder {
            inner: Arc::new(Inner {
                tx: RwLock::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
                counters,
                index,
            }),
        })
    }

    fn enqueue(&self, p: Pending) -> Result<(), RecorderError> {
        let c = &self.inner.counters;
        let guard = self.inner.tx.read().map_err(|_| RecorderError::Closed)?;
        let tx = guard.as_ref().ok_or(RecorderError::Closed)?;
        c.pending.fetch_add(1, Ordering::Relaxed);
        tx.send(Msg::Event(p)).map_err(|_| {
            c.pending.fetch_sub(1, Ordering::Relaxed);
            RecorderError::Closed
        })
    }

    /// Record `ev` and wait until it is durable (Sync: WAL fsynced; Buffered: written to the
    /// WAL without fsync). Returns its seq. An error means the event is not recorded and the
    /// caller must refuse the operation.
    pub async fn append(&self, ev: NewEvent) -> Result<u64, RecorderError> {
        let (done, rx) = oneshot::channel();
        if let Err(e) = self.enqueue(Pending { ev, done: Some(done) }) {
            self.inner.counters.failed.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        // A dropped waiter means the writer thread is gone.
        rx.await.unwrap_or(Err(RecorderError::Closed))
    }

    /// Record `ev` without waiting (for results and session ends). Never blocks. A failure is
    /// counted in [`RecorderStats::failed`] and logged at error level by the recorder.
    pub fn append_nowait(&self, ev: NewEvent) {
        if self.enqueue(Pending { ev, done: None }).is_err() {
            let c = &self.inner.counters;
            c.failed.fetch_add(1, Ordering::Relaxed);
            if !c.closed_logged.swap(true, Ordering::Relaxed) {
                tracing::error!("event dropped: the recorder is shut down (further drops are only counted)");
            }
        }
    }

    /// Local retention: delete every event up to `seq`, which must be a signed checkpoint's;
    /// that checkpoint stays as the log's floor (see [`Floor`]) so what is left verifies.
    /// The caller (the shipper) has made sure `sink` holds those events. Returns how many
    /// events were deleted (0 if the floor already is at or past `seq`). Appends go on while
    /// it runs.
    pub async fn retain_through(&self, seq: u64, sink: &str) -> Result<u64, RecorderError> {
        let (done, rx) = oneshot::channel();
        {
            let guard = self.inner.tx.read().map_err(|_| RecorderError::Closed)?;
            let tx = guard.as_ref().ok_or(RecorderError::Closed)?;
            tx.send(Msg::Retain(Box::new(RetainRequest {
                seq,
                sink: sink.to_string(),
                done,
            })))
            .map_err(|_| RecorderError::Closed)?;
        }
        rx.await.unwrap_or(Err(RecorderError::Closed))
    }

    /// A live view of the log through the writer's own database (see [`LogReader::live`]);
    /// `None` while the writer reopens it after a failed write, or once it shut down.
    pub(crate) fn live_reader(&self) -> Option<crate::reader::LogReader> {
        let db = match self.inner.index.db.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        db.map(crate::reader::LogReader::live)
    }

    pub fn stats(&self) -> RecorderStats {
        let c = &self.inner.counters;
        RecorderStats {
            appended: c.appended.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            last_seq: c.last_seq.load(Ordering::Relaxed),
            durable_seq: c.durable_seq.load(Ordering::Acquire),
            pending: c.pending.load(Ordering::Relaxed),
            indexed_seq: self.inner.index.indexed.load(Ordering::Relaxed),
            index_dropped_batches: self.inner.index.dropped.load(Ordering::Relaxed),
        }
    }

    /// Commit everything already enqueued, fsync the WAL, stop the writer thread and close
    /// the database. Later appends fail with [`RecorderError::Closed`]. Blocks until the
    /// writer is done (normally a few milliseconds). Idempotent.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    #[cfg(test)]
    pub(crate) fn fail_next_batches(&self, n: u64) {
        self.inner.counters.fail_batches.store(n, Ordering::SeqCst);
    }

    /// Test hook: the committed batch holding `seq` is not handed to the indexer (as if its
    /// queue were full).
    #[cfg(test)]
    pub(crate) fn drop_index_batch(&self, seq: u64) {
        self.inner.index.drop_seq.store(seq, Ordering::SeqCst);
    }

    /// Test hook: see `Counters::hold_sync`.
    #[cfg(test)]
    pub(crate) fn hold_sync(&self, hold: bool) {
        self.inner.counters.hold_sync.store(hold, Ordering::SeqCst);
    }

    /// Test hook: fail the next `n` fsyncs of sync durability.
    #[cfg(test)]
    pub(crate) fn fail_next_syncs(&self, n: u64) {
        self.inner.counters.fail_syncs.store(n, Ordering::SeqCst);
    }

    /// Test hook: see `Counters::hold_summaries`.
    #[cfg(test)]
    pub(crate) fn hold_summaries(&self, hold: bool) {
        self.inner.counters.hold_summaries.store(hold, Ordering::SeqCst);
    }

    /// Test hook: while paused, the indexer throws away what the writer hands it.
    #[cfg(test)]
    pub(crate) fn pause_indexer(&self, paused: bool) {
        self.inner.index.paused.store(paused, Ordering::SeqCst);
    }
}

impl Inner {
    fn shutdown(&self) {
        // Dropping the only sender lets the writer drain the queue and exit.
        let tx = match self.tx.write() {
            Ok(mut g) => g.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        drop(tx);
        let handle = match self.thread.lock() {
            Ok(mut g) => g.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(h) = handle
            && h.join().is_err()
        {
            tracing::error!("the recorder writer thread panicked");
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Writer {
    dir: PathBuf,
    /// `None` after a failed write: the next batch reopens the database and recomputes the
    /// head from what is durable. Shared with the indexer, which holds it for one write or
    /// one chunk of a catch-up at a time.
    db: Option<Arc<DB>>,
    head: Head,
    sync: bool,
    max_batch: usize,
    counters: Arc<Counters>,
    /// Summaries of open sessions, as committed.
    summaries: HashMap<String, SessionSummary>,
    /// Sessions whose summary changed since it was last written, in counters only (see
    /// `summaries.rs`); always in `summaries`.
    dirty: HashSet<String>,
    /// When every pending summary was last written (with the mark).
    summaries_flushed: Instant,
    /// Outage bookkeeping, so a persistent failure is logged once (plus a periodic reminder),
    /// not once per batch.
    outage: Option<Outage>,
    /// Events nobody waited for (results, session ends, notices: things that already
    /// happened) from batches that failed, kept to be written first once the log is writable
    /// again. Bounded by [`BACKLOG_MAX`].
    backlog: VecDeque<NewEvent>,
    /// With sync durability: since when events nobody waits for (results, notices, session
    /// ends) have been written to the WAL without an fsync. They ride on the next fsync (the
    /// next awaited append's batch) or [`UNSYNCED_MAX`] later, whichever comes first.
    unsynced: Option<Instant>,
    /// Signed checkpoints, when configured.
    checkpoints: Option<Checkpoints>,
    /// A retention deletion in progress.
    retain: Option<RetainJob>,
    /// Writes the search indexes of committed batches, on its own thread.
    indexer: Indexer,
    /// Fsyncs the WAL and then acknowledges awaited appends, on its own thread (sync
    /// durability only).
    syncer: Option<Syncer>,
    /// Bytes per event the next batch reserves (learnt from the last one).
    batch_event_bytes: usize,
}

/// A batch that could not be written: why, and its events in order (`None` for one refused
/// on its own), so that those nobody waits for can be kept for a later write.
struct Failed {
    error: RecorderError,
    events: Vec<Option<NewEvent>>,
}

/// How soon a failed fsync is tried again (batches keep being written meanwhile).
const SYNC_RETRY: Duration = Duration::from_secs(1);

/// A committed batch whose appends wait for the fsync of the WAL (sync durability).
struct SyncJob {
    db: Arc<DB>,
    /// Head after the batch: the fsync makes everything through it durable.
    through: u64,
    /// Awaited appends of the batch, with their seqs.
    acks: Vec<(Waiter, u64)>,
}

/// Fsyncs that failed since the writer last recorded one (see [`Syncer`]).
struct SyncFailure {
    since_us: i64,
    /// Events written and not known to be durable: `first..=through`.
    first: u64,
    through: u64,
    /// Appends told that they failed (their operations were refused).
    refused: u64,
    error: String,
}

/// The second stage of sync durability's group commit. The writer writes a batch to the WAL
/// without an fsync and hands its awaited appends here; this thread fsyncs and then
/// acknowledges them. Meanwhile the writer goes on with the next batch, so the fsync no
/// longer stalls the writer; batches written during an fsync share the next one.
///
/// An acknowledgement still means the event's WAL record is on disk. Readers (the indexer, a
/// shipper) can see a batch before its fsync, as with buffered durability; the shipper ships
/// no further than [`RecorderStats::durable_seq`].
struct Syncer {
    tx: Option<Sender<SyncJob>>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    fn start(counters: Arc<Counters>) -> Result<Syncer, RecorderError> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("gatehouse-fsync".to_string())
            .spawn(move || sync_loop(&rx, &counters))
            .map_err(|e| RecorderError::Write(format!("cannot start the fsync thread: {e}")))?;
        Ok(Syncer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queue a job; it comes back when the thread is gone (it only stops at shutdown).
    fn send(&self, job: SyncJob) -> Result<(), SyncJob> {
        match &self.tx {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }

    /// Fsync and acknowledge everything queued, then stop the thread.
    fn stop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the event log's fsync thread panicked");
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn sync_loop(rx: &Receiver<SyncJob>, counters: &Counters) {
    // After a failed fsync: the log to try again (weakly held: a reopen must be able to close
    // it), and how far it was written.
    let mut retry: Option<(Weak<DB>, u64)> = None;
    let mut jobs: Vec<SyncJob> = Vec::new();
    loop {
        let first = if retry.is_some() {
            match rx.recv_timeout(SYNC_RETRY) {
                Ok(j) => Some(j),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(j) => Some(j),
                Err(_) => break,
            }
        };
        jobs.extend(first);
        while let Ok(j) = rx.try_recv() {
            jobs.push(j);
        }
        // One fsync per log: after a reopen, jobs of the closed one can still be queued.
        let mut dbs: Vec<Arc<DB>> = Vec::new();
        for j in &jobs {
            if !dbs.iter().any(|d| Arc::ptr_eq(d, &j.db)) {
                dbs.push(j.db.clone());
            }
        }
        let mut through = jobs.iter().map(|j| j.through).max().unwrap_or(0);
        if let Some((db, seq)) = &retry {
            through = through.max(*seq);
            if let Some(db) = db.upgrade()
                && !dbs.iter().any(|d| Arc::ptr_eq(d, &db))
            {
                dbs.push(db);
            }
        }
        if dbs.is_empty() {
            // The log that failed was closed since; its reopen recovered what is on disk.
            retry = None;
            continue;
        }
        let res = dbs.iter().try_for_each(|db| fsync(db, counters));
        let newest = dbs.last().map(Arc::downgrade);
        drop(dbs);
        let n = jobs.len() as u64;
        match res {
            Ok(()) => {
                if retry.take().is_some() {
                    tracing::info!(durable_seq = through, "event log fsync works again");
                }
                counters.durable_seq.fetch_max(through, Ordering::Release);
                for j in jobs.drain(..) {
                    for (done, seq) in j.acks {
                        // The waiter may have gone away (client disconnected); nothing to do.
                        let _ = done.send(Ok(seq));
                    }
                }
            }
            Err(e) => {
                let refused: u64 = jobs.iter().map(|j| j.acks.len() as u64).sum();
                counters.failed.fetch_add(refused, Ordering::Relaxed);
                if retry.is_none() {
                    tracing::error!(
                        error = %e,
                        refused,
                        through,
                        "cannot fsync the event log; awaited appends are refused until it works"
                    );
                }
                note_sync_failure(counters, through, refused, &e);
                retry = newest.map(|db| (db, through));
                let err = RecorderError::Write(format!("cannot fsync the event log: {e}"));
                for j in jobs.drain(..) {
                    for (done, _) in j.acks {
                        let _ = done.send(Err(err.clone()));
                    }
                }
            }
        }
        counters.sync_jobs.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Hand a failed fsync to the writer, which records it in the log (merged with earlier ones
/// it has not recorded yet).
fn note_sync_failure(counters: &Counters, through: u64, refused: u64, error: &str) {
    let first = counters.durable_seq.load(Ordering::Acquire) + 1;
    let mut g = counters
        .sync_failure
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    match g.as_mut() {
        Some(f) => {
            f.through = f.through.max(through);
            f.refused += refused;
        }
        None => {
            *g = Some(SyncFailure {
                since_us: gatehouse_core::time::now_micros(),
                first,
                through,
                refused,
                error: error.to_string(),
            })
        }
    }
    counters.sync_failed.store(true, Ordering::Release);
}

fn fsync(db: &DB, counters: &Counters) -> Result<(), String> {
    #[cfg(test)]
    {
        while counters.hold_sync.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        if counters
            .fail_syncs
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err("injected fsync failure".to_string());
        }
    }
    #[cfg(not(test))]
    let _ = counters;
    db.flush_wal(true).map_err(|e| e.to_string())
}

struct Checkpoints {
    signer: CheckpointSigner,
    every_events: u64,
    every: Duration,
    /// Seq covered by the last checkpoint written (0: none yet).
    seq: u64,
    /// When it was written (or the writer started).
    at: Instant,
    /// After a failed checkpoint write: not before this.
    retry_at: Option<Instant>,
}

impl Checkpoints {
    /// When the chain head at `head` should be signed: now (`Some(ZERO)`), later, or never
    /// (nothing new to sign).
    fn due_in(&self, head: u64) -> Option<Duration> {
        if head <= self.seq {
            None
        } else if let Some(t) = self.retry_at
            && t > Instant::now()
        {
            Some(t - Instant::now())
        } else if head - self.seq >= self.every_events {
            Some(Duration::ZERO)
        } else {
            Some(self.every.saturating_sub(self.at.elapsed()))
        }
    }
}

/// Longest time an unawaited event stays written but not fsynced (sync durability). A process
/// crash loses none of them (they are in the OS once written); a power loss, at most this.
const UNSYNCED_MAX: Duration = Duration::from_millis(100);

struct Outage {
    since: Instant,
    since_us: i64,
    last_logged: Instant,
    /// Events refused since the last log line.
    unlogged: u64,
    total: u64,
    /// Appends whose caller was told they failed (the operation was refused).
    refused: u64,
    /// Events that did not fit the backlog and are lost.
    dropped: u64,
}

/// At most this many unacknowledged events are kept for a late write during an outage.
const BACKLOG_MAX: usize = 100_000;

/// Session id of gateway-wide events that belong to no client session.
pub const GATEWAY_SESSION: &str = "gatehouse";

/// While writes keep failing, remind at most this often.
const OUTAGE_REMINDER: Duration = Duration::from_secs(30);

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let sync_in = self
                .unsynced
                .map(|since| UNSYNCED_MAX.saturating_sub(since.elapsed()));
            let checkpoint_in = self.checkpoints.as_ref().and_then(|c| c.due_in(self.head.seq));
            // A retention job in progress: poll, and step whenever nothing is waiting (once the
            // indexer has indexed what the job deletes the index entries of).
            let retain_in = self.retain.as_ref().map(|_| {
                if self.retain_ready() {
                    Duration::ZERO
                } else {
                    Duration::from_millis(10)
                }
            });
            let summaries_in = (!self.dirty.is_empty())
                .then(|| SUMMARY_FLUSH.saturating_sub(self.summaries_flushed.elapsed()));
            let wait = match (sync_in, checkpoint_in, retain_in, summaries_in) {
                (None, None, None, None) => None,
                (a, b, c, d) => a.into_iter().chain(b).chain(c).chain(d).min(),
            };
            let msg = match wait {
                None => match rx.recv() {
                    Ok(p) => p,
                    Err(_) => break,
                },
                Some(wait) => match rx.recv_timeout(wait) {
                    Ok(p) => p,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if self.retain_ready() {
                            self.retain_step();
                        }
                        if self
                            .checkpoints
                            .as_ref()
                            .and_then(|c| c.due_in(self.head.seq))
                            .is_some_and(|d| d.is_zero())
                        {
                            // Idle with unsigned events: sign the head on its own.
                            self.checkpoint_now();
                        }
                        if !self.dirty.is_empty() && self.summaries_flushed.elapsed() >= SUMMARY_FLUSH {
                            self.flush_summaries();
                        }
                        if self.unsynced.is_some_and(|t| t.elapsed() >= UNSYNCED_MAX) {
                            self.sync_wal();
                        }
                        if self.counters.sync_failed.load(Ordering::Acquire) {
                            self.record_sync_failure();
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
            };
            let mut batch = Vec::with_capacity(64);
            match msg {
                Msg::Event(p) => batch.push(p),
                Msg::Retain(r) => self.start_retention(r.seq, r.sink, Some(r.done)),
            }
            while batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(Msg::Event(p)) => batch.push(p),
                    Ok(Msg::Retain(r)) => self.start_retention(r.seq, r.sink, Some(r.done)),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            // A failed fsync is recorded ahead of the next events (the syncer noted it while
            // this thread waited for them).
            if self.counters.sync_failed.load(Ordering::Acquire) {
                self.record_sync_failure();
            }
            if !batch.is_empty() {
                self.counters
                    .pending
                    .fetch_sub(batch.len() as u64, Ordering::Relaxed);
                self.commit(batch);
            }
            if self
                .retain
                .as_ref()
                .is_some_and(|j| j.last_step.elapsed() >= RETAIN_STEP_EVERY)
                && self.retain_ready()
            {
                self.retain_step();
            }
        }
        // Every awaited append is answered (after its fsync) before the rest closes.
        if let Some(s) = &mut self.syncer {
            s.stop();
        }
        if self.counters.sync_failed.load(Ordering::Acquire) {
            self.record_sync_failure();
        }
        // The indexer writes what was handed to it (a long catch-up stops at its next chunk
        // and the next start goes on); then only this thread holds the database, which closes
        // when it ends.
        self.indexer.stop();
        self.indexer.shared.set_db(None);
        if let Some(d) = self.retain.take().and_then(|j| j.done) {
            let _ = d.send(Err(RecorderError::Closed));
        }
        if !self.dirty.is_empty() {
            self.flush_summaries();
        }
        // Sign whatever the last checkpoint does not cover yet, so a cleanly closed log is
        // signed to its end.
        if self
            .checkpoints
            .as_ref()
            .is_some_and(|c| c.due_in(self.head.seq).is_some())
        {
            self.checkpoint_now();
        }
        if let Some(db) = &self.db {
            match db.flush_wal(true) {
                Ok(()) => {
                    self.counters
                        .durable_seq
                        .fetch_max(self.head.seq, Ordering::Release);
                }
                Err(e) => tracing::error!(error = %e, "cannot sync the event log at shutdown"),
            }
            // Whoever opens the log next (the gateway's next start, a `gatehouse audit`
            // command) then reads tables instead of replaying the WAL.
            let started = Instant::now();
            match store::flush_all(db) {
                Ok(()) => tracing::debug!(ms = started.elapsed().as_millis() as u64, "event log flushed"),
                Err(e) => tracing::warn!(error = %e, "cannot flush the event log at shutdown"),
            }
        }
        // The shipper may be reading a segment through the database: the log is closed once
        // it is done, so that it can be opened again as soon as the recorder shut down.
        self.close_db();
        tracing::info!(last_seq = self.head.seq, "event log closed");
    }

    /// Check a retention request and start the job (the answer comes when it is done).
    fn start_retention(
        &mut self,
        seq: u64,
        sink: String,
        done: Option<oneshot::Sender<Result<u64, RecorderError>>>,
    ) {
        let answer = |done: Option<oneshot::Sender<Result<u64, RecorderError>>>, r| {
            if let Some(d) = done {
                let _ = d.send(r);
            }
        };
        if self.retain.is_some() {
            answer(
                done,
                Err(RecorderError::Invalid(
                    "a retention deletion is already running".to_string(),
                )),
            );
            return;
        }
        let res = (|| -> Result<Option<(Floor, u64)>, RecorderError> {
            self.ensure_db()?;
            let Some(signer) = self.checkpoints.as_ref().map(|c| &c.signer) else {
                return Err(RecorderError::Invalid(
                    "retention needs checkpoints: the floor is signed with their key".to_string(),
                ));
            };
            let db = self
                .db
                .as_ref()
                .ok_or_else(|| RecorderError::Write("the database is not open".to_string()))?;
            let from = store::floor(db)?.map(|f| f.seq).unwrap_or(0);
            if seq <= from {
                return Ok(None);
            }
            if seq > self.head.seq {
                return Err(RecorderError::Invalid(format!(
                    "cannot delete up to event {seq}: the log ends at {}",
                    self.head.seq
                )));
            }
            let cp = store::checkpoint_at_or_after(db, seq)?
                .filter(|c| c.seq == seq)
                .ok_or_else(|| RecorderError::Invalid(format!("event {seq} has no checkpoint")))?;
            let stored = db
                .get_cf(store::cf(db, CF_EVENTS)?, seq_key(seq))
                .map_err(RecorderError::read)?
                .ok_or_else(|| RecorderError::Corrupt(format!("event {seq} is missing")))?;
            let hash = canonical_from_stored(&stored)
                .map(|(_, h)| hex::encode(h))
                .ok_or_else(|| RecorderError::Corrupt(format!("event {seq} is malformed")))?;
            if cp.hash != hash {
                return Err(RecorderError::Corrupt(format!(
                    "the checkpoint at event {seq} does not match the event: nothing is deleted"
                )));
            }
            let mut floor = Floor {
                seq,
                hash,
                time_us: gatehouse_core::time::now_micros(),
                sink,
                key_id: signer.key_id().to_string(),
                signature: String::new(),
            };
            floor.signature = signer.sign(&floor.message());
            // Readers leave the events out from now on (their index entries are about to go),
            // and a restart resumes the job.
            let v = serde_json::to_vec(&floor).map_err(|e| RecorderError::Encode(e.to_string()))?;
            let mut wb = WriteBatch::default();
            wb.put_cf(store::cf(db, CF_META)?, META_RETAINING, v);
            // Readers start applying events past the summaries' mark at the floor from now
            // on: what is pending goes with the marker, so the mark is at or past the floor.
            self.put_pending_summaries(db, &mut wb, &HashSet::new(), self.head.seq)?;
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            db.write_opt(wb, &wo)
                .map_err(|e| RecorderError::Write(e.to_string()))?;
            Ok(Some((floor, from)))
        })();
        match res {
            Ok(None) => answer(done, Ok(0)),
            Ok(Some((floor, from))) => {
                self.dirty.clear();
                self.summaries_flushed = Instant::now();
                self.retain = Some(RetainJob {
                    floor,
                    next: from + 1,
                    next_block: 0,
                    from,
                    sessions: Default::default(),
                    legacy_by_session: None,
                    last_step: Instant::now(),
                    done,
                });
            }
            Err(e) => answer(done, Err(e)),
        }
    }

    /// A retention job a restart interrupted: finish it.
    fn resume_retention(&mut self) {
        let Some(db) = self.db.as_ref() else { return };
        let marker = match store::retaining(db) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the retention marker");
                return;
            }
        };
        if let Some(m) = marker {
            tracing::info!(floor = m.seq, "resuming an interrupted retention deletion");
            self.start_retention(m.seq, m.sink, None);
        }
    }

    /// A retention job runs once the indexer is past its floor: deleting index entries the
    /// indexer has yet to write would leave them behind.
    fn retain_ready(&self) -> bool {
        self.retain
            .as_ref()
            .is_some_and(|j| self.indexer.shared.indexed.load(Ordering::Acquire) >= j.floor.seq)
    }

    /// One step of the retention job; finishes it when every index entry is gone.
    fn retain_step(&mut self) {
        let Some(mut job) = self.retain.take() else { return };
        job.last_step = Instant::now();
        match self.retain_indexes(&mut job) {
            Ok(false) => {
                self.retain = Some(job);
            }
            Ok(true) => {
                let res = self.retain_finish(&job);
                if let Err(e) = &res {
                    tracing::error!(error = %e, floor = job.floor.seq, "retention could not delete old events");
                }
                if let Some(d) = job.done {
                    let _ = d.send(res);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, floor = job.floor.seq, "retention stopped");
                if let Some(d) = job.done {
                    let _ = d.send(Err(e));
                }
            }
        }
    }

    /// Delete the index entries of the next few events (summaries, and the by-session entries
    /// of earlier versions), then the next few search index blocks. `true` once all are done.
    fn retain_indexes(&mut self, job: &mut RetainJob) -> Result<bool, RecorderError> {
        let Some(db) = self.db.as_ref() else {
            return Err(RecorderError::Write("the database is not open".to_string()));
        };
        let mut wb = WriteBatch::default();
        if job.next > job.floor.seq {
            let done = crate::search::delete_blocks(
                db,
                job.floor.seq,
                RETAIN_STEP_TERMS,
                &mut job.next_block,
                &mut wb,
            )?;
            db.write(wb).map_err(|e| RecorderError::Write(e.to_string()))?;
            return Ok(done);
        }
        let end = job.next.saturating_add(RETAIN_STEP_EVENTS - 1).min(job.floor.seq);
        let (cf_events, cf_by_session, cf_sessions) = (
            store::cf(db, CF_EVENTS)?,
            store::cf(db, CF_BY_SESSION)?,
            store::cf(db, CF_SESSIONS)?,
        );
        // The by-session index earlier versions wrote (this one does not): its entries go with
        // their events, while there are any.
        let legacy = match job.legacy_by_session {
            Some(l) => l,
            None => {
                let l = db
                    .iterator_cf(cf_by_session, rocksdb::IteratorMode::Start)
                    .next()
                    .transpose()
                    .map_err(RecorderError::read)?
                    .is_some();
                job.legacy_by_session = Some(l);
                l
            }
        };
        let start = seq_key(job.next);
        for item in db.iterator_cf(
            cf_events,
            rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
        ) {
            let (k, v) = item.map_err(RecorderError::read)?;
            let Some(seq) = seq_from_key(&k) else { continue };
            if seq > end {
                break;
            }
            // An event that does not decode keeps its by-session entry of an earlier version
            // (that version's listings skip entries whose event is gone).
            let Ok(ev) = serde_json::from_slice::<Event>(&v) else {
                continue;
            };
            if legacy {
                wb.delete_cf(cf_by_session, by_session_key(&ev.session_id, seq));
            }
            let ends = matches!(
                ev.body,
                EventBody::SessionEnd { .. } | EventBody::AuthFailure { .. }
            );
            if ends || !job.sessions.contains(&ev.session_id) {
                let summary = db
                    .get_cf(cf_sessions, ev.session_id.as_bytes())
                    .map_err(RecorderError::read)?
                    .and_then(|v| serde_json::from_slice::<SessionSummary>(&v).ok());
                // A session that ended with all its events at or below the floor goes from
                // the listings too; any other keeps its summary (an open session, a grant's
                // session, the gateway's own: their next events continue it).
                if let Some(s) = &summary
                    && s.is_ended()
                    && s.last_seq <= job.floor.seq
                    && !self.summaries.contains_key(&ev.session_id)
                {
                    wb.delete_cf(cf_sessions, ev.session_id.as_bytes());
                }
                if job.sessions.len() >= RETAIN_SESSIONS_CACHE {
                    job.sessions.clear();
                }
                job.sessions.insert(ev.session_id.clone());
            }
        }
        db.write(wb).map_err(|e| RecorderError::Write(e.to_string()))?;
        job.next = end.saturating_add(1);
        Ok(false)
    }

    /// The atomic end of a retention job: events and older checkpoints deleted, the floor
    /// set, summaries of sessions wholly below it removed. Returns how many events went.
    fn retain_finish(&mut self, job: &RetainJob) -> Result<u64, RecorderError> {
        let Some(db) = self.db.as_ref() else {
            return Err(RecorderError::Write("the database is not open".to_string()));
        };
        let (cf_events, cf_meta, cf_checkpoints) = (
            store::cf(db, CF_EVENTS)?,
            store::cf(db, CF_META)?,
            store::cf(db, CF_CHECKPOINTS)?,
        );
        let floor = job.floor.seq;
        let mut wb = WriteBatch::default();
        wb.delete_range_cf(cf_events, seq_key(0), seq_key(floor.saturating_add(1)));
        wb.delete_range_cf(cf_checkpoints, seq_key(0), seq_key(floor));
        let v = serde_json::to_vec(&job.floor).map_err(|e| RecorderError::Encode(e.to_string()))?;
        wb.put_cf(cf_meta, META_FLOOR, v);
        wb.delete_cf(cf_meta, META_RETAINING);
        // (The summaries' mark is at or past the floor since the job started.)
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        db.write_opt(wb, &wo)
            .map_err(|e| RecorderError::Write(e.to_string()))?;
        // Give the space back now: files holding only deleted events are dropped at once (the
        // rest goes with compaction).
        if let Err(e) = db.delete_file_in_range_cf(cf_events, seq_key(0), seq_key(floor)) {
            tracing::warn!(error = %e, "retention: deleted events stay on disk until compaction");
        }
        Ok(floor - job.from)
    }

    /// Add the summaries of `dirty` sessions (except `skip`, whose newer versions the caller
    /// writes) and the mark at `head` to `wb`.
    fn put_pending_summaries(
        &self,
        db: &DB,
        wb: &mut WriteBatch,
        skip: &HashSet<&str>,
        head: u64,
    ) -> Result<(), RecorderError> {
        let cf_sessions = store::cf(db, CF_SESSIONS)?;
        for id in &self.dirty {
            if skip.contains(id.as_str()) {
                continue;
            }
            let s = self.summaries.get(id).ok_or_else(|| {
                RecorderError::Corrupt(format!("the summary of session `{id}` is not in memory"))
            })?;
            let v = serde_json::to_vec(s).map_err(|e| RecorderError::Encode(e.to_string()))?;
            wb.put_cf(cf_sessions, id.as_bytes(), v);
        }
        wb.put_cf(store::cf(db, CF_META)?, META_SUMMARIES, seq_key(head));
        Ok(())
    }

    /// Write every pending summary and the mark (when idle, and at shutdown). Not fsynced: a
    /// power loss takes the mark with them, and the next start applies the events again.
    fn flush_summaries(&mut self) {
        self.summaries_flushed = Instant::now();
        if self.summaries_held() {
            return;
        }
        let Some(db) = self.db.as_ref() else { return };
        let mut wb = WriteBatch::default();
        let res = self
            .put_pending_summaries(db, &mut wb, &HashSet::new(), self.head.seq)
            .and_then(|()| db.write(wb).map_err(|e| RecorderError::Write(e.to_string())));
        match res {
            Ok(()) => self.dirty.clear(),
            // Readers apply the events past the mark meanwhile; retried at the next flush.
            Err(e) => tracing::warn!(error = %e, "cannot write session summaries"),
        }
    }

    /// Test hook: see `Counters::hold_summaries`.
    fn summaries_held(&self) -> bool {
        #[cfg(test)]
        return self.counters.hold_summaries.load(Ordering::SeqCst);
        #[cfg(not(test))]
        false
    }

    /// Fsync what was written without one.
    fn sync_wal(&mut self) {
        self.request_sync(Vec::new());
    }

    /// Have everything written so far fsynced, then `acks` acknowledged: by the syncer, or
    /// here if it is gone.
    fn request_sync(&mut self, acks: Vec<(Waiter, u64)>) {
        self.unsynced = None;
        let Some(db) = &self.db else {
            for (done, _) in acks {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                let _ = done.send(Err(RecorderError::Write("the database is not open".to_string())));
            }
            return;
        };
        let job = SyncJob {
            db: db.clone(),
            through: self.head.seq,
            acks,
        };
        // With nothing else to write and no fsync in flight, handing this one over would only
        // add a thread's wake-up to the statement's latency: fsync here.
        let idle = self.counters.sync_jobs.load(Ordering::Acquire) == 0
            && self.counters.pending.load(Ordering::Relaxed) == 0;
        #[cfg(test)]
        let idle = idle && !self.counters.hold_sync.load(Ordering::SeqCst);
        let job = match &self.syncer {
            Some(s) if !idle => {
                self.counters.sync_jobs.fetch_add(1, Ordering::AcqRel);
                match s.send(job) {
                    Ok(()) => return,
                    Err(job) => {
                        self.counters.sync_jobs.fetch_sub(1, Ordering::AcqRel);
                        job
                    }
                }
            }
            _ => job,
        };
        match fsync(&job.db, &self.counters) {
            Ok(()) => {
                self.counters
                    .durable_seq
                    .fetch_max(job.through, Ordering::Release);
                for (done, seq) in job.acks {
                    let _ = done.send(Ok(seq));
                }
            }
            Err(e) => {
                // Retried at the next batch or timeout; the events are written, not lost.
                tracing::error!(error = %e, "cannot fsync the event log");
                self.unsynced = Some(Instant::now());
                let refused = job.acks.len() as u64;
                self.counters.failed.fetch_add(refused, Ordering::Relaxed);
                note_sync_failure(&self.counters, job.through, refused, &e);
                let err = RecorderError::Write(format!("cannot fsync the event log: {e}"));
                for (done, _) in job.acks {
                    let _ = done.send(Err(err.clone()));
                }
            }
        }
    }

    /// Record in the log itself that fsyncs failed: which events were written without being
    /// known durable, and how many operations waiting on them were refused.
    fn record_sync_failure(&mut self) {
        self.counters.sync_failed.store(false, Ordering::Release);
        let taken = self
            .counters
            .sync_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(f) = taken else { return };
        let message = format!(
            "fsync of the event log failed at {} ({}): events {} to {} were written but not \
             confirmed durable; {} operations waiting on them were refused",
            gatehouse_core::time::rfc3339_micros(f.since_us),
            f.error,
            f.first,
            f.through,
            f.refused
        );
        let ev = NewEvent::now(
            GATEWAY_SESSION,
            None,
            EventBody::Notice {
                level: "error".to_string(),
                message,
            },
        );
        match self.try_commit(vec![ev], false) {
            // Fsynced with the next batch that waits, or soon.
            Ok(_) => {
                if self.unsynced.is_none() {
                    self.unsynced = Some(Instant::now());
                }
            }
            Err(f) => self.backlog.extend(f.events.into_iter().flatten()),
        }
    }

    /// Write a checkpoint of the current head on its own (fsynced). A failure is logged and
    /// retried at the next batch or timeout; events are not affected.
    fn checkpoint_now(&mut self) {
        let Some(c) = &mut self.checkpoints else {
            return;
        };
        let head = self.head;
        let res = (|| {
            let db = self
                .db
                .as_ref()
                .ok_or_else(|| RecorderError::Write("the database is not open".to_string()))?;
            let cf = store::cf(db, CF_CHECKPOINTS)?;
            let cp = c
                .signer
                .checkpoint(head.seq, &head.hash, gatehouse_core::time::now_micros());
            let v = serde_json::to_vec(&cp).map_err(|e| RecorderError::Encode(e.to_string()))?;
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            db.put_cf_opt(cf, seq_key(head.seq), v, &wo)
                .map_err(|e| RecorderError::Write(e.to_string()))
        })();
        match res {
            Ok(()) => {
                c.seq = head.seq;
                c.at = Instant::now();
                c.retry_at = None;
                // The put was fsynced, and with it every earlier WAL write.
                self.unsynced = None;
                self.counters.durable_seq.fetch_max(head.seq, Ordering::Release);
            }
            Err(e) => {
                if c.retry_at.is_none() {
                    tracing::error!(error = %e, seq = head.seq, "cannot write a checkpoint; retrying every second");
                }
                c.retry_at = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }

    /// Close the database after a failed write (the next batch reopens it). The indexer may be
    /// writing with it, the shipper reading a segment: wait for them (a failed write fails
    /// too, or finishes) so the files are released before they are opened again.
    fn close_db(&mut self) {
        self.indexer.shared.set_db(None);
        let Some(mut db) = self.db.take() else { return };
        let started = Instant::now();
        loop {
            match Arc::try_unwrap(db) {
                Ok(db) => {
                    drop(db);
                    return;
                }
                Err(shared) => {
                    db = shared;
                    if started.elapsed() > Duration::from_secs(10) {
                        // The reopen then fails on the lock and is retried with the next batch.
                        tracing::error!("the search indexer or the shipper holds the event log open");
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    /// The database, reopened (and the head recomputed) after an earlier failure.
    fn ensure_db(&mut self) -> Result<(), RecorderError> {
        if self.db.is_none() {
            let db = Arc::new(store::open_rw(&self.dir)?);
            self.head = store::recover_head(&db)?;
            if let Some(c) = &mut self.checkpoints {
                c.seq = store::last_checkpoint_seq(&db)?;
            }
            self.counters.last_seq.store(self.head.seq, Ordering::Relaxed);
            // What the failed batches did not write is not in these; the stored summaries,
            // with the events past their mark applied, are exact.
            self.summaries.clear();
            self.dirty.clear();
            summaries::catch_up(&db, self.head.seq)?;
            self.indexer.shared.head.store(self.head.seq, Ordering::Release);
            self.indexer.shared.set_db(Some(db.clone()));
            self.db = Some(db);
            tracing::info!(last_seq = self.head.seq, "event log reopened");
        }
        Ok(())
    }

    fn commit(&mut self, batch: Vec<Pending>) {
        let (mut events, mut waiters): (Vec<NewEvent>, Vec<Option<Waiter>>) =
            batch.into_iter().map(|p| (p.ev, p.done)).unzip();
        let mut late = 0u64;
        if !self.backlog.is_empty() {
            // Late events go first so that each session's events keep their order.
            late = self.backlog.len() as u64;
            let mut all: Vec<NewEvent> = self.backlog.drain(..).collect();
            all.append(&mut events);
            events = all;
            let mut w: Vec<Option<Waiter>> = std::iter::repeat_with(|| None).take(late as usize).collect();
            w.append(&mut waiters);
            waiters = w;
        }
        let n = events.len() as u64;
        // Sync durability fsyncs a batch only when someone waits for it (a decision that gates
        // an operation), or when unawaited events have waited long enough: a serial client
        // then pays one fsync per statement, not one for the decision and one for the result.
        //
        // The batch is written without an fsync; the syncer fsyncs it and then acknowledges its
        // awaited appends, while this thread writes the next batch.
        let sync = self.sync
            && (waiters.iter().any(Option::is_some)
                || self.unsynced.is_some_and(|t| t.elapsed() >= UNSYNCED_MAX));
        match self.try_commit(events, false) {
            Ok(results) => {
                if !self.sync {
                    self.counters.durable_seq.store(self.head.seq, Ordering::Release);
                } else if !sync && self.unsynced.is_none() && results.iter().any(Result::is_ok) {
                    self.unsynced = Some(Instant::now());
                }
                if let Some(o) = self.outage.take() {
                    tracing::info!(
                        refused_events = o.refused,
                        late_events = o.total.saturating_sub(o.refused + o.dropped),
                        lost_events = o.dropped,
                        outage_secs = o.since.elapsed().as_secs(),
                        "event log writable again"
                    );
                    self.record_outage(&o);
                }
                let mut acks = Vec::new();
                for (done, r) in waiters.into_iter().zip(results) {
                    match done {
                        Some(done) => match r {
                            Ok(seq) if sync => acks.push((done, seq)),
                            // The waiter may have gone away (client disconnected); nothing to do.
                            Ok(seq) => {
                                let _ = done.send(Ok(seq));
                            }
                            Err(e) => {
                                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                                let _ = done.send(Err(e));
                            }
                        },
                        None => {
                            if let Err(e) = r {
                                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                                tracing::error!(error = %e, "event not recorded");
                            }
                        }
                    }
                }
                if sync {
                    self.request_sync(acks);
                }
            }
            Err(Failed { error: e, events }) => {
                // Unacknowledged events are facts, not requests: they are kept to be written
                // later. Acknowledged appends are refused to their caller instead.
                // (One refused on its own, e.g. for a NUL in its session id, is not.)
                let mut invalid = 0u64;
                let keep: Vec<NewEvent> = events
                    .into_iter()
                    .zip(&waiters)
                    .filter_map(|(ev, w)| match (ev, w) {
                        (Some(ev), None) => Some(ev),
                        (None, None) => {
                            invalid += 1;
                            None
                        }
                        (_, Some(_)) => None,
                    })
                    .collect();
                if invalid > 0 {
                    tracing::error!(events = invalid, "invalid events not recorded");
                }
                let refused = waiters.iter().filter(|w| w.is_some()).count() as u64;
                let room = BACKLOG_MAX.saturating_sub(self.backlog.len());
                let dropped = keep.len().saturating_sub(room) as u64;
                self.backlog.extend(keep.into_iter().take(room));
                self.note_failure(&e, n - late, refused, dropped);
                self.counters
                    .failed
                    .fetch_add(refused + dropped + invalid, Ordering::Relaxed);
                for done in waiters.into_iter().flatten() {
                    let _ = done.send(Err(e.clone()));
                }
            }
        }
    }

    /// After an outage, say in the log itself what it could not hold: when it started, how
    /// long it lasted, how many operations were refused, how many events were written late
    /// and how many were lost.
    fn record_outage(&mut self, o: &Outage) {
        let message = format!(
            "event log was not writable from {} for {} s: {} operations refused unrecorded, \
             {} events recorded late, {} events lost (backlog full)",
            gatehouse_core::time::rfc3339_micros(o.since_us),
            o.since.elapsed().as_secs(),
            o.refused,
            o.total.saturating_sub(o.refused + o.dropped),
            o.dropped
        );
        let ev = NewEvent::now(
            GATEWAY_SESSION,
            None,
            EventBody::Notice {
                level: "error".to_string(),
                message,
            },
        );
        let sync = self.sync;
        if let Err(f) = self.try_commit(vec![ev], sync) {
            // Failing again right away: keep it for the next successful write.
            self.backlog.extend(f.events.into_iter().flatten());
        }
    }

    /// `fresh`: events of this batch that were not already in the backlog.
    fn note_failure(&mut self, e: &RecorderError, fresh: u64, refused: u64, dropped: u64) {
        let n = fresh;
        let now = Instant::now();
        match &mut self.outage {
            None => {
                tracing::error!(
                    error = %e,
                    events = n,
                    refused,
                    backlog = self.backlog.len(),
                    "event log write failed; operations are refused until it is writable again"
                );
                self.outage = Some(Outage {
                    since: now,
                    since_us: gatehouse_core::time::now_micros(),
                    last_logged: now,
                    unlogged: 0,
                    total: n,
                    refused,
                    dropped,
                });
            }
            Some(o) => {
                o.refused += refused;
                o.dropped += dropped;
                // Backlog events are counted once, when they first failed.
                o.total += fresh;
                o.unlogged += n;
                if now.duration_since(o.last_logged) >= OUTAGE_REMINDER {
                    tracing::error!(
                        error = %e,
                        refused_since_last_report = o.unlogged,
                        outage_secs = o.since.elapsed().as_secs(),
                        "event log still not writable"
                    );
                    o.last_logged = now;
                    o.unlogged = 0;
                }
            }
        }
    }

    /// Write the batch; per-event results (an event can be rejected on its own), or one error
    /// for the whole batch, in which case nothing was acknowledged, the head did not move, and
    /// the events come back (no copy is made in case of a failure).
    fn try_commit(
        &mut self,
        events: Vec<NewEvent>,
        sync: bool,
    ) -> Result<Vec<Result<u64, RecorderError>>, Failed> {
        let mut results = Vec::with_capacity(events.len());
        let mut committed = Vec::with_capacity(events.len());
        let mut rest = events.into_iter();
        match self.write_batch(&mut rest, &mut results, &mut committed, sync) {
            Ok(()) => Ok(results),
            Err(error) => {
                // `committed` holds the events taken so far with an `Ok` result, in order.
                let mut sealed = committed.into_iter().map(|c| NewEvent::from(c.ev));
                let mut events: Vec<Option<NewEvent>> = results
                    .iter()
                    .map(|r| if r.is_ok() { sealed.next() } else { None })
                    .collect();
                events.extend(rest.map(Some));
                Err(Failed { error, events })
            }
        }
    }

    /// [`Self::try_commit`]'s work: every event taken from `events` gets a result, and every
    /// `Ok` one its entry in `committed` (handed to the indexer once written).
    fn write_batch(
        &mut self,
        events: &mut std::vec::IntoIter<NewEvent>,
        results: &mut Vec<Result<u64, RecorderError>>,
        committed: &mut Vec<Committed>,
        sync: bool,
    ) -> Result<(), RecorderError> {
        if let Err(e) = self.ensure_db() {
            return Err(RecorderError::Write(e.to_string()));
        }
        let Some(db) = self.db.as_ref() else {
            return Err(RecorderError::Write("the database is not open".to_string()));
        };
        let (cf_events, cf_sessions, cf_meta) = (
            store::cf(db, CF_EVENTS)?,
            store::cf(db, CF_SESSIONS)?,
            store::cf(db, CF_META)?,
        );

        let mut head = self.head;
        // Reserved at the size the last batch's events had (growing it copies the whole
        // batch); a drained backlog can be 100k events: reserve for a usual batch, not that.
        let mut wb = WriteBatch::with_capacity_bytes(events.len().min(4096) * self.batch_event_bytes);
        // Per session of the batch: its summary after the batch (`None` only before its
        // first event is applied), and whether it is written now (see `summaries.rs`).
        let mut staged: HashMap<String, (Option<SessionSummary>, bool)> = HashMap::new();
        let mut written = 0u64;
        while let Some(new) = events.next() {
            if new.session_id.as_bytes().contains(&0) {
                results.push(Err(RecorderError::Invalid(
                    "session id contains a NUL byte".to_string(),
                )));
                continue;
            }
            // Looked up before the event is taken apart: a failure here gives it back whole.
            if !staged.contains_key(&new.session_id) {
                let known = match self.summaries.get(&new.session_id) {
                    Some(s) => Some(s.clone()),
                    None => match db.get_cf(cf_sessions, new.session_id.as_bytes()) {
                        Ok(v) => v.and_then(|v| serde_json::from_slice::<SessionSummary>(&v).ok()),
                        Err(e) => {
                            let mut back = vec![new];
                            back.extend(events.by_ref());
                            *events = back.into_iter();
                            return Err(RecorderError::Write(format!("reading session summary: {e}")));
                        }
                    },
                };
                staged.insert(new.session_id.clone(), (known, false));
            }
            let seq = head.seq + 1;
            let (ev, stored, hash) = match seal(new, seq, &head.hash) {
                Ok(x) => x,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            // (A session's events are found through the search indexes' session term, which
            // the indexer writes; see `LogReader::session_events`.)
            wb.put_cf(cf_events, seq_key(seq), &stored);
            let (principal, target) = match staged.get_mut(&ev.session_id) {
                Some((s, write)) => {
                    *write |= summaries::apply_event(s, &ev);
                    (
                        s.as_ref().and_then(|s| s.principal.clone()),
                        s.as_ref().map(|s| s.target.clone()).unwrap_or_default(),
                    )
                }
                // Not reached: staged above.
                None => (None, String::new()),
            };
            // The search indexes are the indexer's, once the batch is committed.
            committed.push(Committed {
                principal,
                target,
                ev,
            });
            head = Head { seq, hash };
            results.push(Ok(seq));
            written += 1;
        }
        if written == 0 {
            return Ok(());
        }
        // Counter-only changes wait for a flush of every pending summary, at most
        // `SUMMARY_FLUSH` apart (and before the in-memory summaries are dropped).
        let mut flush_all = !self.summaries_held()
            && (self.summaries.len() > SUMMARY_CACHE_MAX
                || ((!self.dirty.is_empty() || staged.values().any(|(_, w)| !w))
                    && self.summaries_flushed.elapsed() >= SUMMARY_FLUSH));
        for (id, (s, write)) in &staged {
            if let Some(s) = s
                && (*write || flush_all)
            {
                let v = serde_json::to_vec(s).map_err(|e| RecorderError::Encode(e.to_string()))?;
                wb.put_cf(cf_sessions, id.as_bytes(), v);
            }
        }
        if flush_all {
            let skip: HashSet<&str> = staged.keys().map(String::as_str).collect();
            if let Err(e) = self.put_pending_summaries(db, &mut wb, &skip, head.seq) {
                // The events are what matters: they go on; readers apply them past the mark.
                tracing::error!(error = %e, "cannot write pending session summaries");
                flush_all = false;
                self.summaries_flushed = Instant::now();
            }
        } else if staged.values().all(|(_, w)| *w)
            && self
                .dirty
                .iter()
                .all(|id| staged.get(id).is_some_and(|(_, w)| *w))
        {
            // Nothing stays pending after this batch (every change in it is written now): the
            // mark follows, so readers do not re-read a long run of such events.
            wb.put_cf(cf_meta, META_SUMMARIES, seq_key(head.seq));
        }
        let stored_head = serde_json::to_vec(&StoredHead::from_head(&head))
            .map_err(|e| RecorderError::Encode(e.to_string()))?;
        wb.put_cf(cf_meta, META_HEAD, stored_head);
        // A checkpoint due by count or time rides in the same batch as the events it covers.
        let checkpoint = match &self.checkpoints {
            Some(c) if c.due_in(head.seq).is_some_and(|d| d.is_zero()) => {
                let cp = c
                    .signer
                    .checkpoint(head.seq, &head.hash, gatehouse_core::time::now_micros());
                let v = serde_json::to_vec(&cp).map_err(|e| RecorderError::Encode(e.to_string()))?;
                wb.put_cf(store::cf(db, CF_CHECKPOINTS)?, seq_key(head.seq), v);
                true
            }
            _ => false,
        };

        // Per event, with room for the batch's other entries.
        self.batch_event_bytes = (wb.size_in_bytes() / written as usize + 64).clamp(256, 16 * 1024);
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        #[cfg(test)]
        let injected = self
            .counters
            .fail_batches
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        #[cfg(not(test))]
        let injected = false;
        let res = if injected {
            Err("injected failure".to_string())
        } else {
            db.write_opt(wb, &wo).map_err(|e| e.to_string())
        };
        if let Err(e) = res {
            // Nothing of the batch is acknowledged. Reopen before the next batch so the head
            // is recomputed from what is actually durable and a failed DB state is cleared.
            self.close_db();
            return Err(RecorderError::Write(e));
        }

        self.head = head;
        if sync {
            self.counters.durable_seq.fetch_max(head.seq, Ordering::Release);
        }
        self.indexer.send(std::mem::take(committed), head.seq);
        if checkpoint && let Some(c) = &mut self.checkpoints {
            c.seq = head.seq;
            c.at = Instant::now();
            c.retry_at = None;
        }
        let c = &self.counters;
        c.appended.fetch_add(written, Ordering::Relaxed);
        c.batches.fetch_add(1, Ordering::Relaxed);
        c.last_seq.store(head.seq, Ordering::Relaxed);
        if flush_all {
            self.dirty.clear();
            self.summaries_flushed = Instant::now();
            if self.summaries.len() > SUMMARY_CACHE_MAX {
                self.summaries.clear();
            }
        }
        for (id, (s, write)) in staged {
            let Some(s) = s else { continue };
            if write || flush_all {
                self.dirty.remove(&id);
            } else {
                self.dirty.insert(id.clone());
            }
            if s.is_ended() {
                self.summaries.remove(&id);
            } else {
                self.summaries.insert(id, s);
            }
        }
        Ok(())
    }
}
