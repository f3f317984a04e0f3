//! Search indexes and queries (`gatehouse audit search`, `GET /v1/audit/search`).
//!
//! The indexer thread (`indexer.rs`) writes index entries for committed events, trailing the
//! writer, and records how far it got (`meta/indexed`). A search reads the events past that
//! mark directly (normally a few, the indexer's lag), so an event is searchable exactly when it
//! is durable. One column family, `search`, keys only:
//!
//! `field ‖ value ‖ 0x00 ‖ time (u64 BE, sign bit flipped) ‖ seq (u64 BE)`
//!
//! | field | value |
//! |---|---|
//! | `p` | principal (`user:alice`, `agent:etl`) |
//! | `t` | target (from the session) |
//! | `k` | event kind (`decision`, `session_start`, …) |
//! | `d` | decision outcome (`allow`, `deny`, `hold`) |
//! | `y` | each policy id a decision cites |
//! | `w` | each word of a statement's text (lower case, letters, digits and `_`, 2–64 long) |
//! | `T` | (empty): every event by time |
//!
//! A query drives one index over its time range (the most selective condition it has, or time
//! alone), newest first, and checks every other condition with a point lookup of its exact
//! key; only matching events are read. Text matches events whose statement contains every word
//! of the query, then the whole query as a case-insensitive substring.

use gatehouse_core::Verdict;
use rocksdb::{DB, Direction, IteratorMode};
use serde::Serialize;

use crate::error::RecorderError;
use crate::event::{Event, EventBody};
use crate::store::{self, CF_EVENTS, seq_key};

/// The column family of the indexes.
pub(crate) const CF_SEARCH: &str = "search";

/// Most words of one statement indexed.
const MAX_WORDS: usize = 256;
/// Most results one query returns.
pub const MAX_RESULTS: usize = 10_000;

fn time_key(time_us: i64) -> [u8; 8] {
    ((time_us as u64) ^ (1 << 63)).to_be_bytes()
}

fn key(field: u8, value: &[u8], time_us: i64, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(value.len() + 18);
    k.push(field);
    k.extend_from_slice(value);
    k.push(0);
    k.extend_from_slice(&time_key(time_us));
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// (time, seq) from the last 16 bytes of an index key.
fn suffix(k: &[u8]) -> Option<(i64, u64)> {
    let n = k.len().checked_sub(16)?;
    let t: [u8; 8] = k.get(n..n + 8)?.try_into().ok()?;
    let s: [u8; 8] = k.get(n + 8..)?.try_into().ok()?;
    Some(((u64::from_be_bytes(t) ^ (1 << 63)) as i64, u64::from_be_bytes(s)))
}

/// The kind name of an event body, as in its JSON.
pub fn kind_name(body: &EventBody) -> &'static str {
    match body {
        EventBody::SessionStart { .. } => "session_start",
        EventBody::AuthFailure { .. } => "auth_failure",
        EventBody::Decision { .. } => "decision",
        EventBody::ApprovalVote { .. } => "approval_vote",
        EventBody::OpResult { .. } => "op_result",
        EventBody::SessionEnd { .. } => "session_end",
        EventBody::Notice { .. } => "notice",
        EventBody::Masking { .. } => "masking",
        EventBody::Access { .. } => "access",
    }
}

/// The words of `text` as indexed.
pub fn words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = text
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| (2..=64).contains(&w.chars().count()))
        .map(str::to_lowercase)
        .collect();
    out.sort();
    out.dedup();
    out.truncate(MAX_WORDS);
    out
}

/// The outcome of a decision event (`allow`, `deny`, `hold`).
fn outcome(body: &EventBody) -> Option<&'static str> {
    let EventBody::Decision { verdict, hold, .. } = body else {
        return None;
    };
    Some(if hold.is_some() {
        "hold"
    } else if verdict.is_allow() {
        "allow"
    } else {
        "deny"
    })
}

/// Most sessions a [`SessionContext`] remembers.
pub(crate) const SESSIONS_CACHE: usize = 10_000;

/// What index keys need from each session's summary (principal, target), read once per
/// session, for events indexed or matched after their commit. At most `max` sessions are
/// remembered.
pub(crate) struct SessionContext {
    known: std::collections::HashMap<String, (Option<String>, String)>,
    max: usize,
}

impl SessionContext {
    pub(crate) fn new(max: usize) -> SessionContext {
        SessionContext {
            known: std::collections::HashMap::new(),
            max,
        }
    }

