//! The read side: listing, per-session events, paging and verification.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use crate::checkpoint::{Checkpoint, PublicKeys};
use crate::error::RecorderError;
use crate::event::Event;
use crate::store::{self, CF_EVENTS, CF_SESSIONS, SessionSummary, seq_from_key, seq_key};
use crate::verify::{RecordedHead, VerifyReport, Walk};
use rocksdb::{DB, Direction, IteratorMode};

/// Session summaries with the events past their mark applied.
type Pending = Arc<HashMap<String, SessionSummary>>;

/// The events past the search indexes' mark, by session: their seqs.
type Unindexed = Arc<HashMap<String, Vec<u64>>>;

/// A read-only view of a log, safe to open while a gateway process is writing to it (it takes
/// no lock). It sees the events committed when it was opened; open a new one to see more.
pub struct LogReader {
    db: Arc<DB>,
    /// Summaries with the events past their mark applied (see `summaries.rs`), read once.
    pending: Mutex<Option<Pending>>,
    /// The events past the search indexes' mark by session, read once (a bundle lists many
    /// sessions; right after an upgrade, the mark is 0 until the indexes are rebuilt).
    unindexed: Mutex<Option<Unindexed>>,
}

impl LogReader {
    /// Open the log in `dir` read-only.
    pub fn open(dir: &Path) -> Result<LogReader, RecorderError> {
        Ok(LogReader::over(Arc::new(store::open_ro(dir)?)))
    }

    /// A view of the writer's own database, in its process: nothing is opened and no WAL is
    /// replayed. Unlike [`LogReader::open`]'s, this view is live: it also sees what is
    /// committed after it was made, and events not yet durable. For the shipper, which reads
    /// only what is durable and never changes (events and checkpoints up to a durable seq,
    /// the floor). Hold it briefly: the writer waits for every handle to go before it reopens
    /// the database after a failed write.
    pub(crate) fn live(db: Arc<DB>) -> LogReader {
        LogReader::over(db)
    }

    fn over(db: Arc<DB>) -> LogReader {
        LogReader {
            db,
            pending: Mutex::new(None),
            unindexed: Mutex::new(None),
        }
    }

    /// Summaries whose counters the writer had not written when this view was opened, as
    /// they are (computed at first use; the view does not change).
    fn pending(&self) -> Result<Pending, RecorderError> {
        let mut g = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = g.as_ref() {
            return Ok(p.clone());
        }
        let p = Arc::new(crate::summaries::pending_summaries(&self.db)?);
        *g = Some(p.clone());
        Ok(p)
    }

    /// The events past `indexed` (the indexes' mark, at least the floor) by session
    /// (computed at first use; the view does not change).
    fn unindexed(&self, indexed: u64) -> Result<Unindexed, RecorderError> {
        let mut g = self.unindexed.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(u) = g.as_ref() {
            return Ok(u.clone());
        }
        let mut by_session: HashMap<String, Vec<u64>> = HashMap::new();
        crate::search::events_in(&self.db, indexed.saturating_add(1)..=u64::MAX, |seq, ev| {
            by_session.entry(ev.session_id).or_default().push(seq);
            Ok(())
        })?;
        let u = Arc::new(by_session);
        *g = Some(u.clone());
        Ok(u)
    }

