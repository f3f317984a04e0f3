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
    /// The client canceled the operation while it waited for approval.
    #[error("canceled while waiting for approval")]
    Canceled,
    /// The credential the session was opened with is no longer valid (an expired token): the
    /// protocol crate must end the session, telling the client this message.
    #[error("{0}")]
    CredentialExpired(String),
}

/// A decided operation. `op` numbers operations within the session.
#[derive(Debug, Clone)]
pub struct Checked {
    pub op: u64,
    pub verdict: Verdict,
    /// Set when the operation waits for approval: `verdict` is then a deny (what happens if
    /// the request is not approved) and the protocol crate must tell the client, wait with
    /// [`SessionGuard::await_approval`] and forward the operation only if that allows it.
    pub hold: Option<Hold>,
}

impl Checked {
    pub fn is_allow(&self) -> bool {
        self.hold.is_none() && self.verdict.is_allow()
    }
}

/// An open approval request for one held operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The request id approvers act on (`gatehouse approvals approve ID`).
    pub id: String,
    /// Groups whose members may approve.
    pub approvers: Vec<String>,
    /// Why it needs approval (the policies or plugin that asked), user-facing.
    pub reason: String,
    /// Approvals needed from distinct approvers.
    pub min_approvals: u32,
    /// How long the request stays open before it is denied.
    pub timeout: std::time::Duration,
}

impl Hold {
    /// The text the client is shown while it waits (e.g. a PostgreSQL NoticeResponse).
    pub fn waiting_message(&self) -> String {
        let n = if self.min_approvals > 1 {
            format!("{} approvals", self.min_approvals)
        } else {
            "approval".to_string()
        };
        format!(
            "gatehouse: statement held for approval: request {} waits for {n} by {} ({}); it is denied if not approved within {}s",
            self.id,
            self.approvers.join(", "),
            self.reason,
            self.timeout.as_secs()
        )
    }
}

/// Why a held operation stopped waiting without a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawal {
    /// The client disconnected.
    Disconnected,
    /// The client canceled the operation (e.g. a PostgreSQL CancelRequest).
    Canceled,
}

impl Withdrawal {
    pub fn as_str(self) -> &'static str {
        match self {
            Withdrawal::Disconnected => "client disconnected",
            Withdrawal::Canceled => "canceled by the client",
        }
    }
}

/// Result rows as the client received them (after masking), up to the recording limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordedRows {
    /// Column names; empty when the protocol did not describe the rows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    /// Cell values as text (`None`: NULL); values sent in binary format, or that are not
    /// UTF-8, as `\x` and their bytes in hex.
    pub rows: Vec<Vec<Option<String>>>,
    /// Rows past the limit were not recorded (the outcome's row count has them all).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Per column, the table column its values come from, when the protocol crate resolved
    /// it (for the recorder's classified-column rule; not itself recorded).
    #[serde(skip)]
    pub sources: Vec<Option<String>>,
    /// Per column, whether that source is a view's column: its values may be computed from
    /// any column the view reads (for the same rule; not itself recorded).
    #[serde(skip)]
    pub from_view: Vec<bool>,
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
    /// Its result rows, up to [`SessionGuard::result_limit`] bytes.
    pub result: Option<RecordedRows>,
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

    /// [`check`](Self::check) for an operation with bound parameters (an extended-protocol
    /// Execute), rendered for people (`'text'`, `NULL`, `<binary 8 bytes>`): if it is held,
    /// approvers see them and the hold's record keeps them.
    async fn check_bound(&self, op: Operation, params: Vec<String>) -> Result<Checked, GuardError> {
        let _ = params;
        self.check(op).await
    }

    /// Wait until the approval request `hold` (opened by [`check`](Self::check) for operation
    /// `op`) is decided or times out, then decide `op` again with the approval in the context
    /// and durably record that decision. The result is final: `hold` is `None`. Dropping the
    /// future leaves the request open; call [`withdraw`](Self::withdraw) then.
    async fn await_approval(&self, op: u64, operation: Operation, hold: &Hold)
    -> Result<Checked, GuardError>;

    /// Close a waiting request because the client went away or canceled. Never blocks.
    fn withdraw(&self, op: u64, hold: &Hold, why: Withdrawal);

    /// Record how an operation ended. Never blocks.
    fn outcome(&self, op: u64, outcome: OpOutcome);

    /// Bytes of result values to record per operation (0: none). Protocol crates collect
    /// them after masking, as the client receives them, into [`OpOutcome::result`].
    fn result_limit(&self) -> usize {
        0
    }

    /// Whether this session's record redacts values by the names of the columns a statement
    /// reads (`[recorder.literals]`): protocol crates then fill
    /// [`SqlStatement::behind_views`](crate::SqlStatement::behind_views) before asking to decide
    /// a statement, so a view over a classified column counts as naming it.
    fn redacts_by_name(&self) -> bool {
        false
    }

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
