//! Events and the v1 chain encoding.

use gatehouse_core::{Principal, RecordedRows, SqlStatement, Verdict};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::RecorderError;

/// `prev_hash` of the first event: 32 zero bytes, hex-encoded.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Name of the chain encoding implemented here (see the crate documentation).
pub const CHAIN_FORMAT: &str = "v1";

/// One record of the log, as stored (its JSON is the stored value, byte for byte).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Position in the log, 1-based and contiguous.
    pub seq: u64,
    /// Microseconds since the Unix epoch, as given by the caller.
    pub time_us: i64,
    pub session_id: String,
    /// `agent:name` / `user:name`, when known.
    pub principal: Option<String>,
    /// For an agent acting for a person (RFC 8693 `act`): that person's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
    /// The actors that instructed the acting one, nearest first (nested `act` claims).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actor_chain: Vec<String>,
    pub body: EventBody,
    /// Hex SHA-256 of the previous event ([`GENESIS_HASH`] for seq 1).
    pub prev_hash: String,
    /// Hex SHA-256 of this event (see the crate documentation for what is hashed).
    pub hash: String,
}

/// What happened.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventBody {
    /// A client authenticated and a session began.
    SessionStart {
        protocol: String,
        /// `ip:port` of the client.
        source: String,
        target: String,
        client_app: Option<String>,
        auth_method: String,
        principal: Principal,
        /// The target's tags from config when the session began (what Cedar saw as the
        /// resource's tags), so recorded operations can be re-decided later.
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        target_tags: std::collections::BTreeMap<String, String>,
        /// How the credential was verified: issuer, token age, second factor, and when it
        /// stops being valid (the session ends at its first operation after that).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        auth: Option<gatehouse_core::AuthInfo>,
        /// The access grant the session was opened under (Cedar's `context.grant`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grant: Option<gatehouse_core::GrantRef>,
    },
    /// A client failed to authenticate.
    AuthFailure {
        protocol: String,
        source: String,
        /// The user name the client presented.
        user: String,
        target: String,
        reason: String,
    },
    /// The guard's decision for one operation; recorded before the operation is forwarded.
    Decision {
        /// Per-session operation number.
        op: u64,
        /// `connect` | `query`.
        action: String,
        statement: Option<SqlStatement>,
        verdict: Verdict,
        policy_generation: u64,
        /// Problems met while deciding (e.g. policy evaluation errors).
        errors: Vec<String>,
        /// What each plugin of the target's chain did (after Cedar allowed).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        plugins: Vec<PluginRecord>,
        /// The operation is held for approval: the request it waits for. `verdict` is what
        /// happens if it is not approved.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hold: Option<Box<HoldRecord>>,
        /// This decision ends a hold of the same `op`: how the request ended and who voted.
        /// After an approval, `verdict` is the decision re-made with `context.approved`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approval: Option<Box<ApprovalRecord>>,
        /// A policy or plugin asked for approval, but this operation cannot be held (a
        /// connection, a statement without text, a gateway without an admin API): why. It is
        /// denied (`verdict`); policy what-if reads this to compare like with like.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unheld: Option<String>,
    },
    /// An approver's vote on a held operation's request, recorded in the held session (the
    /// event's principal is the approver).
    ApprovalVote {
        request: String,
        op: u64,
        approve: bool,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        comment: String,
    },
    /// How an allowed (or skipped) operation ended.
    OpResult {
        op: u64,
        /// The CommandComplete tag, e.g. `SELECT 3`.
        tag: Option<String>,
        rows: u64,
        duration_us: u64,
        error: Option<OpError>,
        /// The operation was not run (e.g. skipped after an earlier error in the same batch).
        skipped: bool,
        /// Its rows as the client received them (after masking), up to
        /// `[recorder.results] max_bytes`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<RecordedRows>,
    },
    /// The session ended.
    SessionEnd {
        reason: String,
        ops: u64,
        duration_us: u64,
    },
    /// A gateway-side anomaly for the session (protocol error, upstream failure, ...).
    Notice { level: String, message: String },
    /// A step of a just-in-time access request (`gatehouse access request`), recorded in the
    /// request's own session (`access-<request id>`): `requested`, `granted`, `denied`,
    /// `timed_out`, `withdrawn`, or `expired`. Approvers' votes are `ApprovalVote`s there.
    Access {
        request: String,
        step: String,
        target: String,
        duration_secs: u64,
        reason: String,
        /// When the grant ends (`granted`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_us: Option<i64>,
    },
    /// What the masking stage did to an operation's results: what it found (entity, column,
    /// count; never values) and which maskers faulted. Recorded when the operation completes.
    Masking {
        op: u64,
        findings: Vec<gatehouse_core::Finding>,
        faults: Vec<gatehouse_core::MaskFault>,
    },
}

