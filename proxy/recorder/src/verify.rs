//! Offline verification of a chain of stored events against signed checkpoints, shared by the
//! live log ([`crate::LogReader::verify`]) and exported bundles ([`crate::verify_bundle`]).
//!
//! # What is detected
//!
//! With the signer's public key(s):
//!
//! - an **edited event** (any byte of its stored record): its hash no longer matches its
//!   content (`altered`); if the editor also recomputed that hash, the next event no longer
//!   links to it (`broken_link`); if they recomputed every later hash too, the chain head no
//!   longer matches the next signed checkpoint (`checkpoint_mismatch`);
//! - a **removed event**: a gap in the sequence numbers (`missing`); renumbering the rest to
//!   hide the gap changes their content, hence their hashes;
//! - **reordered events**: an event stored at, or listed in, another place than its number
//!   (`reordered`), or a duplicate (`duplicated`);
//! - a **truncated tail**, as far as a signed checkpoint or the recorded head covered it: a
//!   checkpoint, or the recorded head, for events that are no longer there (`truncated`);
//! - a **forged or altered checkpoint** (`bad_signature`), and in bundles any file that differs
//!   from the signed manifest (`file_modified`);
//! - in a log local retention shortened (it starts after a **floor**: the signed checkpoint of
//!   the last deleted event, kept, and a floor record signed with the checkpoint key): a
//!   removed floor record (events 1 to the floor `missing`), one not validly signed
//!   (`bad_signature`),
//!   a floor whose checkpoint is gone (`missing`), forged (`bad_signature`) or names another
//!   hash (`checkpoint_mismatch`), a first event that does not link to it (`broken_link`),
//!   and events left below it (`duplicated`).
//!
//! # What is not
//!
//! - Without a public key, only the chain's internal consistency is checked: someone able to
//!   rewrite the log can recompute every hash. The verdict is then *incomplete*, never
//!   *intact*.
//! - Events after the last checkpoint are protected by the chain alone (`unsigned_tail`):
//!   removing some of them together with the unsigned head marker cannot be told from a log
//!   that ended earlier. Checkpoints are made every N events or T seconds and when the log
//!   closes, so this window is bounded by the checkpoint settings.
//! - Someone holding the *private* key (e.g. root on the gateway host) can sign a rewritten
//!   history. Checkpoints shipped off-host before the rewrite still contradict it; that is
//!   what shipping is for.
//! - Removing checkpoints from the local log removes their signatures: that shows as a longer
//!   `unsigned_tail`. A running gateway's newest events are always an unsigned tail, so one is
//!   tolerated ([`TailPolicy::Live`]) only while the last verified checkpoint is fresh: signed
//!   no more than a grace period before now (for a bundle: before its signed export time).
//!   Deleting recent checkpoints therefore leaves a stale last checkpoint and the verdict
//!   *incomplete*; auditors checking a closed log or a bundle use `--strict`
//!   ([`TailPolicy::Strict`]: any unsigned event makes the verdict incomplete).
//! - Cutting the log back to exactly a checkpoint (events, later checkpoints and the head
//!   marker all removed consistently) looks like a log that ended there. Only a copy that left
//!   the host (shipped segments, an exported bundle) shows the difference.
//! - Likewise, raising the floor to a later validly signed checkpoint (deleting the events in
//!   between and the older checkpoints) looks like retention that went further. What retention
//!   deletes, the sink holds: `verify --shipped` checks that copy from event 1.
//! - A sink that expires its oldest segments (`sink_expires`, an S3 lifecycle rule) is checked
//!   from the first segment it holds (`expired_before`): deleting its oldest segments looks
//!   the same as their expiry (S3 Object Lock can rule that out). A log restored from such a
//!   sink records where it starts ([`crate::RestoredStart`]), unsigned, since a restore holds
//!   no private key; its verdict is therefore *incomplete* (`unsigned_start`), never
//!   *intact*, so that adding such a record to a log cannot hide the removal of its oldest
//!   events. Everything after that start verifies as usual.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, PublicKeys, SignatureError};
use crate::event::{canonical_from_stored, chain_hash, decode_hash};

