//! The read side: listing, per-session events, paging and chain verification.

use std::path::Path;

use rocksdb::{DB, Direction, IteratorMode};
use serde::Serialize;

use crate::error::RecorderError;
use crate::event::{Event, GENESIS_HASH, canonical_from_stored, chain_hash, decode_hash};
use crate::store::{
    self, CF_BY_SESSION, CF_EVENTS, CF_SESSIONS, SessionSummary, seq_from_key, seq_key, session_prefix,
};

/// A read-only view of a log, safe to open while a gateway process is writing to it (it takes
/// no lock). It sees the events committed when it was opened; open a new one to see more.
pub struct LogReader {
    db: DB,
}

/// The first broken link found by [`LogReader::verify_chain`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokenLink {
    /// Seq of the first event that does not verify (for a missing event: the seq expected).
    pub seq: u64,
    pub reason: String,
}

/// Outcome of [`LogReader::verify_chain`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Events whose hash and link verified.
    pub events_checked: u64,
    /// Seq and hash of the last verified event (0 and the genesis hash for an empty log).
    pub last_seq: u64,
    pub last_hash: String,
    /// `None` when the whole log verifies.
    pub broken: Option<BrokenLink>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.broken.is_none()
    }
}

impl LogReader {
    /// Open the log in `dir` read-only.
    pub fn open(dir: &Path) -> Result<LogReader, RecorderError> {
        Ok(LogReader {
            db: store::open_ro(dir)?,
        })
    }