/// One plugin's part in a decision: which plugin (name and content hash), which hook, what it
/// said (`allow`, `deny`, `hold`, `rows`, `fault:<kind>`) and how long it took.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PluginRecord {
    pub plugin: String,
    /// Hex SHA-256 of the plugin's `.wasm`.
    pub hash: String,
    pub hook: String,
    pub result: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    pub elapsed_us: u64,
}

/// An approval request opened for a held operation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HoldRecord {
    pub request: String,
    /// Groups whose members may approve.
    pub approvers: Vec<String>,
    pub min_approvals: u32,
    pub timeout_secs: u64,
    /// Why approval is needed (policies or plugin), as the client was told.
    pub reason: String,
    /// The operation's bound parameters (`'text'`, `NULL`, `<binary N bytes>`), as approvers
    /// were shown them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<String>,
}

/// How an approval request ended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ApprovalRecord {
    pub request: String,
    /// `approved` | `denied` | `timed_out` | `withdrawn`.
    pub state: String,
    pub votes: Vec<VoteRecord>,
    /// Why it ended without a deciding vote (`client disconnected`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
}

/// One approver's vote.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct VoteRecord {
    /// `user:name`.
    pub approver: String,
    pub approve: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comment: String,
    pub time_us: i64,
}

/// An error the upstream returned for an operation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OpError {
    /// E.g. the SQLSTATE.
    pub code: String,
    pub message: String,
}

/// What callers pass to the recorder: an event without `seq`, `prev_hash` and `hash`, which
/// the writer assigns.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub time_us: i64,
    pub session_id: String,
    pub principal: Option<String>,
    /// See [`Event::on_behalf_of`].
    pub on_behalf_of: Option<String>,
    /// See [`Event::actor_chain`].
    pub actor_chain: Vec<String>,
    pub body: EventBody,
}

impl From<Event> for NewEvent {
    /// The event as it was appended (a sealed event that could not be written, to try again).
    fn from(ev: Event) -> NewEvent {
        NewEvent {
            time_us: ev.time_us,
            session_id: ev.session_id,
            principal: ev.principal,
            on_behalf_of: ev.on_behalf_of,
            actor_chain: ev.actor_chain,
            body: ev.body,
        }
    }
}

impl NewEvent {
    /// The same event, saying whom its principal acted for and the actors that instructed it.
    pub fn acting_for(mut self, on_behalf_of: Option<String>, actor_chain: Vec<String>) -> Self {
        self.on_behalf_of = on_behalf_of;
        self.actor_chain = actor_chain;
        self
    }

    /// An event stamped with the current time.
    pub fn now(session_id: impl Into<String>, principal: Option<String>, body: EventBody) -> Self {
        NewEvent {
            time_us: gatehouse_core::time::now_micros(),
            session_id: session_id.into(),
            principal,
            on_behalf_of: None,
            actor_chain: Vec::new(),
            body,
        }
    }
}

/// The stored value ends with this, followed by 64 hex digits and `"}`.
const HASH_FIELD: &[u8] = b",\"hash\":\"";
const HEX_LEN: usize = 64;

/// SHA-256(prev_hash bytes ‖ canonical bytes).
pub fn chain_hash(prev: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical);
    h.finalize().into()
}

/// Decode a 64-digit hex hash.
pub fn decode_hash(hex_hash: &str) -> Option<[u8; 32]> {
    if hex_hash.len() != HEX_LEN {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_hash, &mut out).ok()?;
    Some(out)
}

/// Initial capacity of an event's encoding.
const SEAL_CAPACITY: usize = 1024;

/// Lowercase hex of a hash. `hex::encode` collects chars one by one, which showed in the
/// writer's profile (two per event); this encodes into a buffer.
fn hex_string(h: &[u8; 32]) -> String {
    let mut buf = [0u8; HEX_LEN];
    // Cannot fail: the buffer is exactly twice the input, and hex digits are ASCII.
    if hex::encode_to_slice(h, &mut buf).is_err() {
        return hex::encode(h);
    }
    String::from_utf8(buf.to_vec()).unwrap_or_else(|_| hex::encode(h))
}