/// What a finding says about the evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// An event's content does not match its hash (or is not an event record at all).
    Altered,
    /// Events are absent from the sequence.
    Missing,
    /// An event is stored or listed out of its place.
    Reordered,
    /// The same event appears twice.
    Duplicated,
    /// An event does not link to the one before it.
    BrokenLink,
    /// A checkpoint or the recorded head covers events that are no longer there.
    Truncated,
    /// A checkpoint's or manifest's signature does not verify.
    BadSignature,
    /// A validly signed checkpoint names another chain head than the events give.
    CheckpointMismatch,
    /// A bundle file's content differs from the manifest.
    FileModified,
    /// A checkpoint or manifest was signed by a key that was not given.
    UnknownKey,
    /// No public key was given, so no signature was checked.
    NoKey,
    /// Events after the last verified checkpoint (all of them when none verified).
    UnsignedTail,
    /// A bundle lacks a signed manifest, or holds a file the manifest does not list.
    Unsigned,
    /// There were no events to verify.
    Empty,
    /// A restored log starts after events its sink had expired, and nothing signed says where
    /// it starts.
    UnsignedStart,
}

impl FindingKind {
    /// Evidence of tampering (as opposed to evidence that could not be fully checked).
    pub fn is_tampering(self) -> bool {
        !matches!(
            self,
            FindingKind::UnknownKey
                | FindingKind::NoKey
                | FindingKind::UnsignedTail
                | FindingKind::Unsigned
                | FindingKind::Empty
                | FindingKind::UnsignedStart
        )
    }
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: FindingKind,
    /// The first event concerned, when the finding is about events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub message: String,
}

/// The overall verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every event checked, linked, and covered by a verified checkpoint (an unsigned tail is
    /// tolerated unless strict).
    Intact,
    /// No sign of tampering, but not everything could be checked (see the findings).
    Incomplete,
    /// Evidence of tampering (see the findings).
    Tampered,
}

impl Outcome {
    /// Exit code for scripts: 0 intact, 1 tampered, 3 incomplete (2 is left to usage errors,
    /// 4 to unreadable input).
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Intact => 0,
            Outcome::Tampered => 1,
            Outcome::Incomplete => 3,
        }
    }
}

/// How events after the last verified checkpoint count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailPolicy {
    /// Any unsigned event makes the verdict incomplete (closed logs, bundles, auditors).
    Strict,
    /// A log still being written: its newest events are tolerated unsigned while the last
    /// verified checkpoint was signed no more than `grace_us` before `now_us` (a running
    /// gateway signs its head every few seconds, so a stale last checkpoint means signatures
    /// were lost or removed).
    Live { now_us: i64, grace_us: i64 },
}

impl TailPolicy {
    /// [`TailPolicy::Live`] as of now.
    pub fn live(grace_secs: u64) -> TailPolicy {
        TailPolicy::Live {
            now_us: gatehouse_core::time::now_micros(),
            grace_us: i64::try_from(grace_secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX),
        }
    }
}

/// What verification found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Events read and checked.
    pub events_checked: u64,
    /// Seq of the first and last event read (0 when there are none).
    pub first_seq: u64,
    pub last_seq: u64,
    /// Recorded hash of the last event read.
    pub last_hash: String,
    /// Checkpoints within the events' range, and how many of them verified (signature and
    /// chain head).
    pub checkpoints: u64,
    pub checkpoints_verified: u64,
    /// The last event covered by a verified checkpoint (0: none), and when that checkpoint
    /// was signed (0: none).
    pub last_signed_seq: u64,
    pub last_signed_time_us: i64,
    /// For a bundle whose manifest signature verified: its signed export time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exported_us: Option<i64>,
    /// Key ids whose signatures were checked.
    pub keys: Vec<String>,
    /// Local retention deleted the events up to this one (after they were shipped); the log
    /// starts after it, anchored by the signed checkpoint at it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor: Option<u64>,
    /// The events before this one had expired from the sink (`sink_expires`): a sink verified
    /// as one that expires its oldest segments, or a log restored from one. Nothing signed
    /// says where that start is (see the module documentation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expired_before: Option<u64>,
    pub findings: Vec<Finding>,
    /// Findings beyond [`MAX_FINDINGS`] that were counted, not listed.
    pub findings_omitted: u64,
    /// Findings showing tampering, listed or not: the verdict never depends on the cap.
    pub tampering_findings: u64,
}

