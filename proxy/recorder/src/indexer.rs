//! The search indexer: a thread of its own that writes the `search` column family for
//! committed events, trailing the writer.
//!
//! The writer's group commit holds the events, the session summaries and the chain head. The
//! search indexes (time, kind, principal, target, decision, policy ids, each statement word,
//! and the session, through which replay finds a session's events) used to ride in the same
//! batch, a key per event and term, and inserting them was the largest single cost of an
//! append. They are derived data: they can be rebuilt
//! from the events at any time. So the writer hands each committed batch to this thread, which
//! gathers a few milliseconds of them into one block of posting lists (`search.rs`: a
//! directory entry and a posting list per term and block, instead of a key per term and
//! event) and writes it with, in the same batch, how far the indexes reach
//! (`meta/postings_indexed`, u64 big-endian).
//!
//! Nothing is lost when it lags or stops:
//! - a search covers the events past the mark by reading them (see `search.rs`), so an event
//!   is still searchable exactly when it is durable;
//! - when its queue is full, the writer drops the batch instead of waiting; the indexer sees the
//!   gap in seqs (or, when nothing follows, the writer's published head within a second) and
//!   reads those events back from the log;
//! - at start it reads back whatever a crash or a shutdown left unindexed (and builds the
//!   indexes of a log that has none);
//! - index writes are not fsynced: they become durable with the writer's next fsync, and what a
//!   power loss takes is re-read at the next start, since the mark went with them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rocksdb::{DB, Direction, IteratorMode, WriteBatch, WriteOptions};

use crate::error::RecorderError;
use crate::event::Event;
use crate::search::{Blocks, SESSIONS_CACHE, SessionContext};
use crate::store::{self, CF_EVENTS, CF_META, META_INDEXED, seq_from_key, seq_key};

/// One committed event, with what its index keys need from its session's summary.
pub(crate) struct Committed {
    pub(crate) ev: Event,
    pub(crate) principal: Option<String>,
    pub(crate) target: String,
}

/// Committed batches the queue holds before the writer drops them (the indexer then reads
/// those events back from the log).
const QUEUE_BATCHES: usize = 1024;
/// Most events one index write covers.
const WRITE_EVENTS: usize = 4096;
/// How long the indexer gathers committed batches before writing: fewer, larger index writes
/// get in the way of the writer's fsynced commits less often (RocksDB queues the two), and
/// a block's terms are shared by more events. Searches do not wait for it; they read what is
/// not indexed yet.
const LINGER: Duration = Duration::from_millis(5);
/// Events read back from the log per write when catching up.
const CATCH_UP_EVENTS: usize = 2048;
/// After a failed write, wait this long before trying again.
const RETRY: Duration = Duration::from_secs(1);

/// What the writer and the indexer share.
pub(crate) struct Shared {
    /// The writer's database; `None` while the writer reopens it after a failed write.
    pub(crate) db: Mutex<Option<Arc<DB>>>,
    /// Seq through which the search indexes are written (not necessarily fsynced yet).
    pub(crate) indexed: AtomicU64,
    /// Committed batches dropped because the queue was full (read back from the log instead).
    pub(crate) dropped: AtomicU64,
    /// The writer's committed head: the indexer catches up to it when batches went missing.
    pub(crate) head: AtomicU64,
    /// Set when the recorder shuts down: a long catch-up stops (the next start goes on).
    stopping: std::sync::atomic::AtomicBool,
    /// Test hook: while set, the indexer throws away what it receives and reads nothing back.
    #[cfg(test)]
    pub(crate) paused: std::sync::atomic::AtomicBool,
    /// Test hook: the batch holding this seq is dropped as if the queue were full.
    #[cfg(test)]
    pub(crate) drop_seq: AtomicU64,
}

impl Shared {
    pub(crate) fn new(db: Arc<DB>, indexed: u64, head: u64) -> Shared {
        Shared {
            db: Mutex::new(Some(db)),
            indexed: AtomicU64::new(indexed),
            dropped: AtomicU64::new(0),
            head: AtomicU64::new(head),
            stopping: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            paused: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            drop_seq: AtomicU64::new(0),
        }
    }

