//! Approval requests for held operations (DESIGN.md §3 step 3 and §4).
//!
//! When the guard decides that an operation needs approval (every determining Cedar policy
//! carries `@approvers`, or a plugin returned `hold`), it [`open`](Approvals::open)s a request
//! here and waits on the returned receiver while the client is told the request id. Approvers
//! act through the admin API, which calls [`vote`](Approvals::vote); the rules live here so
//! that every way in applies the same ones:
//!
//! - only a human (`User`) may vote, and only a member of one of the request's approver groups;
//! - the requester may not vote on their own request, nor may the human an agent acts for;
//! - each approver votes once; one denial denies the request; `min_approvals` distinct
//!   approvals approve it;
//! - a request that is no longer pending cannot be voted on (it timed out, was withdrawn
//!   because the client disconnected or canceled, or was already decided).
//!
//! Requests live in this process: a held operation only exists while its client's connection
//! to this gateway does. Every step is also recorded in the audit log by the caller, which is
//! the durable history; decided requests are kept here (up to `history`) for
//! `gatehouse approvals list|show`.

pub mod access;
pub mod notify;

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use gatehouse_core::{Principal, PrincipalKind};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Approved,
    Denied,
    TimedOut,
    Withdrawn,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::TimedOut => "timed_out",
            State::Withdrawn => "withdrawn",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        [
            State::Pending,
            State::Approved,
            State::Denied,
            State::TimedOut,
            State::Withdrawn,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// One approver's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// `user:name` of the approver.
    pub approver: String,
    pub approve: bool,
    #[serde(default)]
    pub comment: String,
    pub time_us: i64,
    /// The approver's groups among the request's approver groups.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// What the guard knows when it opens a request.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub session_id: String,
    /// Per-session operation number of the held operation.
    pub op: u64,
    pub requester: Principal,
    pub target: String,
    /// `query`, later `exec`, `http_request`, …
    pub action: String,
    /// The operation as the approver must see it (the exact statement text).
    pub operation: String,
    /// Statement kind or other short classification, for listings.
    pub kind: String,
    pub approvers: Vec<String>,
    /// Sets of groups that must each have an approving member (one per policy that asked);
    /// empty: any of `approvers`.
    pub required_groups: Vec<Vec<String>>,
    /// Why approval is needed (the policies or the plugin that asked), user-facing.
    pub reason: String,
    pub policy_ids: Vec<String>,
    pub min_approvals: u32,
    pub timeout_secs: u64,
}

/// An approval request as approvers and auditors see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    pub id: String,
    pub state: State,
    pub created_us: i64,
    /// When a pending request is denied for lack of approval.
    pub expires_us: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_us: Option<i64>,
    pub session_id: String,
    pub op: u64,
    /// `agent:name` / `user:name`.
    pub requester: String,
    /// For an agent acting for a human: the human's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
    pub target: String,
    pub action: String,
    pub operation: String,
    pub kind: String,
    pub approvers: Vec<String>,
    /// Each of these sets needs an approving member (one set per policy that asked for
    /// approval), on top of `min_approvals`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_groups: Vec<Vec<String>>,
    pub reason: String,
    pub policy_ids: Vec<String>,
    pub min_approvals: u32,
    pub votes: Vec<Vote>,
    /// Why a request ended without a vote deciding it (`client disconnected`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
}

impl ApprovalRequest {
    pub fn approvals(&self) -> usize {
        self.votes.iter().filter(|v| v.approve).count()
    }

    /// Enough approvals, and one from each required group set.
    pub fn is_approved(&self) -> bool {
        self.approvals() >= self.min_approvals as usize
            && self.required_groups.iter().all(|set| {
                self.votes
                    .iter()
                    .any(|v| v.approve && v.groups.iter().any(|g| set.contains(g)))
            })
    }
}

/// Why a vote was refused. The texts are user-facing (the admin API returns them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VoteError {
    #[error("no approval request `{0}`")]
    NotFound(String),
    #[error("approval request `{0}` is already {1}")]
    NotPending(String, &'static str),
    #[error("you may not decide your own request")]
    SelfApproval,
    #[error("only people may decide approval requests, not agents")]
    NotHuman,
    #[error("you are not in an approver group of this request ({0})")]
    NotAnApprover(String),
    #[error("you already decided this request")]
    AlreadyVoted,
    #[error("approval request `{0}` has expired")]
    Expired(String),
}