/// At most this many event findings are listed.
pub const MAX_FINDINGS: usize = 100;

impl VerifyReport {
    /// No evidence of tampering (the chain may still be unsigned).
    pub fn is_ok(&self) -> bool {
        self.tampering_findings == 0
    }

    /// Whether `tail` tolerates this report's unsigned tail (if it has one).
    pub fn tail_tolerated(&self, tail: TailPolicy) -> bool {
        match tail {
            TailPolicy::Strict => false,
            TailPolicy::Live { now_us, grace_us } => {
                self.checkpoints_verified > 0
                    && self.last_signed_time_us > 0
                    && now_us.saturating_sub(self.last_signed_time_us) <= grace_us
            }
        }
    }

    /// The verdict, with events after the last verified checkpoint counted as `tail` says.
    pub fn outcome(&self, tail: TailPolicy) -> Outcome {
        if !self.is_ok() {
            Outcome::Tampered
        } else if self.findings_omitted > 0
            || self
                .findings
                .iter()
                .any(|f| f.kind != FindingKind::UnsignedTail || !self.tail_tolerated(tail))
        {
            Outcome::Incomplete
        } else {
            Outcome::Intact
        }
    }

    /// The first finding that shows tampering.
    pub fn first_tampering(&self) -> Option<&Finding> {
        self.findings.iter().find(|f| f.kind.is_tampering())
    }

    pub(crate) fn push(&mut self, kind: FindingKind, seq: Option<u64>, message: String) {
        if kind.is_tampering() {
            self.tampering_findings += 1;
        }
        if self.findings.len() >= MAX_FINDINGS {
            self.findings_omitted += 1;
        } else {
            self.findings.push(Finding { kind, seq, message });
        }
    }

    /// Findings about the whole input are always listed.
    pub(crate) fn push_always(&mut self, kind: FindingKind, seq: Option<u64>, message: String) {
        if kind.is_tampering() {
            self.tampering_findings += 1;
        }
        self.findings.push(Finding { kind, seq, message });
    }
}

/// The fields of a stored event the chain needs (decoded on their own, so later event fields
/// never break verification).
#[derive(Deserialize)]
struct Link {
    seq: u64,
    prev_hash: String,
}

#[derive(PartialEq, Eq)]
enum CpState {
    Valid,
    /// Not checked (no key given, or an unknown key).
    Unchecked,
    Bad,
}

/// What the input says its last event is.
pub(crate) enum RecordedHead {
    /// The log's head marker: (seq, hash).
    Marker(u64, String),
    /// A log whose head marker is absent (removed, if the log has events).
    MissingMarker,
    /// The input has no head marker of its own (a bundle: its manifest covers that).
    NotApplicable,
}

/// Walks events in position order, one at a time.
pub(crate) struct Walk<'k> {
    keys: &'k PublicKeys,
    cps: BTreeMap<u64, Vec<(Checkpoint, CpState)>>,
    /// Checkpoints signed by keys that were not given: key id → (count, first seq).
    unknown_keys: BTreeMap<String, (u64, u64)>,
    report: VerifyReport,
    expected: u64,
    prev: Option<[u8; 32]>,
    /// The previous event was itself found out of place or unreadable: its successor's link
    /// is not reported again.
    suppress_link: bool,
}

