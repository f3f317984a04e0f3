//! Session summaries: how they follow the events, and how readers see them exactly.
//!
//! A [`SessionSummary`] is derived from its session's events. Writing it at every event made
//! the `sessions` column family take an entry for nearly every event under load (64 sessions
//! with a statement each in flight: ~0.85 summary per event, each a JSON value inserted at a
//! random place of the memtable), which was the largest single cost of the writer thread after
//! the events themselves. So the writer now writes a session's summary:
//! - in the batch of any event that changes more than its counters: the session's first
//!   event, its start, end, failed authentication, access steps, a principal filled in, and
//!   any event of an ended session ([`apply_event`] says which);
//! - otherwise (decisions, results, notices, masking, votes: `last_seq`, `ops`, `denied`) with
//!   the next flush of every pending summary, at most [`SUMMARY_FLUSH`] later, at shutdown, or
//!   when retention starts (with its marker). A batch that leaves nothing pending moves the
//!   mark too. A flush writes, in the same batch, the mark
//!   `meta/summaries_through` (u64 BE): every summary holds every event up to it.
//!
//! Readers ([`pending_summaries`]) apply the events past the mark to the stored summaries, so
//! a listing is exact at any moment, as searches are past the search indexes' mark. Applying an
//! event is skipped when the stored summary already holds it (its `last_seq` is at or past the
//! event's seq), which makes it safe to apply a range twice. At start (and when the writer
//! reopens the log after a failed write), the writer applies the events a crash left past the
//! mark and writes the result. A log without the mark (written by an earlier version, which
//! wrote every summary at every event) has nothing pending.

use std::collections::HashMap;
use std::time::Duration;

use rocksdb::{DB, Direction, IteratorMode, WriteBatch};

use crate::error::RecorderError;
use crate::event::{Event, EventBody};
use crate::store::{self, CF_EVENTS, CF_META, CF_SESSIONS, SessionSummary, seq_from_key, seq_key};

/// Summaries hold every event through this seq (u64 BE).
pub(crate) const META_SUMMARIES: &[u8] = b"summaries_through";

/// Longest a summary's counters stay unwritten (readers apply the events meanwhile).
pub(crate) const SUMMARY_FLUSH: Duration = Duration::from_millis(100);

/// Apply `ev` to its session's summary (`None`: the session's first event). Returns whether
/// the summary changed in more than its counters (`last_seq`, `ops`, `denied`), in which case
/// the writer writes it in the event's own batch.
pub(crate) fn apply_event(s: &mut Option<SessionSummary>, ev: &Event) -> bool {
    let summary = match s {
        Some(s) => s,
        None => {
            let mut stub = SessionSummary::stub(&ev.session_id, ev.principal.clone(), ev.time_us, ev.seq);
            update(&mut stub, &ev.body, ev.principal.as_deref(), ev.time_us, ev.seq);
            *s = Some(stub);
            return true;
        }
    };
    let had_principal = summary.principal.is_some();
    update(summary, &ev.body, ev.principal.as_deref(), ev.time_us, ev.seq);
    // An ended session's late events (a result after the end) are written at once too: the
    // writer keeps no ended session in memory to flush later.
    summary.is_ended()
        || (!had_principal && summary.principal.is_some())
        || matches!(
            ev.body,
            EventBody::SessionStart { .. }
                | EventBody::AuthFailure { .. }
                | EventBody::SessionEnd { .. }
                | EventBody::Access { .. }
        )
}

/// The mark, if the log has one (an earlier version's log has none). A malformed one counts as
/// 0: every event is applied (which is safe, only slower).
pub(crate) fn mark(db: &DB) -> Result<Option<u64>, RecorderError> {
    Ok(db
        .get_cf(store::cf(db, CF_META)?, META_SUMMARIES)
        .map_err(RecorderError::read)?
        .map(|v| seq_from_key(&v).unwrap_or(0)))
}

/// The summaries of the sessions with events past the mark, with those events applied (the
/// others are exact as stored).
pub(crate) fn pending_summaries(db: &DB) -> Result<HashMap<String, SessionSummary>, RecorderError> {
    apply_past_mark(db, true)
}