    /// All sessions, newest first (by start time, then by first seq).
    pub fn sessions(&self) -> Result<Vec<SessionSummary>, RecorderError> {
        let cf = store::cf(&self.db, CF_SESSIONS)?;
        // Counters the writer has not written yet: the events past the mark, applied.
        let pending = self.pending()?;
        let mut left: HashSet<&str> = pending.keys().map(String::as_str).collect();
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item.map_err(RecorderError::read)?;
            if let Some((id, s)) = std::str::from_utf8(&k)
                .ok()
                .and_then(|id| pending.get_key_value(id))
            {
                left.remove(id.as_str());
                out.push(s.clone());
                continue;
            }
            let s: SessionSummary = serde_json::from_slice(&v).map_err(|e| {
                RecorderError::Corrupt(format!(
                    "unreadable summary of session `{}`: {e}",
                    String::from_utf8_lossy(&k)
                ))
            })?;
            out.push(s);
        }
        // Sessions whose first events are past the mark (normally written at once; after a
        // crash, perhaps not).
        out.extend(left.into_iter().filter_map(|id| pending.get(id)).cloned());
        out.sort_by(|a, b| {
            b.start_us
                .cmp(&a.start_us)
                .then_with(|| b.first_seq.cmp(&a.first_seq))
        });
        Ok(out)
    }

    /// The summary of one session.
    pub fn session(&self, id: &str) -> Result<Option<SessionSummary>, RecorderError> {
        if let Some(s) = self.pending()?.get(id) {
            return Ok(Some(s.clone()));
        }
        let cf = store::cf(&self.db, CF_SESSIONS)?;
        match self.db.get_cf(cf, id.as_bytes()).map_err(RecorderError::read)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| RecorderError::Corrupt(format!("unreadable summary of session `{id}`: {e}"))),
        }
    }

    /// Every event of one session, in log order (empty when the session is unknown).
    ///
    /// Its events are found through the search indexes' session term, and the events past
    /// their mark by reading them, once per view (normally a few milliseconds of them; the
    /// whole log while the indexes are rebuilt after an upgrade).
    pub fn session_events(&self, id: &str) -> Result<Vec<Event>, RecorderError> {
        // Events at or below the floor (or a retention deletion in progress) are gone or
        // going: skipped, not reported.
        let floor = store::effective_floor(&self.db)?;
        let indexed = store::indexed_through(&self.db).max(floor);
        let mut seqs = Vec::new();
        crate::search::session_seqs(&self.db, id, floor, indexed, &mut seqs)?;
        if let Some(past) = self.unindexed(indexed)?.get(id) {
            seqs.extend_from_slice(past);
        }
        seqs.sort_unstable();
        seqs.dedup();
        let cf_events = store::cf(&self.db, CF_EVENTS)?;
        let keys: Vec<[u8; 8]> = seqs.iter().map(|s| seq_key(*s)).collect();
        let mut out = Vec::with_capacity(seqs.len());
        for (seq, v) in seqs
            .iter()
            .zip(self.db.batched_multi_get_cf(cf_events, &keys, true))
        {
            // The indexes are derived data: an entry whose event is gone, or is another
            // session's (a damaged posting list that still decodes), is skipped, as searches
            // skip it; `audit verify` judges the log itself.
            let Some(v) = v.map_err(RecorderError::read)? else {
                tracing::warn!(
                    seq = *seq,
                    session = id,
                    "a session index entry names a missing event"
                );
                continue;
            };
            let ev = decode_event(*seq, &v)?;
            if ev.session_id != id {
                tracing::warn!(
                    seq = *seq,
                    session = id,
                    "a session index entry names another session's event"
                );
                continue;
            }
            out.push(ev);
        }
        Ok(out)
    }

    /// Up to `limit` events starting at `from_seq`, in order.
    pub fn events(&self, from_seq: u64, limit: usize) -> Result<Vec<Event>, RecorderError> {
        let cf = store::cf(&self.db, CF_EVENTS)?;
        let start = seq_key(from_seq);
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&start, Direction::Forward))
        {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(RecorderError::read)?;
            let seq =
                seq_from_key(&k).ok_or_else(|| RecorderError::Corrupt("malformed event key".to_string()))?;
            out.push(decode_event(seq, &v)?);
        }
        Ok(out)
    }

    /// Call `f(seq, stored bytes)` for each event from `from_seq` on, in order, until it returns
    /// `Ok(false)` or an error.
    pub(crate) fn for_each_stored(
        &self,
        from_seq: u64,
        mut f: impl FnMut(u64, &[u8]) -> Result<bool, RecorderError>,
    ) -> Result<(), RecorderError> {
        let cf = store::cf(&self.db, CF_EVENTS)?;
        let start = seq_key(from_seq);
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&start, Direction::Forward))
        {
            let (k, v) = item.map_err(RecorderError::read)?;
            let seq =
                seq_from_key(&k).ok_or_else(|| RecorderError::Corrupt("malformed event key".to_string()))?;
            if !f(seq, &v)? {
                break;
            }
        }
        Ok(())
    }

    /// Seq of the last event (0: empty log).
    pub fn last_seq(&self) -> Result<u64, RecorderError> {
        Ok(store::last_event(&self.db)?.map(|h| h.seq).unwrap_or(0))
    }

    /// Where the log starts, if local retention deleted older events.
    pub fn floor(&self) -> Result<Option<store::Floor>, RecorderError> {
        store::floor(&self.db)
    }

    /// Events up to this seq are deleted, or being deleted by a retention job in progress
    /// (0: none). Listings and searches leave them out.
    pub fn effective_floor(&self) -> Result<u64, RecorderError> {
        store::effective_floor(&self.db)
    }

    /// Where the log starts, if it was restored from a sink that had expired its oldest
    /// segments (see [`store::RestoredStart`]).
    pub fn restored_start(&self) -> Result<Option<store::RestoredStart>, RecorderError> {
        store::restored_start(&self.db)
    }

    /// Every signed checkpoint of the log, in seq order.
    pub fn checkpoints(&self) -> Result<Vec<Checkpoint>, RecorderError> {
        store::checkpoints(&self.db)
    }

    /// Events matching `q`, newest first, from the search indexes (see [`crate::search`]).
    pub fn search(
        &self,
        q: &crate::search::SearchQuery,
    ) -> Result<crate::search::SearchResult, RecorderError> {
        crate::search::search(&self.db, q)
    }

    /// The first checkpoint covering `seq` (its seq is `seq` or later), if any.
    pub fn checkpoint_at_or_after(&self, seq: u64) -> Result<Option<Checkpoint>, RecorderError> {
        store::checkpoint_at_or_after(&self.db, seq)
    }

    /// Verify the whole log from seq 1: recompute every hash from the stored bytes, check every
    /// link, the sequence, the recorded head, and every checkpoint against `keys` (see
    /// [`crate::verify`] for what this does and does not detect). An `Err` means the log could
    /// not be read at all.
    pub fn verify(&self, keys: &PublicKeys) -> Result<VerifyReport, RecorderError> {
        let cf = store::cf(&self.db, CF_EVENTS)?;
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for r in store::checkpoint_records(&self.db)? {
            match r {
                Ok(cp) => good.push(cp),
                Err(u) => bad.push(u),
            }
        }
        let mut walk = Walk::new(keys, Vec::new(), 1);
        let floor = match store::floor(&self.db) {
            Ok(f) => f,
            Err(RecorderError::Corrupt(why)) => {
                walk.bad_container(1, format!("the log's floor record is unreadable ({why})"));
                None
            }
            Err(e) => return Err(e),
        };
        if let Some(f) = &floor {
            walk.start_at_floor(f, good.iter().find(|c| c.seq == f.seq));
        } else {
            // A log restored from a sink that had expired its oldest segments.
            match store::restored_start(&self.db) {
                Ok(Some(r)) => walk.start_at_restored(&r),
                Ok(None) => {}
                Err(RecorderError::Corrupt(why)) => {
                    walk.bad_container(
                        1,
                        format!("the restored log's start record is unreadable ({why})"),
                    );
                }
                Err(e) => return Err(e),
            }
        }
        for cp in good {
            walk.add_checkpoint(cp);
        }
        for u in bad {
            walk.unreadable_checkpoint(u.seq, u.at);
        }
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item.map_err(RecorderError::read)?;
            match seq_from_key(&k) {
                Some(seq) => walk.event(seq, &v),
                None => walk.malformed_key(&k),
            }
        }
        // An unreadable marker vouches for nothing, like a missing one.
        let head = match store::meta_head(&self.db) {
            Ok(Some(h)) => RecordedHead::Marker(h.seq, h.hash),
            Ok(None) | Err(RecorderError::Corrupt(_)) => RecordedHead::MissingMarker,
            Err(e) => return Err(e),
        };
        Ok(walk.finish(head))
    }

    /// [`LogReader::verify`] without keys: the chain's internal consistency only.
    pub fn verify_chain(&self) -> Result<VerifyReport, RecorderError> {
        self.verify(&PublicKeys::default())
    }
}

fn decode_event(seq: u64, v: &[u8]) -> Result<Event, RecorderError> {
    serde_json::from_slice(v).map_err(|e| RecorderError::Corrupt(format!("event {seq} is undecodable: {e}")))
}