impl<'k> Walk<'k> {
    /// `first_expected`: the seq the input should start at (1 for a whole log).
    pub(crate) fn new(keys: &'k PublicKeys, checkpoints: Vec<Checkpoint>, first_expected: u64) -> Walk<'k> {
        let report = VerifyReport {
            events_checked: 0,
            first_seq: 0,
            last_seq: 0,
            last_hash: String::new(),
            checkpoints: 0,
            checkpoints_verified: 0,
            last_signed_seq: 0,
            last_signed_time_us: 0,
            exported_us: None,
            keys: keys.ids().map(str::to_string).collect(),
            floor: None,
            expired_before: None,
            findings: Vec::new(),
            findings_omitted: 0,
            tampering_findings: 0,
        };
        let mut walk = Walk {
            keys,
            cps: BTreeMap::new(),
            unknown_keys: BTreeMap::new(),
            report,
            expected: first_expected,
            prev: None,
            suppress_link: false,
        };
        for cp in checkpoints {
            walk.add_checkpoint(cp);
        }
        walk
    }

    /// A checkpoint, checked against the keys now; it is compared with the chain when the walk
    /// reaches its event. Ignored when the walk is already past it.
    pub(crate) fn add_checkpoint(&mut self, cp: Checkpoint) {
        if cp.seq < self.expected {
            return;
        }
        let keys = self.keys;
        let state = if keys.is_empty() {
            CpState::Unchecked
        } else {
            match keys.verify_checkpoint(&cp) {
                Ok(()) => CpState::Valid,
                Err(SignatureError::UnknownKey) => {
                    let e = self.unknown_keys.entry(cp.key_id.clone()).or_insert((0, cp.seq));
                    e.0 += 1;
                    CpState::Unchecked
                }
                Err(SignatureError::Invalid) => {
                    self.report.push(
                        FindingKind::BadSignature,
                        Some(cp.seq),
                        format!(
                            "the checkpoint at event {} does not carry a valid signature of key {}",
                            cp.seq, cp.key_id
                        ),
                    );
                    CpState::Bad
                }
            }
        };
        self.cps.entry(cp.seq).or_default().push((cp, state));
    }

    /// The log starts after `floor` (local retention deleted the events up to it): the walk
    /// expects event `floor + 1` next, linking to `hash`, which the signed checkpoint at the
    /// floor (`anchor`) must vouch for. Call before the first event.
    pub(crate) fn start_at_floor(&mut self, record: &crate::store::Floor, anchor: Option<&Checkpoint>) {
        let (floor, hash) = (record.seq, record.hash.as_str());
        // The floor record is signed: without the key, nobody can make a log start later.
        if !self.keys.is_empty() {
            match self
                .keys
                .verify(&record.key_id, &record.message(), &record.signature)
            {
                Ok(()) => {}
                Err(SignatureError::UnknownKey) => {
                    let e = self
                        .unknown_keys
                        .entry(record.key_id.clone())
                        .or_insert((0, floor));
                    e.0 += 1;
                }
                Err(SignatureError::Invalid) => self.report.push_always(
                    FindingKind::BadSignature,
                    Some(floor),
                    format!(
                        "the log's floor record (it starts after event {floor}) does not carry a valid \
                         signature of key {}: events 1 to {floor} may have been removed",
                        record.key_id
                    ),
                ),
            }
        }
        self.report.floor = Some(floor);
        // What the walk has "seen" so far is the floor itself: a log with no events after it
        // ends there.
        self.report.last_seq = floor;
        self.report.last_hash = hash.to_string();
        self.expected = floor.saturating_add(1);
        self.cps.retain(|seq, _| *seq > floor);
        self.prev = decode_hash(hash);
        if self.prev.is_none() {
            self.report.push_always(
                FindingKind::Altered,
                Some(floor),
                format!("the log's floor at event {floor} does not hold a readable hash"),
            );
            self.suppress_link = true;
        }
        let Some(cp) = anchor else {
            self.report.push_always(
                FindingKind::Missing,
                Some(1),
                format!(
                    "events 1 to {floor} are not in the log and no checkpoint at event {floor} \
                     vouches for where it now starts"
                ),
            );
            return;
        };
        if cp.hash != hash {
            self.report.push_always(
                FindingKind::CheckpointMismatch,
                Some(floor),
                format!("the checkpoint at the log's floor (event {floor}) names another chain head than the floor"),
            );
            return;
        }
        if self.keys.is_empty() {
            return;
        }
        match self.keys.verify_checkpoint(cp) {
            Ok(()) => {
                self.report.last_signed_seq = floor;
                self.report.last_signed_time_us = cp.time_us;
            }
            Err(SignatureError::UnknownKey) => {
                let e = self.unknown_keys.entry(cp.key_id.clone()).or_insert((0, cp.seq));
                e.0 += 1;
            }
            Err(SignatureError::Invalid) => self.report.push_always(
                FindingKind::BadSignature,
                Some(floor),
                format!(
                    "the checkpoint at the log's floor (event {floor}) does not carry a valid signature of key {}",
                    cp.key_id
                ),
            ),
        }
    }

    /// The input is a sink that expires its oldest segments (`sink_expires`), and the first
    /// one it holds starts at `first`: the walk starts there. Events before it are not
    /// missing, and the first one's link is not checked (what it links to expired); the
    /// checkpoints after it vouch for it as for every other event. Call before the first
    /// event.
    pub(crate) fn start_at_sink_start(&mut self, first: u64) {
        if first > 1 {
            self.expected = first;
            self.report.expired_before = Some(first);
        }
    }

    /// The input is a log restored from an expiring sink (see [`crate::RestoredStart`]): the
    /// walk starts at its first event, which must link to the hash recorded with it. Nothing
    /// signed vouches for that start (a restore holds no private key, and anyone able to edit
    /// the log could add the record), so it is a finding that leaves the verdict incomplete at
    /// best. Call before the first event.
    pub(crate) fn start_at_restored(&mut self, record: &crate::store::RestoredStart) {
        let first = record.first_seq.max(1);
        self.expected = first;
        self.report.expired_before = Some(first);
        self.prev = decode_hash(&record.prev_hash);
        if self.prev.is_none() {
            self.report.push_always(
                FindingKind::Altered,
                Some(first),
                format!("the restored log's start (event {first}) does not hold a readable hash"),
            );
            self.suppress_link = true;
        }
        self.report.push_always(
            FindingKind::UnsignedStart,
            Some(1),
            format!(
                "this log was restored from {} on {}, which had expired events 1 to {}: nothing \
                 signed vouches for where it starts (verify the sink itself with \
                 `audit verify --shipped`)",
                record.sink,
                gatehouse_core::time::rfc3339_micros(record.restored_us),
                first - 1
            ),
        );
    }

    /// A container of events (a shipped segment) that is not what was written: its events
    /// are not walked, so they show as missing too.
    pub(crate) fn bad_container(&mut self, seq: u64, message: String) {
        self.report.push(FindingKind::Altered, Some(seq), message);
    }

    /// A checkpoint record that could not be decoded: its signature cannot vouch for anything,
    /// and an honest writer never stores one.
    pub(crate) fn unreadable_checkpoint(&mut self, seq: Option<u64>, what: String) {
        self.report.push(
            FindingKind::BadSignature,
            seq,
            format!("{what} is not a readable checkpoint"),
        );
    }

    /// A record in the events' column family whose key is not a seq.
    pub(crate) fn malformed_key(&mut self, key: &[u8]) {
        self.report.push(
            FindingKind::Altered,
            None,
            format!("a record keyed {} is not in the log's format", hex::encode(key)),
        );
    }

    /// The next event, stored at (or listed as) position `pos`.
    pub(crate) fn event(&mut self, pos: u64, stored: &[u8]) {
        if let Some(floor) = self.report.floor
            && pos <= floor
        {
            self.report.push(
                FindingKind::Duplicated,
                Some(pos),
                format!("event {pos} is below the log's floor (event {floor}) but still present"),
            );
            return;
        }
        if let Some(start) = self.report.expired_before
            && pos < start
        {
            self.report.push(
                FindingKind::Duplicated,
                Some(pos),
                format!("event {pos} is before where the log starts (event {start}, after expired events) but present"),
            );
            return;
        }
        if pos < self.expected {
            self.report.push(
                FindingKind::Duplicated,
                Some(pos),
                format!("event {pos} appears more than once"),
            );
            return;
        }
        if pos > self.expected {
            let msg = if pos - self.expected == 1 {
                format!("event {} is missing", self.expected)
            } else {
                format!("events {} to {} are missing", self.expected, pos - 1)
            };
            self.report.push(FindingKind::Missing, Some(self.expected), msg);
            self.suppress_link = true;
        }
        if self.report.events_checked == 0 {
            self.report.first_seq = pos;
        }
        self.expected = pos.saturating_add(1);
        self.report.events_checked += 1;
        self.report.last_seq = pos;

        let parsed = canonical_from_stored(stored).and_then(|(canonical, recorded)| {
            let link: Link = serde_json::from_slice(stored).ok()?;
            let claimed_prev = decode_hash(&link.prev_hash)?;
            Some((canonical, recorded, link.seq, claimed_prev))
        });
        let Some((canonical, recorded, claimed_seq, claimed_prev)) = parsed else {
            self.report.push(
                FindingKind::Altered,
                Some(pos),
                format!("event {pos} is not a readable event record"),
            );
            self.prev = None;
            self.report.last_hash.clear();
            self.suppress_link = true;
            return;
        };
        let mut out_of_place = false;
        if claimed_seq != pos {
            self.report.push(
                FindingKind::Reordered,
                Some(pos),
                format!("the event in place {pos} is event {claimed_seq}"),
            );
            out_of_place = true;
        } else if chain_hash(&claimed_prev, &canonical) != recorded {
            self.report.push(
                FindingKind::Altered,
                Some(pos),
                format!("event {pos} was altered: its content does not match its hash"),
            );
        } else if !self.suppress_link {
            if pos == 1 && claimed_prev != [0u8; 32] {
                self.report.push(
                    FindingKind::BrokenLink,
                    Some(pos),
                    "event 1 does not start from the genesis hash".to_string(),
                );
            } else if let Some(p) = self.prev
                && p != claimed_prev
            {
                self.report.push(
                    FindingKind::BrokenLink,
                    Some(pos),
                    format!(
                        "event {pos} does not link to event {}: an event was replaced, inserted or removed",
                        pos - 1
                    ),
                );
            }
        }
        self.suppress_link = out_of_place;
        self.prev = Some(recorded);
        self.report.last_hash = hex::encode(recorded);

        if let Some(cps) = self.cps.get(&pos) {
            let recorded_hex = hex::encode(recorded);
            for (cp, state) in cps {
                if *state == CpState::Bad {
                    continue;
                }
                if cp.hash != recorded_hex {
                    self.report.push(
                        FindingKind::CheckpointMismatch,
                        Some(pos),
                        format!(
                            "the checkpoint signed at {} by {} names another chain head for event {pos}: \
                             events up to {pos} were rewritten after it was signed",
                            gatehouse_core::time::rfc3339_micros(cp.time_us),
                            cp.key_id
                        ),
                    );
                } else if *state == CpState::Valid {
                    self.report.checkpoints_verified += 1;
                    if self.report.last_signed_seq < pos {
                        self.report.last_signed_time_us = 0;
                    }
                    self.report.last_signed_seq = pos;
                    self.report.last_signed_time_us = self.report.last_signed_time_us.max(cp.time_us);
                }
            }
        }
    }

    /// Finish: checkpoints and the recorded head beyond the last event, and what stayed
    /// unsigned. `recorded_head`: the log's own head marker, when there is one.
    pub(crate) fn finish(mut self, recorded_head: RecordedHead) -> VerifyReport {
        let last = self.report.last_seq;
        for (key_id, (count, first)) in std::mem::take(&mut self.unknown_keys) {
            self.report.push_always(
                FindingKind::UnknownKey,
                Some(first),
                if count == 1 {
                    format!("the checkpoint at event {first} was signed by key {key_id}, which was not given")
                } else {
                    format!(
                        "{count} checkpoints (the first at event {first}) were signed by key {key_id}, \
                         which was not given"
                    )
                },
            );
        }
        self.report.checkpoints = self
            .cps
            .range(self.report.first_seq.max(1)..)
            .map(|(_, v)| v.len() as u64)
            .sum();
        if let Some((&seq, cps)) = self.cps.range(last.saturating_add(1)..).next_back()
            && cps.iter().any(|(_, s)| *s != CpState::Bad)
        {
            let signed = cps.iter().any(|(_, s)| *s == CpState::Valid);
            self.report.push_always(
                FindingKind::Truncated,
                Some(last + 1),
                format!(
                    "a {}checkpoint covers events up to {seq}, but the events end at {last}: \
                     {} events were cut off the end",
                    if signed { "signed " } else { "" },
                    seq - last
                ),
            );
        }
        if let RecordedHead::MissingMarker = recorded_head
            && (self.report.events_checked > 0 || self.report.floor.is_some())
        {
            self.report.push_always(
                FindingKind::Truncated,
                Some(last),
                format!(
                    "the log's head marker is missing (the writer keeps it with every commit): \
                     events after {last} may have been cut off"
                ),
            );
        }
        if let RecordedHead::Marker(head_seq, head_hash) = recorded_head {
            if head_seq > last {
                self.report.push_always(
                    FindingKind::Truncated,
                    Some(last + 1),
                    format!(
                        "the log's head marker names event {head_seq}, but the events end at {last}: \
                         {} events were cut off the end",
                        head_seq - last
                    ),
                );
            } else if head_seq < last || head_hash != self.report.last_hash {
                self.report.push_always(
                    FindingKind::BrokenLink,
                    Some(head_seq.max(1)),
                    format!(
                        "the log's head marker (event {head_seq}) does not match its last event ({last})"
                    ),
                );
            }
        }
        if self.keys.is_empty() {
            self.report.push_always(
                FindingKind::NoKey,
                None,
                "no public key given: checkpoint signatures were not checked, so only the \
                 chain's internal consistency was verified"
                    .to_string(),
            );
        }
        if self.report.events_checked == 0 && self.report.floor.is_none() {
            self.report.push_always(
                FindingKind::Empty,
                None,
                "there are no events to verify".to_string(),
            );
        } else if self.report.events_checked > 0
            && !self.keys.is_empty()
            && self.report.last_signed_seq < last
        {
            let from = self
                .report
                .last_signed_seq
                .max(self.report.first_seq.saturating_sub(1))
                + 1;
            self.report.push_always(
                FindingKind::UnsignedTail,
                Some(from),
                format!(
                    "{} events after the last verified checkpoint (events {from} to {last}) are \
                     protected by the hash chain only",
                    last + 1 - from
                ),
            );
        }
        self.report
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)] // tests fail loudly
mod tests {
    use super::*;
    use crate::checkpoint::CheckpointSigner;