/// [`pending_summaries`]; `strict`: an unreadable stored summary is an error (readers), or is
/// rebuilt from the events past the mark with a warning (the writer, which must start).
fn apply_past_mark(db: &DB, strict: bool) -> Result<HashMap<String, SessionSummary>, RecorderError> {
    // Per session: its summary, and whether an event was applied to it.
    let mut out: HashMap<String, (Option<SessionSummary>, bool)> = HashMap::new();
    let Some(mark) = mark(db)? else {
        return Ok(HashMap::new());
    };
    // An earlier version ran on the log since this one last started (it moves its own index
    // mark, which this version holds at 0): it wrote every summary at every event.
    if store::old_index_mark_moved(db)? {
        return Ok(HashMap::new());
    }
    let from = mark.max(store::effective_floor(db)?).saturating_add(1);
    let (cf_events, cf_sessions) = (store::cf(db, CF_EVENTS)?, store::cf(db, CF_SESSIONS)?);
    for item in db.iterator_cf(cf_events, IteratorMode::From(&seq_key(from), Direction::Forward)) {
        let (k, v) = item.map_err(RecorderError::read)?;
        let Some(seq) = seq_from_key(&k) else { continue };
        // An undecodable event changes no summary (`verify` reports it).
        let Ok(ev) = serde_json::from_slice::<Event>(&v) else {
            continue;
        };
        if ev.seq != seq {
            continue;
        }
        if !out.contains_key(&ev.session_id) {
            let stored = db
                .get_cf(cf_sessions, ev.session_id.as_bytes())
                .map_err(RecorderError::read)?
                .and_then(|v| match serde_json::from_slice::<SessionSummary>(&v) {
                    Ok(s) => Some(Ok(s)),
                    Err(e) => {
                        let why = format!("unreadable summary of session `{}`: {e}", ev.session_id);
                        if strict {
                            Some(Err(RecorderError::Corrupt(why)))
                        } else {
                            tracing::warn!("{why}; rebuilt from its events past the summaries' mark");
                            None
                        }
                    }
                })
                .transpose()?;
            out.insert(ev.session_id.clone(), (stored, false));
        }
        if let Some((s, applied)) = out.get_mut(&ev.session_id) {
            if s.as_ref().is_some_and(|s| s.last_seq >= seq) {
                continue;
            }
            apply_event(s, &ev);
            *applied = true;
        }
    }
    Ok(out
        .into_iter()
        .filter_map(|(id, (s, applied))| s.filter(|_| applied).map(|s| (id, s)))
        .collect())
}

/// Bring the stored summaries up to the log's head (after a crash) and set the mark there.
/// Called by the writer before it takes events. Also after an earlier version ran on the log
/// (which does not move the mark): applying is idempotent, so its summaries stay as written.
pub(crate) fn catch_up(db: &DB, head: u64) -> Result<(), RecorderError> {
    let pending = apply_past_mark(db, false)?;
    if !pending.is_empty() {
        tracing::info!(
            sessions = pending.len(),
            "session summaries brought up to the last events"
        );
    }
    let mut wb = WriteBatch::default();
    let cf_sessions = store::cf(db, CF_SESSIONS)?;
    for (id, s) in &pending {
        let v = serde_json::to_vec(s).map_err(|e| RecorderError::Encode(e.to_string()))?;
        wb.put_cf(cf_sessions, id.as_bytes(), v);
    }
    wb.put_cf(store::cf(db, CF_META)?, META_SUMMARIES, seq_key(head));
    db.write(wb).map_err(|e| RecorderError::Write(e.to_string()))
}

