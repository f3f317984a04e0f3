//! Search indexes and queries (`gatehouse audit search`, `GET /v1/audit/search`), and the
//! lookup of one session's events (replay, transcripts, bundles: [`session_seqs`]).
//!
//! The indexer thread (`indexer.rs`) writes index entries for committed events, trailing the
//! writer, and records how far it got (`meta/postings_indexed`). A search reads the events past that
//! mark directly (normally a few, the indexer's lag), so an event is searchable exactly when it
//! is durable.
//!
//! ## Terms
//!
//! Each event has a handful of *terms*, `field ‖ value`:
//!
//! | field | value |
//! |---|---|
//! | `p` | principal (`user:alice`, `agent:etl`) |
//! | `t` | target (from the session) |
//! | `k` | event kind (`decision`, `session_start`, …) |
//! | `d` | decision outcome (`allow`, `deny`, `hold`) |
//! | `y` | each policy id a decision cites |
//! | `w` | each word of a statement's text (lower case, letters, digits and `_`, 2–64 long) |
//! | `s` | the session id (may be empty): a session's events for replay, transcripts, bundles |
//! | `T` | (empty): every event |
//!
//! ## Blocks (index format `postings-v2`, `meta/index_format`)
//!
//! (`postings-v1`, the previous layout, had no session term: a log indexed by it is indexed
//! again when this version starts on it.)
//!
//! The indexer writes the events of one write (a few milliseconds of commits, or a catch-up
//! chunk) as one *block*, named by the seq of its first event. Per term the block holds a
//! posting list (and a directory entry) instead of a key per event and term. Under load a
//! block covers hundreds of events that share most of their terms, so the index writes a
//! fraction of the dozen keys per decision the old layout did, which made it the largest cost
//! of recording. (At a trickle a block is about one commit, and a term costs two keys
//! instead of one; nothing is waiting then.) One column family, `search`:
//!
//! | key | value |
//! |---|---|
//! | `D ‖ term ‖ 0x00 ‖ max time ‖ block` | min time: the directory, newest block last |
//! | `P ‖ block ‖ term` | the posting list: (seq, time) of each event with the term |
//! | `B ‖ block` | last seq ‖ the block's terms with their max time: what retention deletes |
//!
//! Times are u64 big-endian with the sign bit flipped (they sort as signed), seqs and blocks
//! u64 big-endian. A posting list is LEB128 varints, per event in seq order: seq minus the
//! previous one (the first: minus the block), then the zigzag time minus the previous one (the
//! first: minus 0).
//!
//! A query drives one term's directory (its most selective condition, or `T`), blocks by
//! descending max time, and intersects that block's posting lists of the other conditions
//! (point lookups). It keeps the newest `limit + 1` matches and stops at the first block whose
//! max time is older than all of them, so the order is exactly newest first by (time, seq)
//! even where event times are not in seq order. It enters the directory at `to` plus the
//! widest time range any block has spanned (`meta/postings_spread`, written with the blocks),
//! so a window far in the past does not step over every newer block. Text matches events
//! whose statement contains every word of the query, then the whole query as a
//! case-insensitive substring.
//!
//! The indexes are derived data. A damaged block's events are read from the log instead (and
//! a warning logged); indexes of another layout, or without a sound mark, are dropped when the
//! recorder starts and built again in the background (`store.rs`).

use std::collections::{BinaryHeap, HashMap};

use gatehouse_core::Verdict;
use rocksdb::{ColumnFamily, DB, Direction, IteratorMode, WriteBatch};
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

fn time_from_key(k: &[u8]) -> Option<i64> {
    let b: [u8; 8] = k.try_into().ok()?;
    Some((u64::from_be_bytes(b) ^ (1 << 63)) as i64)
}

/// `D ‖ term ‖ 0x00`: where a term's directory starts.
fn directory_prefix(term: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(term.len() + 18);
    k.push(b'D');
    k.extend_from_slice(term);
    k.push(0);
    k
}

fn directory_key(term: &[u8], max_time: i64, block: u64) -> Vec<u8> {
    let mut k = directory_prefix(term);
    k.extend_from_slice(&time_key(max_time));
    k.extend_from_slice(&block.to_be_bytes());
    k
}