    fn db(&self) -> Option<Arc<DB>> {
        match self.db.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(crate) fn set_db(&self, db: Option<Arc<DB>>) {
        match self.db.lock() {
            Ok(mut g) => *g = db,
            Err(poisoned) => *poisoned.into_inner() = db,
        }
    }
}

/// The writer's end: hands committed batches over and stops the thread.
pub(crate) struct Indexer {
    tx: Option<SyncSender<Vec<Committed>>>,
    thread: Option<JoinHandle<()>>,
    pub(crate) shared: Arc<Shared>,
}

impl Indexer {
    pub(crate) fn start(shared: Arc<Shared>) -> Result<Indexer, RecorderError> {
        let (tx, rx) = mpsc::sync_channel(QUEUE_BATCHES);
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("gatehouse-indexer".to_string())
            .spawn(move || Worker::new(s).run(rx))
            .map_err(|e| RecorderError::Write(format!("cannot start the indexer thread: {e}")))?;
        Ok(Indexer {
            tx: Some(tx),
            thread: Some(thread),
            shared,
        })
    }

    /// Hand a committed batch over (`head`: the last seq committed); never waits. A full
    /// queue drops it: the indexer notices the gap and reads those events back from the log.
    pub(crate) fn send(&self, batch: Vec<Committed>, head: u64) {
        self.shared.head.store(head, Ordering::Release);
        if batch.is_empty() {
            return;
        }
        #[cfg(test)]
        {
            let d = self.shared.drop_seq.load(Ordering::SeqCst);
            if batch.iter().any(|c| c.ev.seq == d) {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if let Some(tx) = &self.tx {
            match tx.try_send(batch) {
                Ok(()) => {}
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Index what is queued and stop the thread. A catch-up reading back a long stretch of
    /// the log stops at its next chunk (its progress is saved; the next start goes on).
    pub(crate) fn stop(&mut self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        drop(self.tx.take());
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the search indexer thread panicked");
        }
    }
}

impl Drop for Indexer {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Worker {
    shared: Arc<Shared>,
    /// Seq through which indexes are written.
    through: u64,
    sessions: SessionContext,
    /// Since when writes fail (logged once, then every minute).
    failing: Option<Instant>,
    /// After a failed write, not before this.
    retry_at: Option<Instant>,
    last_logged: Option<Instant>,
}

impl Worker {
    fn new(shared: Arc<Shared>) -> Worker {
        let through = shared.indexed.load(Ordering::Relaxed);
        Worker {
            shared,
            through,
            sessions: SessionContext::new(SESSIONS_CACHE),
            failing: None,
            retry_at: None,
            last_logged: None,
        }
    }

    #[cfg(test)]
    fn paused(&self) -> bool {
        self.shared.paused.load(Ordering::SeqCst)
    }

    #[cfg(not(test))]
    fn paused(&self) -> bool {
        false
    }

    /// The writer's committed head.
    fn head(&self) -> u64 {
        self.shared.head.load(Ordering::Acquire)
    }

    fn run(mut self, rx: Receiver<Vec<Committed>>) {
        // Whatever a crash, a shutdown or an older version left unindexed.
        self.catch_up(self.head());
        let mut backlog = false;
        loop {
            let first = match rx.recv_timeout(RETRY) {
                Ok(b) => b,
                Err(RecvTimeoutError::Timeout) => {
                    // Batches dropped while the queue was full, or a failed write: read them
                    // back (also when no further batch comes to show the gap).
                    if self.head() > self.through {
                        self.catch_up(self.head());
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let paused = self.paused();
            let mut items = first;
            let mut closed = false;
            // Sleep, then take what came: a receiver waiting on the queue is woken by every
            // send, and that wake-up is paid on the writer's thread, once per commit. (Not
            // while a backlog is queued: the last window stopped at its size.)
            if !backlog && !self.shared.stopping.load(Ordering::Relaxed) {
                std::thread::sleep(LINGER);
            }
            while items.len() < WRITE_EVENTS {
                match rx.try_recv() {
                    Ok(mut more) => items.append(&mut more),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            backlog = items.len() >= WRITE_EVENTS;
            // (Test hook: paused at either end of the window throws it all away.)
            if !paused && !self.paused() {
                self.index(items);
            }
            if closed {
                break;
            }
        }
        if !self.shared.stopping.load(Ordering::Relaxed) && self.head() > self.through {
            self.catch_up(self.head());
        }
    }

    /// Index committed events, reading back from the log any the writer could not hand over
    /// (a gap in seqs: a batch dropped while the queue was full).
    fn index(&mut self, items: Vec<Committed>) {
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let Some(db) = self.shared.db() else { return };
        let res = (|| -> Result<(), RecorderError> {
            let mut block = Blocks::default();
            let mut upto = self.through;
            for c in &items {
                let seq = c.ev.seq;
                if seq <= upto {
                    continue;
                }
                if seq > upto + 1 {
                    if upto > self.through {
                        self.write(&db, std::mem::take(&mut block), upto)?;
                    }
                    self.catch_up(seq - 1);
                    if self.through + 1 < seq {
                        // Not read back (an error, or stopping): the rest waits for the next
                        // catch-up, which starts from the mark.
                        return Ok(());
                    }
                }
                block.add(&c.ev, c.principal.as_deref(), &c.target);
                upto = seq;
            }
            if upto > self.through {
                self.write(&db, block, upto)?;
            }
            Ok(())
        })();
        self.outcome(res);
    }

    /// Read events after `through` back from the log and index them, up to `upto` (or the
    /// log's end), a chunk at a time: the database handle is let go between chunks (the
    /// writer may need to reopen it) and a shutdown stops it (the next start goes on).
    fn catch_up(&mut self, upto: u64) {
        let started = Instant::now();
        let from = self.through;
        while self.through < upto
            && !self.paused()
            && !self.shared.stopping.load(Ordering::Relaxed)
            && self.retry_at.is_none_or(|t| Instant::now() >= t)
        {
            let Some(db) = self.shared.db() else { break };
            let before = self.through;
            let res = self.catch_up_chunk(&db, upto);
            drop(db);
            let stuck = res.is_err() || self.through == before;
            self.outcome(res);
            if stuck {
                break;
            }
        }
        let read = self.through.saturating_sub(from);
        if read >= 100_000 {
            tracing::info!(
                events = read,
                secs = started.elapsed().as_secs(),
                "search indexes built from the log"
            );
        }
    }

    /// One chunk of [`Worker::catch_up`].
    fn catch_up_chunk(&mut self, db: &DB, upto: u64) -> Result<(), RecorderError> {
        // Events retention deleted (or is deleting) are not indexed again.
        let floor = store::effective_floor(db)?;
        if floor > self.through {
            self.write(db, Blocks::default(), floor.min(upto))?;
        }
        let cf_events = store::cf(db, CF_EVENTS)?;
        let start = seq_key(self.through.saturating_add(1));
        let mut block = Blocks::default();
        let (mut n, mut reached) = (0usize, self.through);
        for item in db.iterator_cf(cf_events, IteratorMode::From(&start, Direction::Forward)) {
            let (k, v) = item.map_err(RecorderError::read)?;
            let Some(seq) = seq_from_key(&k) else { continue };
            if seq > upto || n == CATCH_UP_EVENTS {
                break;
            }
            reached = seq;
            n += 1;
            // What cannot be decoded is left to `audit verify`; it is not searchable.
            let Ok(ev) = serde_json::from_slice::<Event>(&v) else {
                continue;
            };
            let (principal, target) = self.sessions.get(db, &ev.session_id)?;
            block.add(&ev, principal.as_deref(), target);
        }
        if reached > self.through {
            self.write(db, block, reached)?;
        }
        Ok(())
    }

    /// One index write: a block, and how far the indexes reach (not fsynced; see the module
    /// docs).
    fn write(&mut self, db: &DB, block: Blocks, upto: u64) -> Result<(), RecorderError> {
        let mut wb = WriteBatch::default();
        let meta = store::cf(db, CF_META)?;
        // Searches bound their directory scans by the widest block (see `search.rs`).
        let spread = block.spread();
        if spread > store::index_spread(db)?.unwrap_or(0) {
            wb.put_cf(meta, store::META_INDEX_SPREAD, spread.to_be_bytes());
        }
        block.write(&mut wb, store::cf(db, crate::search::CF_SEARCH)?);
        wb.put_cf(meta, META_INDEXED, seq_key(upto));
        // A write that joins the writer's group is inserted concurrently with it; the hint
        // keeps the in-order insert of the block's keys cheap there too (see `Block::write`).
        let mut wo = WriteOptions::default();
        wo.set_memtable_insert_hint_per_batch(true);
        db.write_opt(wb, &wo)
            .map_err(|e| RecorderError::Write(e.to_string()))?;
        self.through = upto;
        self.shared.indexed.store(upto, Ordering::Release);
        Ok(())
    }

    fn outcome(&mut self, res: Result<(), RecorderError>) {
        match res {
            Ok(()) => {
                self.retry_at = None;
                if let Some(since) = self.failing.take() {
                    tracing::info!(
                        secs = since.elapsed().as_secs(),
                        indexed = self.through,
                        "search indexes written again"
                    );
                }
            }
            Err(e) => {
                let now = Instant::now();
                self.retry_at = Some(now + RETRY);
                if self.failing.is_none() {
                    self.failing = Some(now);
                }
                if self
                    .last_logged
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
                {
                    // Searches still find the events (they read what is not indexed).
                    tracing::error!(error = %e, indexed = self.through, "cannot write search indexes; retrying");
                    self.last_logged = Some(now);
                }
            }
        }
    }
}
