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
//! Requests live in an [`ApprovalStore`]: this process's memory by default, or a PostgreSQL
//! database shared by several gateways ([`pgstore`]), so that an approval given through one
//! gateway releases a statement held on another. A held operation only exists while its
//! client's connection to its gateway does; that gateway waits for the request and times it
//! out. Every step is also recorded in the audit log by the caller, which is the durable
//! history; decided requests are kept in the store (the memory store keeps `history` of them)
//! for `gatehouse approvals list|show`.

pub mod access;
pub mod notify;
pub mod pgstore;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gatehouse_core::{Principal, PrincipalKind};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use store::{ApprovalStore, StoreError};

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
    #[error("{0}")]
    Unavailable(String),
}

/// The gateway's approval requests: where they are kept (a [`store::ApprovalStore`]) and who on
/// this gateway waits for them.
pub struct Approvals {
    store: Arc<dyn ApprovalStore>,
    waiters: Arc<Waiters>,
}

/// Requests someone on this gateway waits for (a held statement, an access request), and the
/// channel each waiter hears its end on. A shared store delivers ends decided on other gateways
/// through [`deliver`](Self::deliver).
#[derive(Default)]
pub struct Waiters {
    map: Mutex<HashMap<String, Waiter>>,
}

struct Waiter {
    /// The request as opened here (what this gateway knows of it when the store cannot say).
    opened: ApprovalRequest,
    tx: watch::Sender<Option<ApprovalRequest>>,
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiter>> {
        lock(&self.map)
    }

    fn add(&self, opened: &ApprovalRequest) -> watch::Receiver<Option<ApprovalRequest>> {
        let (tx, rx) = watch::channel(None);
        let w = Waiter {
            opened: opened.clone(),
            tx,
        };
        self.lock().insert(opened.id.clone(), w);
        rx
    }

    fn opened(&self, id: &str) -> Option<ApprovalRequest> {
        self.lock().get(id).map(|w| w.opened.clone())
    }