fn posting_key(block: u64, term: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(term.len() + 9);
    k.push(b'P');
    k.extend_from_slice(&block.to_be_bytes());
    k.extend_from_slice(term);
    k
}

fn block_key(block: u64) -> [u8; 9] {
    let mut k = [b'B'; 9];
    k[1..].copy_from_slice(&block.to_be_bytes());
    k
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7F) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// A posting list's (time, seq) pairs, in seq order.
fn decode_postings(block: u64, buf: &[u8]) -> Result<Vec<(i64, u64)>, RecorderError> {
    let bad = || RecorderError::Corrupt(format!("search index block {block}: malformed posting list"));
    let mut out = Vec::new();
    let (mut at, mut seq, mut time) = (0usize, block, 0i64);
    while at < buf.len() {
        let ds = get_varint(buf, &mut at).ok_or_else(bad)?;
        let dt = get_varint(buf, &mut at).ok_or_else(bad)?;
        seq = seq.checked_add(ds).ok_or_else(bad)?;
        time = time.wrapping_add(unzigzag(dt));
        out.push((time, seq));
    }
    Ok(out)
}

/// One term's events within a block.
struct Posting {
    min: i64,
    max: i64,
    /// Varint-encoded (see the module docs).
    bytes: Vec<u8>,
    last_seq: u64,
    last_time: i64,
}

/// Widest time range (µs) one block spans: an event further from the block's others starts
/// a new block, so one out-of-order time (a backlog committed after an outage, a clock step,
/// a catch-up over a quiet spell) cannot widen `meta/postings_spread` for good.
const MAX_BLOCK_SPAN_US: i64 = 60_000_000;

/// The index entries of one indexer write: consecutive blocks (see the module docs).
#[derive(Default)]
pub(crate) struct Blocks {
    done: Vec<Block>,
    current: Block,
}

impl Blocks {
    /// Add `ev` (events must come in seq order), whose session has `principal` and `target`.
    pub(crate) fn add(&mut self, ev: &Event, principal: Option<&str>, target: &str) {
        let c = &self.current;
        if c.first.is_some()
            && c.max.max(ev.time_us).saturating_sub(c.min.min(ev.time_us)) > MAX_BLOCK_SPAN_US
        {
            self.done.push(std::mem::take(&mut self.current));
        }
        self.current.add(ev, principal, target);
    }

    /// The widest time range one of them spans (µs).
    pub(crate) fn spread(&self) -> i64 {
        self.done
            .iter()
            .chain([&self.current])
            .map(Block::spread)
            .max()
            .unwrap_or(0)
    }

    /// Put their keys into `wb`.
    pub(crate) fn write(self, wb: &mut WriteBatch, cf: &ColumnFamily) {
        for b in self.done.into_iter().chain([self.current]) {
            b.write(wb, cf);
        }
    }
}

/// The index entries of consecutive events, written as one block (see the module docs).
#[derive(Default)]
struct Block {
    /// Seq of the first event added (the block's name) and of the last.
    first: Option<u64>,
    last: u64,
    /// Oldest and newest event time.
    min: i64,
    max: i64,
    /// Term → its posting in `postings`.
    terms: HashMap<Vec<u8>, usize>,
    postings: Vec<(Vec<u8>, Posting)>,
    /// Scratch space for a term.
    term: Vec<u8>,
}