struct Entry {
    req: ApprovalRequest,
    /// Becomes the ended request once it leaves `pending`.
    tx: watch::Sender<Option<ApprovalRequest>>,
}

#[derive(Default)]
struct Inner {
    pending: HashMap<String, Entry>,
    decided: HashMap<String, ApprovalRequest>,
    /// Decided ids, oldest first, for bounding `decided`.
    order: VecDeque<String>,
}

/// The gateway's approval requests.
pub struct Approvals {
    inner: Mutex<Inner>,
    history: usize,
}

/// A request left `pending` because it was decided; what the caller records.
#[derive(Debug, Clone)]
pub struct Ended {
    pub request: ApprovalRequest,
}

fn now_us() -> i64 {
    gatehouse_core::time::now_micros()
}

impl Approvals {
    pub fn new(history: usize) -> Approvals {
        Approvals {
            inner: Mutex::new(Inner::default()),
            history,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than refusing every approval would.
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// A fresh request id: `ap-` and 12 hex digits.
    pub fn new_id() -> String {
        let mut b = [0u8; 6];
        rand::rng().fill_bytes(&mut b);
        format!("ap-{}", hex::encode(b))
    }

    /// Open a pending request under `id` (from [`new_id`](Self::new_id), recorded by the
    /// caller first). The receiver changes once, to the request as it ended.
    pub fn open(
        &self,
        id: String,
        new: NewRequest,
    ) -> (ApprovalRequest, watch::Receiver<Option<ApprovalRequest>>) {
        let created = now_us();
        let timeout_us = i64::try_from(new.timeout_secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
        let req = ApprovalRequest {
            id: id.clone(),
            state: State::Pending,
            created_us: created,
            expires_us: created.saturating_add(timeout_us),
            decided_us: None,
            session_id: new.session_id,
            op: new.op,
            requester: new.requester.display(),
            on_behalf_of: new.requester.on_behalf_of.clone(),
            target: new.target,
            action: new.action,
            operation: new.operation,
            kind: new.kind,
            approvers: new.approvers,
            required_groups: new.required_groups,
            reason: new.reason,
            policy_ids: new.policy_ids,
            min_approvals: new.min_approvals.max(1),
            votes: Vec::new(),
            end_reason: None,
        };
        let (tx, rx) = watch::channel(None);
        let mut inner = self.lock();
        if inner.pending.contains_key(&id) || inner.decided.contains_key(&id) {
            // Ids are 48 random bits; a clash is refused rather than overwriting a request.
            drop(inner);
            let (tx, rx) = watch::channel(None);
            let mut clash = req.clone();
            clash.state = State::Withdrawn;
            clash.end_reason = Some("request id clash".into());
            let _ = tx.send(Some(clash));
            return (req, rx);
        }
        inner.pending.insert(id, Entry { req: req.clone(), tx });
        (req, rx)
    }

    /// Whether `voter` may vote on request `id` now (the same rules [`vote`](Self::vote)
    /// applies), without voting: callers record the vote durably between the two.
    pub fn check_vote(&self, id: &str, voter: &Principal) -> Result<ApprovalRequest, VoteError> {
        let inner = self.lock();
        let entry = Self::pending_entry(&inner, id)?;
        Self::may_vote(&entry.req, voter)?;
        Ok(entry.req.clone())
    }

    /// Record `voter`'s decision on request `id`, applying the approver rules. Returns the
    /// request after the vote (its state tells whether this vote decided it).
    pub fn vote(
        &self,
        id: &str,
        voter: &Principal,
        approve: bool,
        comment: &str,
    ) -> Result<ApprovalRequest, VoteError> {
        let mut inner = self.lock();
        Self::pending_entry(&inner, id)?;
        let Some(req) = inner.pending.get_mut(id).map(|e| &mut e.req) else {
            return Err(VoteError::NotFound(id.to_string()));
        };
        Self::may_vote(req, voter)?;
        req.votes.push(Vote {
            approver: voter.display(),
            approve,
            comment: comment.to_string(),
            time_us: now_us(),
            groups: voter
                .groups
                .iter()
                .filter(|g| req.approvers.contains(g))
                .cloned()
                .collect(),
        });
        let state = if !approve {
            State::Denied
        } else if req.is_approved() {
            State::Approved
        } else {
            State::Pending
        };
        if state == State::Pending {
            return Ok(req.clone());
        }
        Self::end(&mut inner, id, state, None, self.history)
            .ok_or_else(|| VoteError::NotFound(id.to_string()))
    }

    fn pending_entry<'a>(inner: &'a Inner, id: &str) -> Result<&'a Entry, VoteError> {
        inner.pending.get(id).ok_or_else(|| match inner.decided.get(id) {
            Some(r) => VoteError::NotPending(id.to_string(), r.state.as_str()),
            None => VoteError::NotFound(id.to_string()),
        })
    }

    fn may_vote(req: &ApprovalRequest, voter: &Principal) -> Result<(), VoteError> {
        // The waiting session times the request out at this instant; no vote after it counts.
        if now_us() >= req.expires_us {
            return Err(VoteError::Expired(req.id.clone()));
        }
        if voter.kind != PrincipalKind::User {
            return Err(VoteError::NotHuman);
        }
        if req.requester == voter.display() || req.on_behalf_of.as_deref() == Some(voter.id.as_str()) {
            return Err(VoteError::SelfApproval);
        }
        if !voter.groups.iter().any(|g| req.approvers.contains(g)) {
            return Err(VoteError::NotAnApprover(req.approvers.join(", ")));
        }
        let me = voter.display();
        if req.votes.iter().any(|v| v.approver == me) {
            return Err(VoteError::AlreadyVoted);
        }
        Ok(())
    }

    /// End a pending request without a vote (`TimedOut`, `Withdrawn`). Returns the ended
    /// request, or `None` when it was no longer pending (a vote decided it first).
    pub fn finish(&self, id: &str, state: State, reason: &str) -> Option<ApprovalRequest> {
        let mut inner = self.lock();
        Self::end(&mut inner, id, state, Some(reason.to_string()), self.history)
    }

    fn end(
        inner: &mut Inner,
        id: &str,
        state: State,
        reason: Option<String>,
        history: usize,
    ) -> Option<ApprovalRequest> {
        let Entry { mut req, tx } = inner.pending.remove(id)?;
        req.state = state;
        req.decided_us = Some(now_us());
        req.end_reason = reason;
        // Nobody waiting (the session already gave up) is fine.
        let _ = tx.send(Some(req.clone()));
        inner.decided.insert(id.to_string(), req.clone());
        inner.order.push_back(id.to_string());
        while inner.order.len() > history {
            if let Some(old) = inner.order.pop_front() {
                inner.decided.remove(&old);
            }
        }
        Some(req)
    }

    /// End every pending request of a session (it closed). Returns the ended requests.
    pub fn finish_session(&self, session_id: &str, reason: &str) -> Vec<ApprovalRequest> {
        let mut inner = self.lock();
        let ids: Vec<String> = inner
            .pending
            .values()
            .filter(|e| e.req.session_id == session_id)
            .map(|e| e.req.id.clone())
            .collect();
        ids.iter()
            .filter_map(|id| {
                Self::end(
                    &mut inner,
                    id,
                    State::Withdrawn,
                    Some(reason.to_string()),
                    self.history,
                )
            })
            .collect()
    }

    pub fn get(&self, id: &str) -> Option<ApprovalRequest> {
        let inner = self.lock();
        inner
            .pending
            .get(id)
            .map(|e| e.req.clone())
            .or_else(|| inner.decided.get(id).cloned())
    }

    /// Requests in `state` (all when `None`), newest first.
    pub fn list(&self, state: Option<State>) -> Vec<ApprovalRequest> {
        let inner = self.lock();
        let mut out: Vec<ApprovalRequest> = inner
            .pending
            .values()
            .map(|e| &e.req)
            .chain(inner.decided.values())
            .filter(|r| state.is_none_or(|s| r.state == s))
            .cloned()
            .collect();
        out.sort_by(|a, b| b.created_us.cmp(&a.created_us).then_with(|| a.id.cmp(&b.id)));
        out
    }

    /// Pending requests (for metrics).
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
mod tests;