    /// Whether someone here waits for request `id`.
    pub fn waits_for(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// The ids waited for here.
    pub fn ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Tell the waiter of `req` that it ended (no-op while it is pending or nobody waits).
    pub fn deliver(&self, req: &ApprovalRequest) {
        if req.state == State::Pending {
            return;
        }
        if let Some(w) = self.lock().remove(&req.id) {
            // Nobody listening any more (the session already gave up) is fine.
            let _ = w.tx.send(Some(req.clone()));
        }
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Lock `m`, also after a panic elsewhere while it was held: every critical section here
/// leaves its data consistent before anything that can panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn now_us() -> i64 {
    gatehouse_core::time::now_micros()
}

/// How long after its deadline a request nobody ended any more (the gateway holding it stopped)
/// is ended by whoever lists it.
const ABANDONED_AFTER_US: i64 = 60_000_000;

impl Approvals {
    /// Requests kept in this process; `history` decided ones are kept for listings.
    pub fn new(history: usize) -> Approvals {
        Self::with_store(Arc::new(store::MemoryStore::new(history)))
    }

    /// Requests kept in `store` (shared with other gateways when it is a shared one).
    pub fn with_store(store: Arc<dyn ApprovalStore>) -> Approvals {
        let waiters = Arc::new(Waiters::default());
        store.watch(waiters.clone());
        Approvals { store, waiters }
    }

    /// A fresh request id: `ap-` and 12 hex digits.
    pub fn new_id() -> String {
        let mut b = [0u8; 6];
        rand::rng().fill_bytes(&mut b);
        format!("ap-{}", hex::encode(b))
    }

    /// Open a pending request under `id` (from [`new_id`](Self::new_id), recorded by the
    /// caller first). The receiver changes once, to the request as it ended. When the request
    /// cannot be stored (an id clash, the store unreachable), the receiver already holds it
    /// `withdrawn` with the reason: the operation it holds must not run.
    pub async fn open(
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
        // Waiting before the request exists: a vote on another gateway may come at once.
        let rx = self.waiters.add(&req);
        let failed = match self.store.insert(&req).await {
            Ok(true) => None,
            // Ids are 48 random bits; a clash is refused rather than overwriting a request.
            Ok(false) => Some("request id clash".to_string()),
            // The client learns only that the store is unavailable; the operator log has why.
            Err(e) => {
                tracing::warn!(request = %id, "approval request not stored: {e}");
                Some("approval store unavailable; try again later".to_string())
            }
        };
        if let Some(why) = failed {
            let mut ended = req.clone();
            ended.state = State::Withdrawn;
            ended.decided_us = Some(now_us());
            ended.end_reason = Some(why);
            self.waiters.deliver(&ended);
        }
        (req, rx)
    }

    /// Whether `voter` may vote on request `id` now (the same rules [`vote`](Self::vote)
    /// applies), without voting: callers record the vote durably between the two.
    pub async fn check_vote(&self, id: &str, voter: &Principal) -> Result<ApprovalRequest, VoteError> {
        let req = self.pending_request(id).await?;
        may_vote(&req, voter)?;
        Ok(req)
    }

    async fn pending_request(&self, id: &str) -> Result<ApprovalRequest, VoteError> {
        match self.store.get(id).await {
            Ok(Some(r)) if r.state == State::Pending => Ok(r),
            Ok(Some(r)) => Err(VoteError::NotPending(id.to_string(), r.state.as_str())),
            Ok(None) => Err(VoteError::NotFound(id.to_string())),
            Err(e) => Err(VoteError::Unavailable(e.to_string())),
        }
    }

    /// Record `voter`'s decision on request `id`, applying the approver rules. Returns the
    /// request after the vote (its state tells whether this vote decided it).
    pub async fn vote(
        &self,
        id: &str,
        voter: &Principal,
        approve: bool,
        comment: &str,
    ) -> Result<ApprovalRequest, VoteError> {
        let apply = |req: &ApprovalRequest| -> Result<ApprovalRequest, VoteError> {
            may_vote(req, voter)?;
            let mut req = req.clone();
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
            req.state = if !approve {
                State::Denied
            } else if req.is_approved() {
                State::Approved
            } else {
                State::Pending
            };
            if req.state != State::Pending {
                req.decided_us = Some(now_us());
            }
            Ok(req)
        };
        let after = self.store.update(id, &apply).await?;
        self.waiters.deliver(&after);
        Ok(after)
    }

    /// End a pending request without a vote (`TimedOut`, `Withdrawn`). Returns the ended
    /// request, or `None` when it was no longer pending (a vote decided it first). When the
    /// store cannot be reached, the request ends here all the same (what waits for it must not
    /// run) and the returned request says so.
    pub async fn finish(&self, id: &str, state: State, reason: &str) -> Option<ApprovalRequest> {
        let apply = |req: &ApprovalRequest| -> Result<ApprovalRequest, VoteError> {
            let mut req = req.clone();
            req.state = state;
            req.decided_us = Some(now_us());
            req.end_reason = Some(reason.to_string());
            Ok(req)
        };
        match self.store.update(id, &apply).await {
            Ok(after) => {
                self.waiters.deliver(&after);
                Some(after)
            }
            Err(VoteError::Unavailable(e)) => {
                let mut ended = self.waiters.opened(id)?;
                ended.state = state;
                ended.decided_us = Some(now_us());
                ended.end_reason = Some(format!("{reason} (not stored: {e})"));
                self.waiters.deliver(&ended);
                Some(ended)
            }
            Err(_) => None,
        }
    }

    /// End every pending request of a session (it closed). Returns the ended requests.
    pub async fn finish_session(&self, session_id: &str, reason: &str) -> Vec<ApprovalRequest> {
        let ids = match self.store.pending_in_session(session_id).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(session = %session_id, "cannot end the session's approval requests: {e}");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for id in ids {
            if let Some(r) = self.finish(&id, State::Withdrawn, reason).await {
                out.push(r);
            }
        }
        out
    }

    pub async fn get(&self, id: &str) -> Result<Option<ApprovalRequest>, StoreError> {
        self.store.get(id).await
    }

    /// Requests in `state` (all when `None`), newest first. Requests still pending long after
    /// their deadline were abandoned by a gateway that stopped: they end here as timed out.
    pub async fn list(&self, state: Option<State>) -> Result<Vec<ApprovalRequest>, StoreError> {
        Ok(self.list_ending_abandoned(state).await?.0)
    }

    /// [`Approvals::list`], and the abandoned requests this call ended (for the caller to
    /// record: no gateway waits for them, so nobody else will).
    pub async fn list_ending_abandoned(
        &self,
        state: Option<State>,
    ) -> Result<(Vec<ApprovalRequest>, Vec<ApprovalRequest>), StoreError> {
        let mut out = self.store.list(state).await?;
        let now = now_us();
        let mut ended_here = Vec::new();
        for r in out.iter_mut() {
            if r.state == State::Pending && now > r.expires_us.saturating_add(ABANDONED_AFTER_US) {
                let why = "no decision before its deadline, and no gateway waits for it any more";
                if let Some(ended) = self.finish(&r.id, State::TimedOut, why).await {
                    // `finish` returns the request only to the one call that ended it.
                    ended_here.push(ended.clone());
                    *r = ended;
                }
            }
        }
        out.retain(|r| state.is_none_or(|s| r.state == s));
        Ok((out, ended_here))
    }

    /// Requests someone waits for on this gateway (for metrics).
    pub fn pending(&self) -> usize {
        self.waiters.len()
    }
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
mod tests;