/// Build the stored event for `new` at `seq` after `prev` (raw bytes of the previous hash).
/// Returns the event and its stored (= serialized) bytes.
pub(crate) fn seal(
    new: NewEvent,
    seq: u64,
    prev: &[u8; 32],
) -> Result<(Event, Vec<u8>, [u8; 32]), RecorderError> {
    let mut ev = Event {
        seq,
        time_us: new.time_us,
        session_id: new.session_id,
        principal: new.principal,
        on_behalf_of: new.on_behalf_of,
        actor_chain: new.actor_chain,
        body: new.body,
        prev_hash: hex_string(prev),
        hash: String::new(),
    };
    // Most events encode to a few hundred bytes: one allocation instead of a series of
    // doublings (the writer thread is the log's bottleneck).
    let mut bytes = Vec::with_capacity(SEAL_CAPACITY);
    serde_json::to_writer(&mut bytes, &ev).map_err(|e| RecorderError::Encode(e.to_string()))?;
    let hash = chain_hash(prev, &bytes);
    let hash_hex = hex_string(&hash);
    // `bytes` ends with `,"hash":""}` (hash is the last field): splice the hex digest in, so
    // the stored value equals the serialization of the finished event.
    let tail_ok = bytes.ends_with(b"\"\"}")
        && bytes
            .len()
            .checked_sub(2)
            .and_then(|n| bytes.get(..n))
            .is_some_and(|b| b.ends_with(HASH_FIELD));
    if !tail_ok {
        return Err(RecorderError::Encode(
            "unexpected event encoding (hash is not the last field)".to_string(),
        ));
    }
    bytes.truncate(bytes.len() - 2);
    bytes.extend_from_slice(hash_hex.as_bytes());
    bytes.extend_from_slice(b"\"}");
    ev.hash = hash_hex;
    Ok((ev, bytes, hash))
}

/// Split a stored value into its canonical bytes (with `"hash":""`) and the recorded hash.
/// `None` when the value does not have the v1 shape.
pub fn canonical_from_stored(stored: &[u8]) -> Option<(Vec<u8>, [u8; 32])> {
    let n = stored.len();
    let body_end = n.checked_sub(HEX_LEN + 2)?;
    if stored.get(n - 2..)? != b"\"}" {
        return None;
    }
    let prefix = stored.get(..body_end)?;
    if !prefix.ends_with(HASH_FIELD) {
        return None;
    }
    let hex_part = std::str::from_utf8(stored.get(body_end..n - 2)?).ok()?;
    // Only the lowercase form is canonical.
    if hex_part.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let hash = decode_hash(hex_part)?;
    let mut canonical = Vec::with_capacity(body_end + 3);
    canonical.extend_from_slice(prefix);
    canonical.extend_from_slice(b"\"}");
    Some((canonical, hash))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bytes_are_the_event_json_and_split_back() {
        let new = NewEvent {
            time_us: 1,
            session_id: "s".into(),
            principal: Some("agent:a".into()),
            on_behalf_of: None,
            actor_chain: Vec::new(),
            body: EventBody::Notice {
                level: "warn".into(),
                message: "x \"quoted\" }".into(),
            },
        };
        let prev = [7u8; 32];
        let (ev, stored, hash) = seal(new, 5, &prev).unwrap();
        assert_eq!(stored, serde_json::to_vec(&ev).unwrap());
        let (canonical, h2) = canonical_from_stored(&stored).unwrap();
        assert_eq!(h2, hash);
        let mut blank = ev.clone();
        blank.hash = String::new();
        assert_eq!(canonical, serde_json::to_vec(&blank).unwrap());
        assert_eq!(chain_hash(&prev, &canonical), hash);
        assert_eq!(decode_hash(GENESIS_HASH), Some([0u8; 32]));
        assert_eq!(ev.prev_hash, hex::encode(prev));
        assert_eq!(ev.hash, hex::encode(hash));
        let h: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37));
        assert_eq!(hex_string(&h), hex::encode(h));
        assert!(
            !String::from_utf8_lossy(&stored).contains("on_behalf_of"),
            "events of principals acting for themselves are encoded as before"
        );
    }

    #[test]
    fn delegation_is_in_every_event_and_in_its_hash() {
        let new = NewEvent {
            time_us: 1,
            session_id: "s".into(),
            principal: Some("agent:copilot".into()),
            on_behalf_of: Some("alice".into()),
            actor_chain: vec!["agent:planner".into()],
            body: EventBody::Notice {
                level: "info".into(),
                message: "x".into(),
            },
        };
        let (ev, stored, hash) = seal(new, 1, &[0u8; 32]).unwrap();
        let text = String::from_utf8_lossy(&stored).into_owned();
        assert!(
            text.contains(r#""on_behalf_of":"alice","actor_chain":["agent:planner"]"#),
            "{text}"
        );
        let back: Event = serde_json::from_slice(&stored).unwrap();
        assert_eq!(back, ev);
        // Changing who the agent acted for breaks the link.
        let forged = text.replace("\"alice\"", "\"mallory\"");
        let (canonical, recorded) = canonical_from_stored(forged.as_bytes()).unwrap();
        assert_eq!(recorded, hash);
        assert_ne!(chain_hash(&[0u8; 32], &canonical), hash);
    }
}