    /// (principal, target) of `session_id`'s summary (none yet: nothing).
    pub(crate) fn get(
        &mut self,
        db: &DB,
        session_id: &str,
    ) -> Result<&(Option<String>, String), RecorderError> {
        if !self.known.contains_key(session_id) {
            if self.known.len() >= self.max {
                self.known.clear();
            }
            let s = db
                .get_cf(store::cf(db, store::CF_SESSIONS)?, session_id.as_bytes())
                .map_err(RecorderError::read)?
                .and_then(|v| serde_json::from_slice::<store::SessionSummary>(&v).ok())
                .map(|s| (s.principal, s.target))
                .unwrap_or_default();
            self.known.insert(session_id.to_string(), s);
        }
        self.known
            .get(session_id)
            .ok_or_else(|| RecorderError::Corrupt("session context vanished".to_string()))
    }
}

/// Index keys for `ev`, whose session has `principal` and `target` (from its summary).
pub(crate) fn index_keys(ev: &Event, principal: Option<&str>, target: &str) -> Vec<Vec<u8>> {
    let (t, s) = (ev.time_us, ev.seq);
    let mut out = vec![
        key(b'T', b"", t, s),
        key(b'k', kind_name(&ev.body).as_bytes(), t, s),
    ];
    let mut add = |field: u8, value: &str| {
        if !value.is_empty() && !value.as_bytes().contains(&0) {
            out.push(key(field, value.as_bytes(), t, s));
        }
    };
    if let Some(p) = ev.principal.as_deref().or(principal) {
        add(b'p', p);
    }
    let target = match &ev.body {
        EventBody::AuthFailure { target, .. } | EventBody::SessionStart { target, .. } => target.as_str(),
        _ => target,
    };
    add(b't', target);
    if let Some(o) = outcome(&ev.body) {
        add(b'd', o);
    }
    if let EventBody::Decision {
        verdict, statement, ..
    } = &ev.body
    {
        let (Verdict::Allow { policy_ids } | Verdict::Deny { policy_ids, .. }) = verdict;
        for id in policy_ids {
            add(b'y', id);
        }
        if let Some(st) = statement {
            for w in words(&st.text) {
                add(b'w', &w);
            }
        }
    }
    out
}

/// What to look for; every given condition must hold.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    pub principal: Option<String>,
    pub target: Option<String>,
    /// Event kind (`decision`, `session_start`, …).
    pub kind: Option<String>,
    /// `allow`, `deny` or `hold`.
    pub decision: Option<String>,
    pub policy: Option<String>,
    /// Text in a statement.
    pub text: Option<String>,
    /// Window, µs since the epoch, inclusive.
    pub from_us: i64,
    pub to_us: i64,
    /// Most results (newest first).
    pub limit: usize,
}

/// What a search found.
#[derive(Debug, Clone, Serialize)]
pub struct SearchResult {
    pub events: Vec<Event>,
    /// More events matched than `limit`.
    pub truncated: bool,
    /// Index entries read to answer (for the curious and the benchmarks).
    pub scanned: u64,
    /// Events not indexed yet, read one by one (the indexer's lag).
    pub unindexed: u64,
}

/// Does `ev` (with its session's principal and target) meet every condition? The same test the
/// indexes answer, for events they do not cover yet.
fn matches_unindexed(
    ev: &Event,
    principal: Option<&str>,
    target: &str,
    conds: &[(u8, Vec<u8>)],
    q: &SearchQuery,
) -> bool {
    if ev.time_us < q.from_us || ev.time_us > q.to_us {
        return false;
    }
    let keys = index_keys(ev, principal, target);
    conds
        .iter()
        .all(|(f, v)| keys.contains(&key(*f, v, ev.time_us, ev.seq)))
}

/// Does the statement of `ev` contain `needle` (lower case)?
fn text_hit(ev: &Event, needle: &str) -> bool {
    matches!(&ev.body, EventBody::Decision { statement: Some(s), .. }
        if s.text.to_lowercase().contains(needle))
}

/// Events past the indexes' mark that match, newest first by (time, seq); at most `keep`.
fn unindexed_matches(
    db: &DB,
    indexed: u64,
    conds: &[(u8, Vec<u8>)],
    needle: Option<&str>,
    q: &SearchQuery,
    keep: usize,
    result: &mut SearchResult,
) -> Result<Vec<Event>, RecorderError> {
    let cf_events = store::cf(db, CF_EVENTS)?;
    let mut sessions = SessionContext::new(SESSIONS_CACHE);
    let mut found = std::collections::BinaryHeap::new();
    let start = seq_key(indexed.saturating_add(1));
    for item in db.iterator_cf(cf_events, IteratorMode::From(&start, Direction::Forward)) {
        let (_, v) = item.map_err(RecorderError::read)?;
        result.unindexed += 1;
        // Undecodable events are `audit verify`'s to report; the indexes skip them too.
        let Ok(ev) = serde_json::from_slice::<Event>(&v) else {
            continue;
        };
        let (principal, target) = sessions.get(db, &ev.session_id)?;
        if matches_unindexed(&ev, principal.as_deref(), target, conds, q)
            && needle.is_none_or(|n| text_hit(&ev, n))
        {
            // Only the newest `keep` are kept, however far behind the indexes are.
            found.push(Oldest(ev));
            if found.len() > keep {
                found.pop();
            }
        }
    }
    Ok(found.into_sorted_vec().into_iter().map(|o| o.0).collect())
}