    #[test]
    fn the_verdict_counts_tampering_beyond_the_listing_cap() {
        // 150 checkpoints from a key that was not given, then 150 unreadable events: the
        // unknown key is one finding, and the cap hides no tampering from the verdict.
        let (private, _, _) = CheckpointSigner::generate().expect("key");
        let signer = CheckpointSigner::from_pem(&private).expect("signer");
        let (_, other, _) = CheckpointSigner::generate().expect("key");
        let mut keys = PublicKeys::default();
        keys.add_pem(&other).expect("public key");
        let cps = (1..=150u64)
            .map(|s| signer.checkpoint(s, &[7u8; 32], 1))
            .collect();
        let mut walk = Walk::new(&keys, cps, 1);
        for pos in 1..=150u64 {
            walk.event(pos, b"not an event");
        }
        let report = walk.finish(RecordedHead::NotApplicable);
        let unknown: Vec<&Finding> = report
            .findings
            .iter()
            .filter(|f| f.kind == FindingKind::UnknownKey)
            .collect();
        assert_eq!(unknown.len(), 1, "{report:?}");
        assert!(unknown[0].message.starts_with("150 checkpoints"), "{unknown:?}");
        assert_eq!(report.tampering_findings, 150);
        // The capped event findings, then the unknown key and the unsigned tail (always listed).
        assert_eq!(report.findings.len(), MAX_FINDINGS + 2);
        assert!(report.findings_omitted > 0);
        assert_eq!(report.outcome(TailPolicy::live(60)), Outcome::Tampered);
    }

    #[test]
    fn seq_overflow_is_a_finding_not_a_crash() {
        let keys = PublicKeys::default();
        let mut walk = Walk::new(&keys, Vec::new(), 1);
        walk.event(u64::MAX, b"{}");
        walk.event(u64::MAX, b"{}");
        let report = walk.finish(RecordedHead::NotApplicable);
        assert!(!report.is_ok());
        assert_eq!(report.outcome(TailPolicy::Strict), Outcome::Tampered);
    }
}
