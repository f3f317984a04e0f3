//! The contract between protocol crates and the guard pipeline (DESIGN.md §3).
//!
//! A protocol crate turns wire traffic into [`Operation`]s and asks a [`SessionGuard`] for a
//! verdict; it never decides itself. The implementation (in the `gatehouse` binary) runs the
//! Cedar decision, plugins and approval holds, and makes the decision record durable before
//! [`SessionGuard::check`] returns: no record, no access.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;

use crate::op::{Operation, Verdict};
use crate::principal::SessionCtx;

/// Why the guard could not produce a verdict. Every variant means "refuse the operation".
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// The decision could not be recorded durably; the operation must not run.
    #[error("the audit log is unavailable")]
    RecorderUnavailable,
    /// The policy engine could not evaluate the request.
    #[error("policy evaluation failed")]
    Policy,
}

/// A decided operation. `op` numbers operations within the session.
#[derive(Debug, Clone)]
pub struct Checked {
    pub op: u64,
    pub verdict: Verdict,
}

/// How an operation ended, as seen by the protocol crate.
#[derive(Debug, Clone, Default)]
pub struct OpOutcome {
    /// Protocol completion tag, e.g. `SELECT 3`.
    pub tag: Option<String>,
    pub rows: u64,
    pub duration_us: u64,
    /// Error (code, message) as the upstream reported it.
    pub error: Option<(String, String)>,
    /// The operation was allowed but never ran (an earlier error in the same batch).
    pub skipped: bool,
}

/// Facts about a connection attempt that failed before a session existed.
#[derive(Debug, Clone)]
pub struct AuthFailure {
    pub protocol: &'static str,
    pub source: SocketAddr,
    pub user: String,
    pub target: String,
    pub reason: String,
}

/// Gateway-wide guard: opens sessions.
#[async_trait]
pub trait Guard: Send + Sync {
    /// Record the session start and decide `connect`. The session is open (and must be closed)
    /// whatever the verdict.
    async fn open(&self, ctx: SessionCtx) -> Result<(Arc<dyn SessionGuard>, Verdict), GuardError>;

    /// Record a failed connection attempt (bad credentials, TLS failure, malformed startup).
    fn connection_failed(&self, failure: AuthFailure);
}

/// Per-session guard. Cheap to share between a session's tasks.
#[async_trait]
pub trait SessionGuard: Send + Sync {
    /// Decide `op` and durably record the decision. `Err` means the operation must be refused.
    async fn check(&self, op: Operation) -> Result<Checked, GuardError>;

    /// Record how an operation ended. Never blocks.
    fn outcome(&self, op: u64, outcome: OpOutcome);

    /// The masking stage for this session's result rows; `None` when nothing masks them.
    fn row_masker(&self) -> Option<std::sync::Arc<dyn crate::rows::RowMasker>> {
        None
    }

    /// Record what masking did to an operation's results (findings, faults). Never blocks.
    fn masked(&self, _op: u64, _findings: Vec<crate::rows::Finding>, _faults: Vec<crate::rows::MaskFault>) {}

    /// Record a gateway-side event in the session (protocol error, upstream failure). Never blocks.
    fn notice(&self, level: &'static str, message: String);

    /// Record the session end. Never blocks.
    fn close(&self, reason: &str);

    fn ctx(&self) -> &SessionCtx;
}