impl Block {
    fn add(&mut self, ev: &Event, principal: Option<&str>, target: &str) {
        let (time, seq) = (ev.time_us, ev.seq);
        if self.first.is_none() {
            (self.min, self.max) = (time, time);
        }
        let block = *self.first.get_or_insert(seq);
        self.last = seq;
        (self.min, self.max) = (self.min.min(time), self.max.max(time));
        let mut term = std::mem::take(&mut self.term);
        let (terms, postings) = (&mut self.terms, &mut self.postings);
        for_each_term(ev, principal, target, |field, value| {
            term.clear();
            term.push(field);
            term.extend_from_slice(value);
            let i = match terms.get(term.as_slice()) {
                Some(&i) => i,
                None => {
                    terms.insert(term.clone(), postings.len());
                    let p = Posting {
                        min: time,
                        max: time,
                        bytes: Vec::new(),
                        last_seq: block,
                        last_time: 0,
                    };
                    postings.push((term.clone(), p));
                    postings.len() - 1
                }
            };
            let Some((_, p)) = postings.get_mut(i) else { return };
            // Seqs only grow (a term is added once per event, events come in order).
            put_varint(&mut p.bytes, seq.saturating_sub(p.last_seq));
            put_varint(&mut p.bytes, zigzag(time.wrapping_sub(p.last_time)));
            p.last_seq = seq;
            p.last_time = time;
            p.min = p.min.min(time);
            p.max = p.max.max(time);
        });
        self.term = term;
    }

    /// The time range its events span (max − min, µs; 0 when empty).
    fn spread(&self) -> i64 {
        self.max.saturating_sub(self.min)
    }

    /// Put the block's keys into `wb` in ascending key order: its manifest (`B`), its
    /// directory entries (`D`), then its posting lists (`P`, after every earlier block's),
    /// each run sorted by term. RocksDB inserts a batch's keys into the memtable's skip list
    /// in batch order, and finds a key that follows the previous one from where that one went
    /// (the indexer's write asks for this also when it joins the writer's write group, see
    /// `indexer.rs`). In first-seen order, alternating directory entries and posting lists,
    /// every insert searched the whole list: the indexer's largest cost under load.
    fn write(mut self, wb: &mut WriteBatch, cf: &ColumnFamily) {
        let Some(block) = self.first else { return };
        self.postings.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut manifest = Vec::with_capacity(8 + self.postings.len() * 24);
        manifest.extend_from_slice(&self.last.to_be_bytes());
        for (term, p) in &self.postings {
            put_varint(&mut manifest, term.len() as u64);
            manifest.extend_from_slice(term);
            manifest.extend_from_slice(&time_key(p.max));
        }
        wb.put_cf(cf, block_key(block), manifest);
        for (term, p) in &self.postings {
            wb.put_cf(cf, directory_key(term, p.max, block), time_key(p.min));
        }
        for (term, p) in &self.postings {
            wb.put_cf(cf, posting_key(block, term), &p.bytes);
        }
    }
}

/// Delete, into `wb`, index blocks wholly at or below `floor`, from block `*cursor` on,
/// until about `budget` terms' keys are deleted (at least one block); `*cursor` moves past
/// what was looked at. A block reaching past the floor stays (searches skip its entries at or
/// below the floor; a later retention deletes it). `true` once none is left.
pub(crate) fn delete_blocks(
    db: &DB,
    floor: u64,
    budget: usize,
    cursor: &mut u64,
    wb: &mut WriteBatch,
) -> Result<bool, RecorderError> {
    let cf = store::cf(db, CF_SEARCH)?;
    let mut terms = 0usize;
    for item in db.iterator_cf(cf, IteratorMode::From(&block_key(*cursor), Direction::Forward)) {
        let (k, v) = item.map_err(RecorderError::read)?;
        let Some(block) = k.strip_prefix(b"B").and_then(store::seq_from_key) else {
            break;
        };
        if block > floor {
            break;
        }
        let last = v.get(..8).and_then(store::seq_from_key);
        if last.is_none() {
            tracing::warn!(block, "malformed search index manifest; the block's entries stay");
        }
        if last.is_some_and(|l| l > floor) {
            *cursor = block.saturating_add(1);
            continue;
        }
        let mut keys = Vec::new();
        let mut at = 8;
        while at < v.len() {
            let Some(len) = get_varint(&v, &mut at).and_then(|l| usize::try_from(l).ok()) else {
                break;
            };
            let end = at.saturating_add(len);
            let (Some(term), Some(max)) = (
                v.get(at..end),
                v.get(end..end.saturating_add(8)).and_then(time_from_key),
            ) else {
                break;
            };
            at = end + 8;
            keys.push(directory_key(term, max, block));
            keys.push(posting_key(block, term));
        }
        if terms > 0 && terms + keys.len() / 2 > budget {
            return Ok(false);
        }
        if at < v.len() {
            // Derived data: what the manifest no longer names is skipped by searches (its
            // events are below the floor) and goes when the log is indexed again.
            tracing::warn!(block, "malformed search index manifest; some entries stay");
        }
        terms += keys.len() / 2;
        for key in keys {
            wb.delete_cf(cf, key);
        }
        wb.delete_cf(cf, &k);
        *cursor = block.saturating_add(1);
    }
    Ok(true)
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

/// Call `f` with each term (field, value) of `ev`, whose session has `principal` and `target`
/// (from its summary); see the module docs. Each term comes once.
pub(crate) fn for_each_term(ev: &Event, principal: Option<&str>, target: &str, mut f: impl FnMut(u8, &[u8])) {
    f(b'T', b"");
    f(b'k', kind_name(&ev.body).as_bytes());
    // The writer refuses ids with a NUL; an empty one is a session too.
    if !ev.session_id.as_bytes().contains(&0) {
        f(b's', ev.session_id.as_bytes());
    }
    let mut add = |field: u8, value: &str| {
        if !value.is_empty() && !value.as_bytes().contains(&0) {
            f(field, value.as_bytes());
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
        let mut ids: Vec<&str> = policy_ids.iter().map(String::as_str).collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            add(b'y', id);
        }
        if let Some(st) = statement {
            for w in words(&st.text) {
                add(b'w', &w);
            }
        }
    }
}

/// What to look for; every given condition must hold.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    /// One session's events.
    pub session: Option<String>,
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
    /// Posting list entries read to answer (for the curious and the benchmarks).
    pub scanned: u64,
    /// Events not indexed yet, read one by one (the indexer's lag).
    pub unindexed: u64,
}