    /// All sessions, newest first (by start time, then by first seq).
    pub fn sessions(&self) -> Result<Vec<SessionSummary>, RecorderError> {
        let cf = store::cf(&self.db, CF_SESSIONS)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item.map_err(RecorderError::read)?;
            let s: SessionSummary = serde_json::from_slice(&v).map_err(|e| {
                RecorderError::Corrupt(format!(
                    "unreadable summary of session `{}`: {e}",
                    String::from_utf8_lossy(&k)
                ))
            })?;
            out.push(s);
        }
        out.sort_by(|a, b| {
            b.start_us
                .cmp(&a.start_us)
                .then_with(|| b.first_seq.cmp(&a.first_seq))
        });
        Ok(out)
    }

    /// The summary of one session.
    pub fn session(&self, id: &str) -> Result<Option<SessionSummary>, RecorderError> {
        let cf = store::cf(&self.db, CF_SESSIONS)?;
        match self.db.get_cf(cf, id.as_bytes()).map_err(RecorderError::read)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| RecorderError::Corrupt(format!("unreadable summary of session `{id}`: {e}"))),
        }
    }

    /// Every event of one session, in log order (empty when the session is unknown).
    pub fn session_events(&self, id: &str) -> Result<Vec<Event>, RecorderError> {
        let prefix = session_prefix(id);
        let cf = store::cf(&self.db, CF_BY_SESSION)?;
        let mut seqs = Vec::new();
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&prefix, Direction::Forward))
        {
            let (k, _) = item.map_err(RecorderError::read)?;
            let Some(rest) = k.strip_prefix(prefix.as_slice()) else {
                break;
            };
            // A longer key sharing the prefix would belong to an id containing NUL, which the
            // writer refuses; skip rather than misattribute.
            if let Some(seq) = seq_from_key(rest) {
                seqs.push(seq);
            }
        }
        let cf_events = store::cf(&self.db, CF_EVENTS)?;
        let keys: Vec<[u8; 8]> = seqs.iter().map(|s| seq_key(*s)).collect();
        let mut out = Vec::with_capacity(seqs.len());
        for (seq, v) in seqs
            .iter()
            .zip(self.db.batched_multi_get_cf(cf_events, &keys, true))
        {
            let v = v
                .map_err(RecorderError::read)?
                .ok_or_else(|| RecorderError::Corrupt(format!("indexed event {seq} is missing")))?;
            out.push(decode_event(*seq, &v)?);
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

    /// Seq of the last event (0: empty log).
    pub fn last_seq(&self) -> Result<u64, RecorderError> {
        Ok(store::last_event(&self.db)?.map(|h| h.seq).unwrap_or(0))
    }

    /// Walk the whole log from seq 1: recompute every hash from the stored bytes, check every
    /// link and the seq sequence, and check the recorded chain head. Stops at the first broken
    /// link. An `Err` means the log could not be read at all.
    pub fn verify_chain(&self) -> Result<VerifyReport, RecorderError> {
        let cf = store::cf(&self.db, CF_EVENTS)?;
        let mut prev = [0u8; 32];
        let mut prev_seq = 0u64;
        let mut checked = 0u64;
        let report = |checked, seq, prev: &[u8; 32], broken: Option<BrokenLink>| VerifyReport {
            events_checked: checked,
            last_seq: seq,
            last_hash: hex::encode(prev),
            broken,
        };
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item.map_err(RecorderError::read)?;
            let expected = prev_seq + 1;
            let broken = |reason: String| {
                Some(BrokenLink {
                    seq: expected,
                    reason,
                })
            };
            let Some(seq) = seq_from_key(&k) else {
                return Ok(report(
                    checked,
                    prev_seq,
                    &prev,
                    broken("malformed event key".into()),
                ));
            };
            if seq != expected {
                let reason = format!("event {expected} is missing (next stored event is {seq})");
                return Ok(report(checked, prev_seq, &prev, broken(reason)));
            }
            if let Err(reason) = check_event(seq, &v, &prev) {
                return Ok(report(checked, prev_seq, &prev, broken(reason)));
            }
            match canonical_from_stored(&v) {
                Some((_, h)) => prev = h,
                None => {
                    return Ok(report(checked, prev_seq, &prev, broken("malformed".into())));
                }
            }
            prev_seq = seq;
            checked += 1;
        }
        // The head in meta is written with every batch; a head beyond the last event means
        // events were cut off the end.
        match store::meta_head(&self.db)? {
            None if prev_seq == 0 => {}
            None => {
                let b = BrokenLink {
                    seq: prev_seq,
                    reason: "the recorded chain head is missing".into(),
                };
                return Ok(report(checked, prev_seq, &prev, Some(b)));
            }
            Some(m) => {
                if m.seq != prev_seq || decode_hash(&m.hash) != Some(prev) {
                    let b = BrokenLink {
                        seq: prev_seq + 1,
                        reason: format!(
                            "the recorded chain head (seq {}) does not match the last event (seq {prev_seq})",
                            m.seq
                        ),
                    };
                    return Ok(report(checked, prev_seq, &prev, Some(b)));
                }
            }
        }
        Ok(report(checked, prev_seq, &prev, None))
    }
}

/// Check one stored event against its key's seq and the previous hash.
fn check_event(seq: u64, stored: &[u8], prev: &[u8; 32]) -> Result<(), String> {
    let (canonical, recorded) =
        canonical_from_stored(stored).ok_or_else(|| "not a v1 event record".to_string())?;
    let ev: Event = serde_json::from_slice(stored).map_err(|e| format!("undecodable event: {e}"))?;
    if ev.seq != seq {
        return Err(format!("stored under seq {seq} but claims seq {}", ev.seq));
    }
    if decode_hash(&ev.prev_hash) != Some(*prev) {
        return Err(if seq == 1 && ev.prev_hash != GENESIS_HASH {
            "first event does not start from the genesis hash".to_string()
        } else {
            "prev_hash does not match the previous event's hash".to_string()
        });
    }
    if chain_hash(prev, &canonical) != recorded {
        return Err("hash does not match the event's content".to_string());
    }
    Ok(())
}

fn decode_event(seq: u64, v: &[u8]) -> Result<Event, RecorderError> {
    serde_json::from_slice(v).map_err(|e| RecorderError::Corrupt(format!("event {seq} is undecodable: {e}")))
}
