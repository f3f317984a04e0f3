//! Where approval requests are kept.
//!
//! [`Approvals`](crate::Approvals) applies the approver rules; a store only keeps requests and
//! makes each change atomic: [`update`](ApprovalStore::update) applies a change to a request
//! that is still pending, and no other change to it can slip in between the read and the
//! write. [`MemoryStore`] keeps them in this process (one gateway);
//! [`PgStore`](crate::pgstore::PgStore) in a PostgreSQL database that several gateways share,
//! and tells each gateway about changes made by the others.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::{ApprovalRequest, State, VoteError, Waiters};

/// The store cannot be reached or refused the operation. User-facing text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("approval store unavailable: {0}")]
pub struct StoreError(pub String);

impl From<StoreError> for VoteError {
    fn from(e: StoreError) -> VoteError {
        VoteError::Unavailable(e.to_string())
    }
}

/// A change to a pending request; its error is returned as is and nothing is written.
pub type Change<'a> = dyn Fn(&ApprovalRequest) -> Result<ApprovalRequest, VoteError> + Send + Sync + 'a;

#[async_trait]
pub trait ApprovalStore: Send + Sync + 'static {
    /// Add a new request; `false` when one with its id exists (nothing is overwritten).
    async fn insert(&self, req: &ApprovalRequest) -> Result<bool, StoreError>;

    async fn get(&self, id: &str) -> Result<Option<ApprovalRequest>, StoreError>;

    /// Apply `change` to request `id` if it is pending, atomically. Errors: `NotFound`,
    /// `NotPending`, `Unavailable`, or the change's own.
    async fn update(&self, id: &str, change: &Change<'_>) -> Result<ApprovalRequest, VoteError>;

    /// Requests in `state` (all when `None`), newest first, at most the store's history.
    async fn list(&self, state: Option<State>) -> Result<Vec<ApprovalRequest>, StoreError>;

    /// Ids of the pending requests of a session.
    async fn pending_in_session(&self, session_id: &str) -> Result<Vec<String>, StoreError>;

    /// Deliver to `waiters` the ends of requests decided elsewhere (shared stores). A store
    /// only this process writes has nothing to deliver: `Approvals` does it itself.
    fn watch(&self, _waiters: Arc<Waiters>) {}
}

/// Requests in this process's memory; decided ones are kept up to `history`.
pub struct MemoryStore {
    inner: Mutex<Inner>,
    history: usize,
}

#[derive(Default)]
struct Inner {
    requests: HashMap<String, ApprovalRequest>,
    /// Decided ids, oldest first, for bounding the decided ones.
    decided: VecDeque<String>,
}

impl MemoryStore {
    pub fn new(history: usize) -> MemoryStore {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            history,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        crate::lock(&self.inner)
    }
}

#[async_trait]
impl ApprovalStore for MemoryStore {
    async fn insert(&self, req: &ApprovalRequest) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        if inner.requests.contains_key(&req.id) {
            return Ok(false);
        }
        inner.requests.insert(req.id.clone(), req.clone());
        Ok(true)
    }

    async fn get(&self, id: &str) -> Result<Option<ApprovalRequest>, StoreError> {
        Ok(self.lock().requests.get(id).cloned())
    }

    async fn update(&self, id: &str, change: &Change<'_>) -> Result<ApprovalRequest, VoteError> {
        let mut inner = self.lock();
        let Some(req) = inner.requests.get(id) else {
            return Err(VoteError::NotFound(id.to_string()));
        };
        if req.state != State::Pending {
            return Err(VoteError::NotPending(id.to_string(), req.state.as_str()));
        }
        let after = change(req)?;
        inner.requests.insert(id.to_string(), after.clone());
        if after.state != State::Pending {
            inner.decided.push_back(id.to_string());
            while inner.decided.len() > self.history {
                if let Some(old) = inner.decided.pop_front() {
                    inner.requests.remove(&old);
                }
            }
        }
        Ok(after)
    }

    async fn list(&self, state: Option<State>) -> Result<Vec<ApprovalRequest>, StoreError> {
        let inner = self.lock();
        let mut out: Vec<ApprovalRequest> = inner
            .requests
            .values()
            .filter(|r| state.is_none_or(|s| r.state == s))
            .cloned()
            .collect();
        out.sort_by(|a, b| b.created_us.cmp(&a.created_us).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    async fn pending_in_session(&self, session_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .lock()
            .requests
            .values()
            .filter(|r| r.state == State::Pending && r.session_id == session_id)
            .map(|r| r.id.clone())
            .collect())
    }
}