/// Does `ev` (with its session's principal and target) meet every condition (terms)? The same
/// test the indexes answer, for events they do not cover yet.
fn matches_unindexed(
    ev: &Event,
    principal: Option<&str>,
    target: &str,
    conds: &[Vec<u8>],
    q: &SearchQuery,
) -> bool {
    if ev.time_us < q.from_us || ev.time_us > q.to_us {
        return false;
    }
    let mut has = vec![false; conds.len()];
    for_each_term(ev, principal, target, |field, value| {
        for (c, h) in conds.iter().zip(has.iter_mut()) {
            if c.first() == Some(&field) && c.get(1..) == Some(value) {
                *h = true;
            }
        }
    });
    has.into_iter().all(|h| h)
}

/// Does the statement of `ev` contain `needle` (lower case)?
fn text_hit(ev: &Event, needle: &str) -> bool {
    matches!(&ev.body, EventBody::Decision { statement: Some(s), .. }
        if s.text.to_lowercase().contains(needle))
}

/// The newest `keep` matches by (time, seq): a heap whose top is the oldest kept.
struct Newest {
    keep: usize,
    heap: BinaryHeap<Oldest>,
    /// Seqs in `heap`: a safeguard, so that an event reached twice (overlapping blocks, which
    /// a sound index does not have) is kept once.
    seqs: std::collections::HashSet<u64>,
}

impl Newest {
    /// Would an event at (time, seq) be kept?
    fn wants(&self, key: (i64, u64)) -> bool {
        self.heap.len() < self.keep || self.heap.peek().is_some_and(|o| key > o.key())
    }

    /// Is every event older than `time` out of the running?
    fn full_above(&self, time: i64) -> bool {
        self.heap.len() >= self.keep && self.heap.peek().is_some_and(|o| time < o.0.time_us)
    }

    fn push(&mut self, ev: Event) {
        if !self.wants((ev.time_us, ev.seq)) || !self.seqs.insert(ev.seq) {
            return;
        }
        self.heap.push(Oldest(ev));
        if self.heap.len() > self.keep
            && let Some(o) = self.heap.pop()
        {
            self.seqs.remove(&o.0.seq);
        }
    }
}