/// Orders events so that a max-heap's top is the oldest by (time, seq), and a sorted vector
/// is newest first.
struct Oldest(Event);

impl Oldest {
    fn key(&self) -> (i64, u64) {
        (self.0.time_us, self.0.seq)
    }
}

impl PartialEq for Oldest {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Oldest {}

impl PartialOrd for Oldest {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Oldest {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.key().cmp(&self.key())
    }
}

/// Run `q` against the indexes of `db`.
pub(crate) fn search(db: &DB, q: &SearchQuery) -> Result<SearchResult, RecorderError> {
    let mut result = SearchResult {
        events: Vec::new(),
        truncated: false,
        scanned: 0,
        unindexed: 0,
    };
    let Some(cf) = db.cf_handle(CF_SEARCH) else {
        return Ok(result);
    };
    if q.from_us > q.to_us {
        return Ok(result);
    }
    let limit = q.limit.clamp(1, MAX_RESULTS);
    // Conditions, most selective first (a guess: policy ids and rare words narrow most).
    let mut conds: Vec<(u8, Vec<u8>)> = Vec::new();
    if let Some(p) = &q.policy {
        conds.push((b'y', p.as_bytes().to_vec()));
    }
    let text = q.text.as_deref().map(str::trim).filter(|t| !t.is_empty());
    if let Some(t) = text {
        let mut ws = words(t);
        ws.sort_by_key(|w| std::cmp::Reverse(w.len()));
        conds.extend(ws.into_iter().map(|w| (b'w', w.into_bytes())));
    }
    if let Some(p) = &q.principal {
        conds.push((b'p', p.as_bytes().to_vec()));
    }
    if let Some(t) = &q.target {
        conds.push((b't', t.as_bytes().to_vec()));
    }
    if let Some(d) = &q.decision {
        conds.push((b'd', d.as_bytes().to_vec()));
    }
    if let Some(k) = &q.kind {
        conds.push((b'k', k.as_bytes().to_vec()));
    }
    if conds.iter().any(|(_, v)| v.contains(&0)) {
        return Ok(result);
    }
    let (field, value) = conds.first().cloned().unwrap_or((b'T', Vec::new()));
    let rest = conds.get(1..).unwrap_or_default();
    let low = key(field, &value, q.from_us, 0);
    let high = key(field, &value, q.to_us, u64::MAX);
    let needle = text.map(str::to_lowercase);
    let cf_events = store::cf(db, CF_EVENTS)?;
    // Events retention deleted, or is deleting (their index entries may be half gone).
    let floor = store::effective_floor(db)?;
    // Events the indexer has not reached: read, and merged in by (time, seq).
    let indexed = store::indexed_through(db).max(floor);
    let mut newer = unindexed_matches(db, indexed, &conds, needle.as_deref(), q, limit + 1, &mut result)?
        .into_iter()
        .peekable();
    let push = |result: &mut SearchResult, ev: Event| {
        if result.events.len() == limit {
            result.truncated = true;
            false
        } else {
            result.events.push(ev);
            true
        }
    };
    for item in db.iterator_cf(cf, IteratorMode::From(&high, Direction::Reverse)) {
        let (k, _) = item.map_err(RecorderError::read)?;
        if k.as_ref() < low.as_slice() {
            break;
        }
        result.scanned += 1;
        let Some((time, seq)) = suffix(&k).filter(|(_, seq)| *seq > floor && *seq <= indexed) else {
            continue;
        };
        let mut all = true;
        for (f, v) in rest {
            if db
                .get_pinned_cf(cf, key(*f, v, time, seq))
                .map_err(RecorderError::read)?
                .is_none()
            {
                all = false;
                break;
            }
        }
        if !all {
            continue;
        }
        let Some(stored) = db
            .get_pinned_cf(cf_events, seq_key(seq))
            .map_err(RecorderError::read)?
        else {
            continue;
        };
        let ev: Event = serde_json::from_slice(&stored)
            .map_err(|e| RecorderError::Corrupt(format!("event {seq} is undecodable: {e}")))?;
        if needle.as_deref().is_some_and(|n| !text_hit(&ev, n)) {
            continue;
        }
        let mut full = false;
        while let Some(n) = newer.next_if(|n| (n.time_us, n.seq) > (time, seq)) {
            if !push(&mut result, n) {
                full = true;
                break;
            }
        }
        if full || !push(&mut result, ev) {
            break;
        }
    }
    for n in newer {
        if !push(&mut result, n) {
            break;
        }
    }
    Ok(result)
}