fn update(s: &mut SessionSummary, body: &EventBody, principal: Option<&str>, time_us: i64, seq: u64) {
    s.last_seq = seq;
    // An auth failure names no verified identity, whatever the caller passed.
    let failed_auth = matches!(body, EventBody::AuthFailure { .. });
    if s.principal.is_none()
        && !failed_auth
        && let Some(p) = principal
    {
        s.principal = Some(p.to_string());
    }
    match body {
        EventBody::SessionStart {
            protocol,
            source,
            target,
            client_app,
            auth_method,
            principal,
            ..
        } => {
            s.principal = Some(principal.display());
            s.protocol.clone_from(protocol);
            s.source.clone_from(source);
            s.target.clone_from(target);
            s.client_app.clone_from(client_app);
            s.auth_method = Some(auth_method.clone());
            s.start_us = time_us;
        }
        EventBody::AuthFailure {
            protocol,
            source,
            user,
            target,
            reason,
        } => {
            s.protocol.clone_from(protocol);
            s.source.clone_from(source);
            s.target.clone_from(target);
            s.user = Some(user.clone());
            s.auth_failed = true;
            s.end_us = Some(time_us);
            s.end_reason = Some(format!("authentication failed: {reason}"));
        }
        // A held operation is decided twice (the hold, then its outcome): one op, denied only
        // by the outcome.
        EventBody::Decision {
            verdict,
            hold,
            approval,
            ..
        } => {
            if approval.is_none() {
                s.ops += 1;
            }
            if !verdict.is_allow() && hold.is_none() {
                s.denied += 1;
            }
        }
        EventBody::SessionEnd { reason, .. } => {
            s.end_us = Some(time_us);
            s.end_reason = Some(reason.clone());
        }
        EventBody::OpResult { .. }
        | EventBody::Notice { .. }
        | EventBody::Masking { .. }
        | EventBody::ApprovalVote { .. } => {}
        EventBody::Access { target, .. } => {
            if s.target.is_empty() {
                s.target = target.clone();
            }
            if s.protocol.is_empty() {
                s.protocol = "access".to_string();
            }
        }
    }
}

/// Events applied between two writes of [`rebuild`]: what it holds in memory is the summaries
/// of the sessions with events among them.
const REBUILD_CHUNK: u64 = 100_000;

/// Build every session's summary from the events through `head`, in order (a restored log:
/// `restore.rs`), writing the summaries touched and the mark every [`REBUILD_CHUNK`] events
/// so that memory stays bounded however many sessions the log holds. Events a stored summary
/// already holds are skipped, as readers skip them.
pub(crate) fn rebuild(db: &DB, head: u64) -> Result<(), RecorderError> {
    rebuild_in_chunks(db, head, REBUILD_CHUNK)
}

/// [`rebuild`], writing every `chunk` events.
pub(crate) fn rebuild_in_chunks(db: &DB, head: u64, chunk: u64) -> Result<(), RecorderError> {
    let chunk = chunk.max(1);
    let (cf_events, cf_sessions) = (store::cf(db, CF_EVENTS)?, store::cf(db, CF_SESSIONS)?);
    let mut touched: HashMap<String, Option<SessionSummary>> = HashMap::new();
    let mut applied = 0u64;
    for item in db.iterator_cf(cf_events, IteratorMode::Start) {
        let (k, v) = item.map_err(RecorderError::read)?;
        let Some(seq) = seq_from_key(&k) else { continue };
        if seq > head {
            break;
        }
        // An undecodable event changes no summary (`verify` reports it).
        let Ok(ev) = serde_json::from_slice::<Event>(&v) else {
            continue;
        };
        if ev.seq != seq {
            continue;
        }
        if !touched.contains_key(&ev.session_id) {
            let stored = db
                .get_cf(cf_sessions, ev.session_id.as_bytes())
                .map_err(RecorderError::read)?
                .map(|v| serde_json::from_slice::<SessionSummary>(&v))
                .transpose()
                .map_err(|e| {
                    RecorderError::Corrupt(format!("unreadable summary of session `{}`: {e}", ev.session_id))
                })?;
            touched.insert(ev.session_id.clone(), stored);
        }
        if let Some(s) = touched.get_mut(&ev.session_id) {
            if s.as_ref().is_some_and(|s| s.last_seq >= seq) {
                continue;
            }
            apply_event(s, &ev);
        }
        applied += 1;
        if applied.is_multiple_of(chunk) {
            write_summaries(db, &mut touched, seq)?;
        }
    }
    write_summaries(db, &mut touched, head)
}

/// Write `touched` (emptying it) and the mark at `through`, in one batch.
fn write_summaries(
    db: &DB,
    touched: &mut HashMap<String, Option<SessionSummary>>,
    through: u64,
) -> Result<(), RecorderError> {
    let mut wb = WriteBatch::default();
    let cf_sessions = store::cf(db, CF_SESSIONS)?;
    for (id, s) in touched.drain() {
        if let Some(s) = s {
            let v = serde_json::to_vec(&s).map_err(|e| RecorderError::Encode(e.to_string()))?;
            wb.put_cf(cf_sessions, id.as_bytes(), v);
        }
    }
    wb.put_cf(store::cf(db, CF_META)?, META_SUMMARIES, seq_key(through));
    db.write(wb).map_err(|e| RecorderError::Write(e.to_string()))
}