/// Read the events with seqs in `range` from the log and add those that match to `found`
/// (the events past the indexes' mark, or those of a damaged block). Returns how many were
/// read.
fn read_matches(
    db: &DB,
    range: std::ops::RangeInclusive<u64>,
    conds: &[Vec<u8>],
    needle: Option<&str>,
    q: &SearchQuery,
    found: &mut Newest,
) -> Result<u64, RecorderError> {
    let mut sessions = SessionContext::new(SESSIONS_CACHE);
    events_in(db, range, |_, ev| {
        let (principal, target) = sessions.get(db, &ev.session_id)?;
        if matches_unindexed(&ev, principal.as_deref(), target, conds, q)
            && needle.is_none_or(|n| text_hit(&ev, n))
        {
            // Only the newest `keep` are kept, however far behind the indexes are.
            found.push(ev);
        }
        Ok(())
    })
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

/// Keep the entries of `a` whose seq is in `b` (both in seq order).
fn intersect(a: &mut Vec<(i64, u64)>, b: &[(i64, u64)]) {
    let mut j = 0;
    a.retain(|(_, s)| {
        while b.get(j).is_some_and(|(_, t)| t < s) {
            j += 1;
        }
        b.get(j).is_some_and(|(_, t)| t == s)
    });
}

/// The last seq of `block`: from its manifest, else (damaged too) the seq before the next
/// block, else `indexed`.
fn block_end(db: &DB, cf: &ColumnFamily, block: u64, indexed: u64) -> Result<u64, RecorderError> {
    if let Some(last) = db
        .get_pinned_cf(cf, block_key(block))
        .map_err(RecorderError::read)?
        .and_then(|v| v.get(..8).and_then(store::seq_from_key))
    {
        return Ok(last);
    }
    let next = block_key(block.saturating_add(1));
    let after = db
        .iterator_cf(cf, IteratorMode::From(&next, Direction::Forward))
        .next()
        .transpose()
        .map_err(RecorderError::read)?
        .and_then(|(k, _)| k.strip_prefix(b"B").and_then(store::seq_from_key));
    Ok(after.map_or(indexed, |b| b.saturating_sub(1)))
}

/// Log a damaged index block, at most once a minute (every search that reaches it would).
fn warn_damaged(block: u64, e: &RecorderError) {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = u64::try_from(gatehouse_core::time::now_micros()).unwrap_or(0) / 1_000_000;
    let last = LAST.load(Relaxed);
    if now >= last.saturating_add(60) && LAST.compare_exchange(last, now, Relaxed, Relaxed).is_ok() {
        tracing::warn!(block, error = %e, "damaged search index block: its events are read from the log");
    }
}

/// The (time, seq) of a block's events that have the `driving` term and every term of `rest`.
fn block_hits(
    db: &DB,
    cf: &ColumnFamily,
    block: u64,
    driving: &[u8],
    rest: &[Vec<u8>],
    result: &mut SearchResult,
) -> Result<Vec<(i64, u64)>, RecorderError> {
    let Some(p) = db
        .get_pinned_cf(cf, posting_key(block, driving))
        .map_err(RecorderError::read)?
    else {
        return Err(RecorderError::Corrupt(format!(
            "search index block {block}: a directory entry without its posting list"
        )));
    };
    let mut hits = decode_postings(block, &p)?;
    result.scanned += hits.len() as u64;
    for c in rest {
        if hits.is_empty() {
            break;
        }
        let Some(p) = db
            .get_pinned_cf(cf, posting_key(block, c))
            .map_err(RecorderError::read)?
        else {
            return Ok(Vec::new());
        };
        let other = decode_postings(block, &p)?;
        result.scanned += other.len() as u64;
        intersect(&mut hits, &other);
    }
    Ok(hits)
}

/// Add to `out` the seqs of session `id`'s events in the index blocks, those above `floor`
/// and up to `indexed` (the indexes' mark): from the posting lists of its `s` term, one per
/// block the session had events in. A damaged block's events are read from the log instead.
/// (Events past `indexed`: [`events_in`].)
pub(crate) fn session_seqs(
    db: &DB,
    id: &str,
    floor: u64,
    indexed: u64,
    out: &mut Vec<u64>,
) -> Result<(), RecorderError> {
    if id.as_bytes().contains(&0) {
        return Ok(());
    }
    let Some(cf) = db.cf_handle(CF_SEARCH) else {
        return Ok(());
    };
    let mut term = Vec::with_capacity(id.len() + 1);
    term.push(b's');
    term.extend_from_slice(id.as_bytes());
    let prefix = directory_prefix(&term);
    let mut blocks = Vec::new();
    for item in db.iterator_cf(cf, IteratorMode::From(&prefix, Direction::Forward)) {
        let (k, _) = item.map_err(RecorderError::read)?;
        let Some(tail) = k.strip_prefix(prefix.as_slice()) else {
            break;
        };
        if let Some(block) = tail.get(8..).and_then(store::seq_from_key) {
            blocks.push(block);
        }
    }
    blocks.retain(|b| *b <= indexed);
    blocks.sort_unstable();
    blocks.dedup();
    // One batched read of every posting list (keys in order: `P ‖ block ‖ term`).
    let keys: Vec<Vec<u8>> = blocks.iter().map(|b| posting_key(*b, &term)).collect();
    for (&block, got) in blocks.iter().zip(db.batched_multi_get_cf(cf, &keys, true)) {
        let listed = got
            .map_err(RecorderError::read)?
            .ok_or_else(|| {
                RecorderError::Corrupt(format!(
                    "search index block {block}: a directory entry without its posting list"
                ))
            })
            .and_then(|p| decode_postings(block, &p));
        match listed {
            Ok(hits) => out.extend(
                hits.into_iter()
                    .map(|(_, s)| s)
                    .filter(|s| *s > floor && *s <= indexed),
            ),
            Err(e) => {
                // Derived data: a damaged block's events are read from the log instead.
                warn_damaged(block, &e);
                let last = block_end(db, cf, block, indexed)?.min(indexed);
                events_in(db, block.max(floor.saturating_add(1))..=last, |seq, ev| {
                    if ev.session_id == id {
                        out.push(seq);
                    }
                    Ok(())
                })?;
            }
        }
    }
    Ok(())
}

/// Call `f` with the seq and the event of each event in `range`, read from the log (the
/// events past the indexes' mark, or those of a damaged block). Events that do not decode are
/// skipped, as the indexer skips them (`audit verify` reports them). Returns how many were
/// read.
pub(crate) fn events_in(
    db: &DB,
    range: std::ops::RangeInclusive<u64>,
    mut f: impl FnMut(u64, Event) -> Result<(), RecorderError>,
) -> Result<u64, RecorderError> {
    if range.is_empty() {
        return Ok(0);
    }
    let cf_events = store::cf(db, CF_EVENTS)?;
    let start = seq_key(*range.start());
    let mut read = 0;
    for item in db.iterator_cf(cf_events, IteratorMode::From(&start, Direction::Forward)) {
        let (k, v) = item.map_err(RecorderError::read)?;
        let Some(seq) = store::seq_from_key(&k) else {
            continue;
        };
        if seq > *range.end() {
            break;
        }
        read += 1;
        if let Ok(ev) = serde_json::from_slice::<Event>(&v) {
            f(seq, ev)?;
        }
    }
    Ok(read)
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
    // Conditions as terms, most selective first (a guess: policy ids and rare words narrow
    // most).
    let mut conds: Vec<Vec<u8>> = Vec::new();
    let term = |field: u8, value: &str| {
        let mut t = vec![field];
        t.extend_from_slice(value.as_bytes());
        t
    };
    if let Some(s) = &q.session {
        conds.push(term(b's', s));
    }
    if let Some(p) = &q.policy {
        conds.push(term(b'y', p));
    }
    let text = q.text.as_deref().map(str::trim).filter(|t| !t.is_empty());
    if let Some(t) = text {
        let mut ws = words(t);
        ws.sort_by_key(|w| std::cmp::Reverse(w.len()));
        conds.extend(ws.iter().map(|w| term(b'w', w)));
    }
    if let Some(p) = &q.principal {
        conds.push(term(b'p', p));
    }
    if let Some(t) = &q.target {
        conds.push(term(b't', t));
    }
    if let Some(d) = &q.decision {
        conds.push(term(b'd', d));
    }
    if let Some(k) = &q.kind {
        conds.push(term(b'k', k));
    }
    // No indexed value holds a 0 byte, and only a session id may be empty.
    if conds.iter().any(|c| {
        c.get(1..)
            .is_none_or(|v| v.contains(&0) || (v.is_empty() && c[0] != b's'))
    }) {
        return Ok(result);
    }
    let driving = conds.first().cloned().unwrap_or_else(|| vec![b'T']);
    let rest = conds.get(1..).unwrap_or_default();
    let needle = text.map(str::to_lowercase);
    let cf_events = store::cf(db, CF_EVENTS)?;
    // Events retention deleted, or is deleting (their index entries may be half gone).
    let floor = store::effective_floor(db)?;
    // Events the indexer has not reached: read, and merged in by (time, seq).
    let indexed = store::indexed_through(db).max(floor);
    let mut found = Newest {
        keep: limit + 1,
        heap: BinaryHeap::new(),
        seqs: Default::default(),
    };
    result.unindexed = read_matches(
        db,
        indexed.saturating_add(1)..=u64::MAX,
        &conds,
        needle.as_deref(),
        q,
        &mut found,
    )?;

    // No block spans more than `spread`: one whose max time is past `to + spread` has nothing
    // up to `to`, so the directory is entered there (read after the mark: every block up to
    // the mark counted in it).
    let spread = store::index_spread(db)?.unwrap_or(i64::MAX);
    let prefix = directory_prefix(&driving);
    let mut top = prefix.clone();
    top.extend_from_slice(&time_key(q.to_us.saturating_add(spread.max(0))));
    top.extend_from_slice(&[0xFF; 8]);
    for item in db.iterator_cf(cf, IteratorMode::From(&top, Direction::Reverse)) {
        let (k, v) = item.map_err(RecorderError::read)?;
        let Some(tail) = k.strip_prefix(prefix.as_slice()) else {
            break;
        };
        let (Some(max), Some(block)) = (
            tail.get(..8).and_then(time_from_key),
            tail.get(8..).and_then(store::seq_from_key),
        ) else {
            continue;
        };
        // Blocks come by descending max time: nothing further is in the window, or newer
        // than every match kept.
        if max < q.from_us || found.full_above(max) {
            break;
        }
        if time_from_key(&v).is_some_and(|min| min > q.to_us) {
            continue;
        }
        let mut hits = match block_hits(db, cf, block, &driving, rest, &mut result) {
            Ok(h) => h,
            Err(e) => {
                // Derived data: a damaged block's events are read from the log instead.
                let last = block_end(db, cf, block, indexed)?;
                warn_damaged(block, &e);
                let range = block.max(floor.saturating_add(1))..=last.min(indexed);
                read_matches(db, range, &conds, needle.as_deref(), q, &mut found)?;
                continue;
            }
        };
        hits.retain(|&(t, s)| {
            t >= q.from_us && t <= q.to_us && s > floor && s <= indexed && found.wants((t, s))
        });
        // Newest first, so that older candidates are dropped without being read.
        hits.sort_unstable_by(|a, b| b.cmp(a));
        for (time, seq) in hits {
            if !found.wants((time, seq)) {
                break;
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
            found.push(ev);
        }
    }
    let mut events: Vec<Event> = found.heap.into_sorted_vec().into_iter().map(|o| o.0).collect();
    if events.len() > limit {
        result.truncated = true;
        events.truncate(limit);
    }
    result.events = events;
    Ok(result)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

    use super::*;

    fn notice(seq: u64, time_us: i64, principal: &str) -> Event {
        Event {
            seq,
            time_us,
            session_id: "s".into(),
            principal: Some(principal.into()),
            on_behalf_of: None,
            actor_chain: Vec::new(),
            body: EventBody::Notice {
                level: "info".into(),
                message: "m".into(),
            },
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    #[test]
    fn posting_lists_round_trip_any_seq_and_time() {
        let times = [i64::MIN, -5, 0, 1, i64::MAX, 1_700_000_000_000_000, 3];
        let mut block = Block::default();
        let mut want = Vec::new();
        for (i, t) in times.iter().enumerate() {
            let seq = 10 + (i as u64) * 1000;
            block.add(&notice(seq, *t, "user:a"), None, "");
            want.push((*t, seq));
        }
        let (term, p) = block
            .postings
            .iter()
            .find(|(t, _)| t.as_slice() == b"puser:a")
            .unwrap();
        assert_eq!(term.as_slice(), b"puser:a");
        assert_eq!(decode_postings(10, &p.bytes).unwrap(), want);
        assert_eq!((p.min, p.max), (i64::MIN, i64::MAX));
        // A truncated list is an error, not a wrong answer.
        assert!(decode_postings(10, &p.bytes[..p.bytes.len() - 1]).is_err());
    }

    /// An event further than a minute from a block's others starts a new block, so one odd
    /// time cannot widen the spread searches rely on.
    #[test]
    fn blocks_span_at_most_a_minute() {
        let mut blocks = Blocks::default();
        for (seq, t) in [(1, 0), (2, 1_000_000), (3, 3_600_000_000), (4, 2_000_000)] {
            blocks.add(&notice(seq, t, "user:a"), None, "");
        }
        let firsts: Vec<_> = blocks
            .done
            .iter()
            .chain([&blocks.current])
            .map(|b| b.first)
            .collect();
        assert_eq!(firsts, [Some(1), Some(3), Some(4)]);
        assert_eq!(blocks.spread(), 1_000_000);
    }

    #[test]
    fn intersection_keeps_common_seqs() {
        let mut a = vec![(5, 1), (1, 3), (9, 4), (2, 8)];
        intersect(&mut a, &[(0, 2), (1, 3), (2, 8), (3, 9)]);
        assert_eq!(a, [(1, 3), (2, 8)]);
    }

    /// Retention deletes whole blocks at or below its floor, every key of them; the block
    /// reaching past the floor stays; a step stops at its budget.
    #[test]
    fn retention_deletes_whole_blocks_below_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let db = store::open_rw(dir.path()).unwrap();
        let cf = store::cf(&db, CF_SEARCH).unwrap();
        let mut wb = WriteBatch::default();
        for first in [1u64, 4, 7] {
            let mut block = Block::default();
            for seq in first..first + 3 {
                block.add(&notice(seq, seq as i64, &format!("user:u{seq}")), None, "db");
            }
            block.write(&mut wb, cf);
        }
        db.write(wb).unwrap();
        let blocks = |db: &DB| {
            let mut out: Vec<u64> = db
                .iterator_cf(store::cf(db, CF_SEARCH).unwrap(), IteratorMode::Start)
                .map(|i| {
                    let (k, _) = i.unwrap();
                    let b = match k[0] {
                        b'D' => &k[k.len() - 8..],
                        b'P' | b'B' => &k[1..9],
                        other => panic!("unexpected key kind {other}"),
                    };
                    store::seq_from_key(b).unwrap()
                })
                .collect();
            out.dedup();
            out.sort();
            out.dedup();
            out
        };
        assert_eq!(blocks(&db), [1, 4, 7]);
        // Floor 7: blocks 1 and 4 go (one per step: a budget of one term still deletes a
        // block), 7 (events 7 to 9) stays.
        let step = |floor: u64, budget: usize, cursor: &mut u64| {
            let mut wb = WriteBatch::default();
            let done = delete_blocks(&db, floor, budget, cursor, &mut wb).unwrap();
            db.write(wb).unwrap();
            done
        };
        let mut cursor = 0;
        assert!(!step(7, 1, &mut cursor));
        assert_eq!((blocks(&db), cursor), (vec![4, 7], 2));
        assert!(step(7, 1, &mut cursor));
        assert_eq!((blocks(&db), cursor), (vec![7], 8));
        // A later job (its own cursor): block 7 goes once the floor passes its last event.
        assert!(step(8, 100, &mut 0));
        assert_eq!(blocks(&db), [7]);
        assert!(step(9, 100, &mut 0));
        assert!(blocks(&db).is_empty());
    }
}
