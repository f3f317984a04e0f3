//! The guard pipeline (DESIGN.md §3): Cedar decision → plugins → approval hold → durable
//! record. Protocol crates reach it only through `gatehouse_core::guard`.
//!
//! An operation needs approval when every policy that denied it carries `@approvers`, or when
//! Cedar allowed it and a plugin returned `hold`. [`SessionGuard::check`] then records the
//! decision with the request it opens (`hold`) and returns it to the protocol crate, which
//! tells the client and calls [`SessionGuard::await_approval`]. Once the request is approved
//! the operation is decided again, with `context.approved` and `context.approver` set (a
//! plugin's hold counts as satisfied when an approver was in one of its groups); a denial,
//! timeout or withdrawal denies it. That second decision is recorded, with every vote, before
//! `await_approval` returns: it is what lets the held operation run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use gatehouse_approval::access::Grants;
use gatehouse_approval::notify::{Notifier, Step};
use gatehouse_approval::{ApprovalRequest, Approvals, NewRequest, State};
use gatehouse_core::config::{ApprovalsConfig, LiteralMode, LiteralsConfig};
use gatehouse_core::guard::AuthFailure;
use gatehouse_core::time::now_micros;
use gatehouse_core::{
    BehindViews, Checked, Guard, GuardError, Hold, OpOutcome, Operation, SessionCtx, SessionGuard,
    SqlStatement, Verdict, Withdrawal,
};
use gatehouse_policy::{PolicyEngine, SessionPolicy};
use gatehouse_recorder::{
    ApprovalRecord, EventBody, HoldRecord, NewEvent, OpError, PluginRecord, Recorder, VoteRecord,
};
use tokio::sync::watch;

use crate::masking::{ColumnRules, SessionMasker};
use crate::plugins::{Plugins, SessionPlugins, StatementOutcome};

pub struct GatehouseGuard {
    policy: Arc<PolicyEngine>,
    recorder: Recorder,
    plugins: Option<Arc<Plugins>>,
    /// The `hash` masking strategy's keyed tokenizer.
    hash: Arc<gatehouse_mask::Masker>,
    /// Open and recent approval requests; `None` when nothing can approve (no admin API), so a
    /// hold is denied at once.
    approvals: Option<Arc<Approvals>>,
    approval_settings: ApprovalsConfig,
    /// Approvers' webhooks, when configured.
    notifier: Option<Arc<Notifier>>,
    /// What recorded statements keep of their constants.
    literals: Arc<Literals>,
    /// Just-in-time access grants; a session carries the one active when it opens.
    grants: Option<Arc<Grants>>,
    /// Bytes of result rows recorded per operation.
    result_limit: usize,
}

impl GatehouseGuard {
    /// Sessions opened from now on carry their principal's active grant for the target.
    /// Record up to `max_bytes` of each operation's result rows (`[recorder.results]`).
    pub fn with_results(mut self, max_bytes: usize) -> Self {
        self.result_limit = max_bytes;
        self
    }

    pub fn with_grants(mut self, grants: Option<Arc<Grants>>) -> Self {
        self.grants = grants;
        self
    }

    #[allow(clippy::too_many_arguments)] // one per component the guard ties together
    pub fn new(
        policy: Arc<PolicyEngine>,
        recorder: Recorder,
        plugins: Option<Arc<Plugins>>,
        hash: Arc<gatehouse_mask::Masker>,
        approvals: Option<Arc<Approvals>>,
        approval_settings: ApprovalsConfig,
        notifier: Option<Arc<Notifier>>,
        literals: &LiteralsConfig,
    ) -> Self {
        let literals = Arc::new(Literals {
            mode: literals.mode,
            columns: literals
                .classified_columns
                .iter()
                .map(|c| c.trim_matches('"').to_lowercase())
                .collect(),
            hash: hash.clone(),
        });
        GatehouseGuard {
            policy,
            recorder,
            plugins,
            hash,
            approvals,
            approval_settings,
            notifier,
            literals,
            grants: None,
            result_limit: 0,
        }
    }
}

/// `[recorder.literals]`: what the audit log keeps of a statement's constants and bound
/// parameters. Statements that cannot be scanned are redacted whole (fail closed).
struct Literals {
    mode: LiteralMode,
    /// Classified column names, lower case.
    columns: Vec<String>,
    hash: Arc<gatehouse_mask::Masker>,
}

impl Literals {
    /// Whether `s`'s constants are rewritten, and how.
    fn mode_for(&self, s: &SqlStatement) -> LiteralMode {
        self.mode_given(|| self.names_classified(s))
    }

    /// [`Literals::mode_for`] with the statement's scan for classified names given lazily
    /// (made at most once per statement by a caller that needs it twice).
    fn mode_given(&self, names_classified: impl FnOnce() -> bool) -> LiteralMode {
        match self.mode {
            LiteralMode::Hash if !self.hash.can_hash() => LiteralMode::Redact,
            LiteralMode::RedactClassified if names_classified() => LiteralMode::Redact,
            LiteralMode::RedactClassified => LiteralMode::Keep,
            m => m,
        }
    }

    /// Whether `s` names a classified column (or cannot be scanned: fail closed), itself or
    /// through a view it uses (or whose columns could not be looked up: fail closed), or may
    /// touch one unseen (FETCH from a cursor, EXECUTE of a prepared statement).
    fn names_classified(&self, s: &SqlStatement) -> bool {
        // (As masking treats them.)
        if s.runs_an_unseen_query() {
            return true;
        }
        let behind_views = match &s.behind_views {
            BehindViews::Nothing => false,
            BehindViews::Columns(c) => c.iter().any(|c| self.columns.contains(c)),
            BehindViews::Unknown => true,
        };
        behind_views || gatehouse_pg::literals::names_any(&s.text, &self.columns) != Some(false)
    }

    /// A keyed token for a constant: a string's value (so it matches the `hash` masking of
    /// the same value in results), anything else as written.
    fn token(&self, constant: &str) -> String {
        let value = constant
            .strip_prefix('\'')
            .and_then(|c| c.strip_suffix('\''))
            .map(|v| v.replace("''", "'"))
            .unwrap_or_else(|| constant.to_string());
        self.keyed(value.as_bytes())
    }

    /// `tok_…` of `value` under the masking `hash` key.
    fn keyed(&self, value: &[u8]) -> String {
        String::from_utf8_lossy(&self.hash.mask(gatehouse_mask::Strategy::Hash, value)).into_owned()
    }

    /// The statement as recorded, and the mode its parameters get.
    fn statement(&self, s: &SqlStatement) -> (SqlStatement, LiteralMode) {
        self.statement_in(s, self.mode_for(s))
    }

    /// [`Literals::statement`] in `mode` (from [`Literals::mode_for`] or `mode_given`).
    fn statement_in(&self, s: &SqlStatement, mode: LiteralMode) -> (SqlStatement, LiteralMode) {
        let mut out = s.clone();
        let rewritten = match mode {
            LiteralMode::Keep | LiteralMode::RedactClassified => return (out, LiteralMode::Keep),
            LiteralMode::Redact => gatehouse_pg::literals::rewrite_constants(&s.text, |_| "?".to_string()),
            LiteralMode::Hash => {
                gatehouse_pg::literals::rewrite_constants(&s.text, |c| format!("'{}'", self.token(c)))
            }
        };
        out.text = rewritten.unwrap_or_else(|| {
            format!(
                "[{} bytes redacted: the statement could not be scanned for constants]",
                s.text.len()
            )
        });
        (out, mode)
    }

    /// Result rows as recorded: values of classified columns (by result name or source
    /// column) get the literal mode's treatment (`keep` keeps them, `hash` tokenizes them,
    /// otherwise `?`); the others are kept as the client received them. When the statement
    /// names a classified column (`touches`), so do columns whose source table column is not
    /// known (`upper(ssn)`, `ssn || ''`) or is a view's: their values may be derived from it.
    fn result(&self, mut r: gatehouse_core::RecordedRows, touches: bool) -> gatehouse_core::RecordedRows {
        if self.mode == LiteralMode::Keep {
            return r;
        }
        let classified: Vec<usize> = (0..r.columns.len().max(r.sources.len()))
            .filter(|&i| {
                let named = |n: Option<&String>| n.is_some_and(|n| self.columns.contains(&n.to_lowercase()));
                let source = r.sources.get(i).and_then(Option::as_ref);
                // A view's column may be computed from any column the view reads.
                let computed = source.is_none() || r.from_view.get(i).copied().unwrap_or(false);
                named(r.columns.get(i)) || named(source) || (touches && computed)
            })
            .collect();
        // Rows of an undescribed result cannot be told apart by column: all are redacted.
        let undescribed = r.columns.is_empty() && !r.rows.is_empty();
        for row in &mut r.rows {
            for (i, cell) in row.iter_mut().enumerate() {
                if !(undescribed || classified.contains(&i)) {
                    continue;
                }
                if let Some(v) = cell {
                    *v = match self.mode {
                        LiteralMode::Hash if self.hash.can_hash() => self.keyed(v.as_bytes()),
                        _ => "?".to_string(),
                    };
                }
            }
        }
        r
    }

    /// Bound parameters as recorded.
    fn params(&self, mode: LiteralMode, params: &[String]) -> Vec<String> {
        match mode {
            LiteralMode::Keep | LiteralMode::RedactClassified => params.to_vec(),
            LiteralMode::Redact => params.iter().map(|_| "?".to_string()).collect(),
            LiteralMode::Hash => params.iter().map(|p| self.keyed(p.as_bytes())).collect(),
        }
    }

    /// What a decision records of `op`.
    fn recorded(&self, op: Option<&Operation>) -> Option<SqlStatement> {
        match op {
            Some(Operation::Query(s)) => Some(self.statement(s).0),
            _ => None,
        }
    }
}

/// What the pipeline said about an operation, before any hold is opened.
struct Evaluated {
    verdict: Verdict,
    generation: u64,
    errors: Vec<String>,
    plugins: Vec<PluginRecord>,
    /// Needs approval.
    needs: Option<Needs>,
    /// Approval was asked for, but the operation cannot be held: why (it is denied).
    unheld: Option<String>,
}

/// Who must approve an operation, and why.
struct Needs {
    /// Every group whose members may vote.
    approvers: Vec<String>,
    /// One set per policy that asked: each needs an approving member.
    required: Vec<Vec<String>>,
    /// User-facing: the policies or the plugin that asked.
    reason: String,
}

/// What a session keeps about one of its open requests.
struct Waiting {
    ended: watch::Receiver<Option<ApprovalRequest>>,
    /// When the request times out (its `expires_us`, on the monotonic clock).
    deadline: tokio::time::Instant,
}

/// An approval that completed: who cast the deciding vote, and the groups of every approver.
struct Approved<'a> {
    approver: &'a str,
    groups: Vec<&'a str>,
}

fn deny(reason: String, policy_ids: Vec<String>) -> Verdict {
    Verdict::Deny { reason, policy_ids }
}

fn approval_record(req: &ApprovalRequest) -> ApprovalRecord {
    ApprovalRecord {
        request: req.id.clone(),
        state: req.state.as_str().to_string(),
        votes: req
            .votes
            .iter()
            .map(|v| VoteRecord {
                approver: v.approver.clone(),
                approve: v.approve,
                comment: v.comment.clone(),
                time_us: v.time_us,
            })
            .collect(),
        end_reason: req.end_reason.clone(),
    }
}

/// Operations in flight whose classification [`Session`] remembers for their results.
const CLASSIFIED_OPS_MAX: usize = 1024;

struct Session {
    ctx: SessionCtx,
    principal: String,
    policy: Arc<PolicyEngine>,
    /// `None` when the session's entities could not be built: every decision denies.
    sp: Option<Arc<SessionPolicy>>,
    recorder: Recorder,
    ops: AtomicU64,
    started: Instant,
    closed: AtomicBool,
    /// Orders the session's background endings (withdrawals, then the close): with a shared
    /// store they take round trips, and the close must neither end a request a withdrawal is
    /// ending (a second record) nor record the session's end before it.
    endings: Arc<tokio::sync::Mutex<()>>,
    /// The target's plugin chain for this session, if it has one.
    plugins: Option<Arc<SessionPlugins>>,
    /// Column rules and content maskers for result rows, if any apply.
    masker: Option<Arc<SessionMasker>>,
    approvals: Option<Arc<Approvals>>,
    approval_settings: ApprovalsConfig,
    notifier: Option<Arc<Notifier>>,
    literals: Arc<Literals>,
    /// Receivers of this session's open requests, by operation number.
    waiting: std::sync::Mutex<std::collections::HashMap<u64, Waiting>>,
    result_limit: usize,
    /// Operations whose results are being recorded, and whether their statement names a
    /// classified column (see [`Literals::result`]); bounded, an operation missing from it
    /// counts as naming one.
    classified_ops: std::sync::Mutex<std::collections::VecDeque<(u64, bool)>>,
}

impl Session {
    fn event(&self, body: EventBody) -> NewEvent {
        NewEvent {
            time_us: now_micros(),
            session_id: self.ctx.session_id.clone(),
            principal: Some(self.principal.clone()),
            on_behalf_of: self.ctx.principal.on_behalf_of.clone(),
            actor_chain: self.ctx.principal.actor_chain.clone(),
            body,
        }
    }

    /// Cedar, then the plugins if Cedar allowed. `approved` is set when re-deciding after an
    /// approval.
    async fn evaluate(&self, op: &Operation, approved: Option<&Approved<'_>>) -> Evaluated {
        let mut ev = match &self.sp {
            Some(sp) => {
                let d = match approved {
                    Some(a) => self.policy.decide_approved(sp, op, a.approver),
                    None => self.policy.decide(sp, op, false),
                };
                let required = d.approval_groups;
                let needs = d.needs_approval.map(|approvers| {
                    let ids: Vec<String> = d
                        .verdict
                        .policy_ids()
                        .iter()
                        .map(|id| format!("`{id}`"))
                        .collect();
                    let noun = if ids.len() == 1 { "policy" } else { "policies" };
                    Needs {
                        approvers,
                        required,
                        reason: format!("{noun} {}", ids.join(", ")),
                    }
                });
                Evaluated {
                    verdict: d.verdict,
                    generation: d.generation,
                    errors: d.errors,
                    plugins: Vec::new(),
                    needs,
                    unheld: None,
                }
            }
            None => Evaluated {
                verdict: deny("the session could not be evaluated by policy".into(), vec![]),
                generation: self.policy.generation(),
                errors: vec!["session entities could not be built".into()],
                plugins: Vec::new(),
                needs: None,
                unheld: None,
            },
        };
        // Plugins see what Cedar allowed: a deny or fault denies, a hold asks for approval.
        if let (Verdict::Allow { .. }, Operation::Query(s), Some(p)) = (&ev.verdict, op, &self.plugins) {
            let (outcome, runs) = p.on_statement(s).await;
            ev.plugins = runs;
            match outcome {
                StatementOutcome::Allow => {}
                StatementOutcome::Deny(v) => ev.verdict = v,
                StatementOutcome::Hold { approvers, reason } => match approved {
                    // The approval satisfies a plugin's hold when an approver was in one of
                    // the plugin's groups.
                    Some(a) if a.groups.iter().any(|g| approvers.iter().any(|p| p == g)) => {}
                    Some(_) => {
                        ev.verdict = deny(
                            format!(
                                "{reason}: needs approval by {}, which this approval did not include",
                                approvers.join(", ")
                            ),
                            vec![],
                        )
                    }
                    None => {
                        ev.verdict = deny(
                            format!("{reason}: needs approval by {}", approvers.join(", ")),
                            vec![],
                        );
                        ev.needs = Some(Needs {
                            required: vec![approvers.clone()],
                            approvers,
                            reason,
                        });
                    }
                },
            }
        }
        ev
    }

    fn decision(
        &self,
        n: u64,
        op: &Operation,
        ev: Evaluated,
        hold: Option<HoldRecord>,
        approval: Option<ApprovalRecord>,
        statement: Option<SqlStatement>,
    ) -> EventBody {
        EventBody::Decision {
            op: n,
            action: op.action().to_string(),
            statement,
            verdict: ev.verdict,
            policy_generation: ev.generation,
            errors: ev.errors,
            plugins: ev.plugins,
            hold: hold.map(Box::new),
            approval: approval.map(Box::new),
            unheld: ev.unheld,
        }
    }

    /// Refuse to go on once the session's credential expired (its `expires_at`, grace
    /// included): recorded, and the protocol crate ends the session.
    async fn check_credential(&self) -> Result<(), GuardError> {
        // Static keys without a grant: nothing expires, not even a clock read per statement.
        if self.ctx.auth.expires_at.is_none() && self.ctx.grant.is_none() {
            return Ok(());
        }
        let now = now_micros() / 1_000_000;
        let at = |secs: i64| gatehouse_core::time::rfc3339_micros(secs.saturating_mul(1_000_000));
        let message = match (&self.ctx.auth.expires_at, &self.ctx.grant) {
            (Some(exp), _) if now >= *exp => format!(
                "gatehouse: the token this session was opened with expired at {}; sign in again and reconnect",
                at(*exp)
            ),
            (_, Some(g)) if now >= g.expires_at => format!(
                "gatehouse: access grant {} for target \"{}\" expired at {}; request access again and reconnect",
                g.id,
                self.ctx.target.name,
                at(g.expires_at)
            ),
            _ => return Ok(()),
        };
        let body = EventBody::Notice {
            level: "warn".to_string(),
            message: message.clone(),
        };
        // Best effort: the session ends either way, and its end is recorded with the reason.
        let _ = self.recorder.append(self.event(body)).await;
        Err(GuardError::CredentialExpired(message))
    }

    /// `params`: the operation's bound parameters, rendered (shown to approvers if held).
    async fn decide(&self, op: &Operation, params: Vec<String>) -> Result<Checked, GuardError> {
        self.check_credential().await?;
        let n = self.ops.fetch_add(1, Ordering::Relaxed) + 1;
        // The statement's scan for classified names, made once: the record's literal mode
        // and the results' redaction both use it.
        let redact_results = self.result_limit > 0 && self.literals.mode != LiteralMode::Keep;
        let names_classified = match op {
            Operation::Query(s) if redact_results || self.literals.mode == LiteralMode::RedactClassified => {
                self.literals.names_classified(s)
            }
            _ => false,
        };
        let mode = match op {
            Operation::Query(_) => self.literals.mode_given(|| names_classified),
            Operation::Connect => LiteralMode::Keep,
        };
        if redact_results {
            let mut q = self.classified_ops.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() >= CLASSIFIED_OPS_MAX {
                q.pop_front();
            }
            q.push_back((n, names_classified));
        }
        let mut ev = self.evaluate(op, None).await;
        let mut hold = None;
        let mut required = Vec::new();
        if let Some(Needs {
            approvers,
            required: sets,
            reason,
        }) = ev.needs.take()
        {
            let cannot = match (&self.approvals, op) {
                // A fast-path call or an unknown portal has no text an approver could judge.
                (Some(_), Operation::Query(s)) if s.text.trim().is_empty() => {
                    Some("an operation without statement text cannot be held for approval")
                }
                (Some(_), Operation::Query(_)) => None,
                (Some(_), Operation::Connect) => Some("connections cannot be held for approval"),
                (None, _) => Some("this gateway has no admin API to approve it"),
            };
            required = sets;
            match cannot {
                None => {
                    hold = Some(Hold {
                        id: Approvals::new_id(),
                        approvers,
                        reason,
                        min_approvals: self.approval_settings.min_approvals,
                        timeout: std::time::Duration::from_secs(self.approval_settings.timeout_secs),
                    })
                }
                Some(why) => {
                    let ids = ev.verdict.policy_ids().to_vec();
                    let reason = format!(
                        "{reason} requires approval by {}, and {why}",
                        approvers.join(", ")
                    );
                    ev.verdict = deny(reason, ids);
                    ev.unheld = Some(why.to_string());
                }
            }
        }
        let verdict = ev.verdict.clone();
        let hold_record = hold.as_ref().map(|h| HoldRecord {
            request: h.id.clone(),
            approvers: h.approvers.clone(),
            min_approvals: h.min_approvals,
            timeout_secs: h.timeout.as_secs(),
            reason: h.reason.clone(),
            parameters: match op {
                Operation::Query(_) => self.literals.params(mode, &params),
                Operation::Connect => params.clone(),
            },
        });
        let statement = match op {
            Operation::Query(s) => Some(self.literals.statement_in(s, mode).0),
            Operation::Connect => None,
        };
        let body = self.decision(n, op, ev, hold_record, None, statement);
        // No record, no access; and no request an approver could act on without its record.
        self.recorder
            .append(self.event(body))
            .await
            .map_err(|_| GuardError::RecorderUnavailable)?;
        if let (Some(h), Some(approvals)) = (&hold, &self.approvals) {
            let (operation, kind) = match op {
                Operation::Query(s) if params.is_empty() => (s.text.clone(), s.kind().as_str().to_string()),
                Operation::Query(s) => {
                    let bound: Vec<String> = params
                        .iter()
                        .enumerate()
                        .map(|(i, v)| format!("${} = {v}", i + 1))
                        .collect();
                    let text = format!("{}\n-- bound parameters: {}", s.text, bound.join(", "));
                    (text, s.kind().as_str().to_string())
                }
                Operation::Connect => (String::new(), "connect".to_string()),
            };
            let (req, rx) = approvals
                .open(
                    h.id.clone(),
                    NewRequest {
                        session_id: self.ctx.session_id.clone(),
                        op: n,
                        requester: self.ctx.principal.clone(),
                        target: self.ctx.target.name.clone(),
                        action: op.action().to_string(),
                        operation,
                        kind,
                        approvers: h.approvers.clone(),
                        required_groups: required,
                        reason: h.reason.clone(),
                        policy_ids: verdict.policy_ids().to_vec(),
                        min_approvals: h.min_approvals,
                        timeout_secs: h.timeout.as_secs(),
                    },
                )
                .await;
            let rx_open = rx.borrow().is_none();
            let deadline = tokio::time::Instant::now() + h.timeout;
            self.waiting_map().insert(n, Waiting { ended: rx, deadline });
            // A request the store refused exists for nobody to approve: no announcement.
            if rx_open {
                self.notify(Step::Requested, &req);
            }
        }
        Ok(Checked { op: n, verdict, hold })
    }

    fn notify(&self, step: Step, req: &ApprovalRequest) {
        if let Some(n) = &self.notifier {
            n.notify(step, req);
        }
    }

    fn waiting_map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Waiting>> {
        match self.waiting.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Wait for request `hold` to end; time it out at its deadline. The request as it ended.
    async fn wait(&self, approvals: &Approvals, n: u64, hold: &Hold) -> Option<ApprovalRequest> {
        let Waiting { mut ended, deadline } = self.waiting_map().remove(&n)?;
        let decided = tokio::time::timeout_at(deadline, ended.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|req| req.clone()));
        if decided.is_some() {
            return decided;
        }
        let why = format!("no decision within {}s", hold.timeout.as_secs());
        // `None`: a vote ended it while the timer fired; the channel has it.
        match approvals.finish(&hold.id, State::TimedOut, &why).await {
            Some(r) => Some(r),
            // Ended elsewhere (a vote through another gateway) just before: its end may not
            // have reached this gateway yet; the store has it.
            None => {
                let seen = ended.borrow().clone();
                match seen {
                    Some(r) => Some(r),
                    None => approvals.get(&hold.id).await.ok().flatten(),
                }
            }
        }
    }

    /// The decision ending a request without letting its operation run. The statement is in
    /// the hold's record (same session and op); it is repeated when the caller has it.
    fn ended_unrun(&self, n: u64, op: Option<&Operation>, req: &ApprovalRequest, reason: String) -> NewEvent {
        self.ender().unrun(n, self.literals.recorded(op), req, reason)
    }

    /// What recording a request's end needs, owned (it may happen on another task).
    fn ender(&self) -> Ender {
        Ender {
            recorder: self.recorder.clone(),
            session_id: self.ctx.session_id.clone(),
            principal: self.principal.clone(),
            on_behalf_of: self.ctx.principal.on_behalf_of.clone(),
            actor_chain: self.ctx.principal.actor_chain.clone(),
            policy: self.policy.clone(),
            notifier: self.notifier.clone(),
            endings: self.endings.clone(),
        }
    }
}

/// Records (and tells the webhooks) that approval requests of a session ended without their
/// operation running.
struct Ender {
    recorder: Recorder,
    session_id: String,
    principal: String,
    on_behalf_of: Option<String>,
    actor_chain: Vec<String>,
    policy: Arc<PolicyEngine>,
    notifier: Option<Arc<Notifier>>,
    endings: Arc<tokio::sync::Mutex<()>>,
}

impl Ender {
    fn unrun(
        &self,
        n: u64,
        statement: Option<SqlStatement>,
        req: &ApprovalRequest,
        reason: String,
    ) -> NewEvent {
        NewEvent {
            time_us: now_micros(),
            session_id: self.session_id.clone(),
            principal: Some(self.principal.clone()),
            on_behalf_of: self.on_behalf_of.clone(),
            actor_chain: self.actor_chain.clone(),
            body: EventBody::Decision {
                op: n,
                action: req.action.clone(),
                statement,
                verdict: deny(reason, req.policy_ids.clone()),
                policy_generation: self.policy.generation(),
                errors: Vec::new(),
                plugins: Vec::new(),
                hold: None,
                approval: Some(Box::new(approval_record(req))),
                unheld: None,
            },
        }
    }

    fn notify(&self, step: Step, req: &ApprovalRequest) {
        if let Some(n) = &self.notifier {
            n.notify(step, req);
        }
    }
}

/// Run `fut` now when it completes without waiting (the in-memory store: the records keep
/// their order), else as a task (a shared store's round trips must not block the caller).
fn run_soon(fut: impl std::future::Future<Output = ()> + Send + 'static) {
    let mut fut = Box::pin(fut);
    let handle = match tokio::runtime::Handle::try_current() {
        Ok(h) => h,
        Err(_) => {
            // Not on a runtime (a session dropped outside one): finish on a small one.
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                rt.block_on(fut);
            }
            return;
        }
    };
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if fut.as_mut().poll(&mut cx).is_pending() {
        handle.spawn(fut);
    }
}

#[async_trait]
impl Guard for GatehouseGuard {
    async fn open(&self, mut ctx: SessionCtx) -> Result<(Arc<dyn SessionGuard>, Verdict), GuardError> {
        if let Some(grants) = &self.grants {
            let active = grants
                .active(
                    &ctx.principal.display(),
                    ctx.principal.on_behalf_of.as_deref(),
                    &ctx.target.name,
                    now_micros(),
                )
                .await;
            ctx.grant = match active {
                Ok(g) => g.map(|g| g.as_ref()),
                // Without the store nothing says a grant exists: the session opens without
                // one (a policy requiring one denies it).
                Err(e) => {
                    tracing::warn!(session = %ctx.session_id, "access grants not readable: {e}");
                    None
                }
            };
        }
        let sp = match self.policy.session(&ctx) {
            Ok(sp) => Some(Arc::new(sp)),
            Err(e) => {
                tracing::warn!(session = %ctx.session_id, "cannot build policy entities: {e}");
                None
            }
        };
        let ctx_for_plugins = ctx.clone();
        let plugins = self.plugins.as_ref().and_then(|p| p.session(&ctx_for_plugins));
        // Column rules apply to PostgreSQL results when the policy set has any (checked at
        // session start: a reload that adds the first `read_column` policy applies to new
        // sessions).
        let rules = (ctx.target.kind == "postgres" && self.policy.has_column_rules())
            .then(|| ColumnRules::new(self.policy.clone(), sp.clone(), self.hash.clone()));
        let masker = SessionMasker::new(rules, plugins.clone()).map(Arc::new);
        let session = Arc::new(Session {
            principal: ctx.principal.display(),
            ctx,
            policy: self.policy.clone(),
            sp,
            recorder: self.recorder.clone(),
            ops: AtomicU64::new(0),
            started: Instant::now(),
            closed: AtomicBool::new(false),
            endings: Arc::new(tokio::sync::Mutex::new(())),
            plugins,
            masker,
            approvals: self.approvals.clone(),
            approval_settings: self.approval_settings.clone(),
            notifier: self.notifier.clone(),
            literals: self.literals.clone(),
            waiting: std::sync::Mutex::new(std::collections::HashMap::new()),
            result_limit: self.result_limit,
            classified_ops: std::sync::Mutex::new(std::collections::VecDeque::new()),
        });
        let start = EventBody::SessionStart {
            protocol: session.ctx.target.kind.clone(),
            source: session.ctx.source_ip.to_string(),
            target: session.ctx.target.name.clone(),
            client_app: session.ctx.client_app.clone(),
            auth_method: session.ctx.auth.method.clone(),
            principal: session.ctx.principal.clone(),
            target_tags: session.ctx.target.tags.clone(),
            auth: Some(session.ctx.auth.clone()),
            grant: session.ctx.grant.clone(),
        };
        self.recorder
            .append(session.event(start))
            .await
            .map_err(|_| GuardError::RecorderUnavailable)?;
        let checked = session.decide(&Operation::Connect, Vec::new()).await?;
        Ok((session, checked.verdict))
    }

    fn connection_failed(&self, f: AuthFailure) {
        self.recorder.append_nowait(NewEvent {
            time_us: now_micros(),
            // Each failed attempt is its own (never opened) session in the record.
            session_id: format!("failed-{}", crate::pgcluster::hex_token()),
            principal: None,
            on_behalf_of: None,
            actor_chain: Vec::new(),
            body: EventBody::AuthFailure {
                protocol: f.protocol.to_string(),
                source: f.source.to_string(),
                user: f.user,
                target: f.target,
                reason: f.reason,
            },
        });
    }
}

#[async_trait]
impl SessionGuard for Session {
    async fn check(&self, op: Operation) -> Result<Checked, GuardError> {
        self.decide(&op, Vec::new()).await
    }

    async fn check_bound(&self, op: Operation, params: Vec<String>) -> Result<Checked, GuardError> {
        self.decide(&op, params).await
    }

    async fn await_approval(&self, n: u64, op: Operation, hold: &Hold) -> Result<Checked, GuardError> {
        let Some(approvals) = &self.approvals else {
            return Err(GuardError::Policy);
        };
        let waited = self.wait(approvals, n, hold).await;
        if let Err(e) = self.check_credential().await {
            // Approved or not, nothing runs on an expired credential; the request ends here.
            if let Some(req) = &waited {
                self.notify(Step::Ended, req);
                let why = format!(
                    "approval request {} ended: the session's token or access grant expired",
                    req.id
                );
                self.recorder
                    .append_nowait(self.ended_unrun(n, Some(&op), req, why));
            }
            return Err(e);
        }
        let Some(req) = waited else {
            // Only when `check` never opened it (the recorder refused) or it was awaited twice:
            // fail closed.
            let verdict = deny(format!("approval request {} is not open", hold.id), vec![]);
            return Ok(Checked {
                op: n,
                verdict,
                hold: None,
            });
        };
        self.notify(Step::Ended, &req);
        let event = match req.state {
            State::Approved => {
                let approver = req
                    .votes
                    .iter()
                    .rev()
                    .find(|v| v.approve)
                    .map(|v| v.approver.as_str());
                let approved = Approved {
                    approver: approver.unwrap_or(""),
                    groups: req
                        .votes
                        .iter()
                        .filter(|v| v.approve)
                        .flat_map(|v| v.groups.iter().map(String::as_str))
                        .collect(),
                };
                let ev = self.evaluate(&op, Some(&approved)).await;
                let statement = self.literals.recorded(Some(&op));
                self.event(self.decision(n, &op, ev, None, Some(approval_record(&req)), statement))
            }
            State::Denied => {
                let vote = req.votes.iter().find(|v| !v.approve);
                let by = vote.map(|v| v.approver.as_str()).unwrap_or("an approver");
                let comment = vote
                    .filter(|v| !v.comment.is_empty())
                    .map(|v| format!(": {}", v.comment))
                    .unwrap_or_default();
                self.ended_unrun(
                    n,
                    Some(&op),
                    &req,
                    format!("approval request {} was denied by {by}{comment}", req.id),
                )
            }
            State::TimedOut => self.ended_unrun(
                n,
                Some(&op),
                &req,
                format!(
                    "approval request {} timed out: no decision within {}s",
                    req.id,
                    hold.timeout.as_secs()
                ),
            ),
            State::Withdrawn | State::Pending => self.ended_unrun(
                n,
                Some(&op),
                &req,
                match &req.end_reason {
                    Some(why) => format!("approval request {} was withdrawn: {why}", req.id),
                    None => format!("approval request {} was withdrawn", req.id),
                },
            ),
        };
        let verdict = match &event.body {
            EventBody::Decision { verdict, .. } => verdict.clone(),
            _ => deny(
                format!("approval request {} could not be decided", req.id),
                vec![],
            ),
        };
        // No record, no access: the approved operation runs only once this is durable.
        self.recorder
            .append(event)
            .await
            .map_err(|_| GuardError::RecorderUnavailable)?;
        Ok(Checked {
            op: n,
            verdict,
            hold: None,
        })
    }

    fn withdraw(&self, n: u64, hold: &Hold, why: Withdrawal) {
        self.waiting_map().remove(&n);
        let Some(approvals) = self.approvals.clone() else {
            return;
        };
        let ender = self.ender();
        let id = hold.id.clone();
        run_soon(async move {
            // (tokio's mutex is fair: endings run in the order they were asked for.)
            let _order = ender.endings.clone().lock_owned().await;
            let ended_here = approvals.finish(&id, State::Withdrawn, why.as_str()).await;
            if let Some(req) = &ended_here {
                ender.notify(Step::Ended, req);
            }
            let ended = match ended_here {
                Some(r) => Some(r),
                None => approvals.get(&id).await.ok().flatten(),
            };
            // Ended by a vote just before: still record that the operation did not run.
            if let Some(req) = ended {
                let reason = format!("approval request {} ended: {}", req.id, why.as_str());
                ender.recorder.append_nowait(ender.unrun(n, None, &req, reason));
            }
        });
    }

    fn outcome(&self, op: u64, o: OpOutcome) {
        // (Only remembered while results are recorded with redaction; see `decide`.)
        let touches = self.result_limit > 0 && self.literals.mode != LiteralMode::Keep && {
            let mut q = self.classified_ops.lock().unwrap_or_else(|p| p.into_inner());
            match q.iter().position(|(n, _)| *n == op) {
                Some(i) => q.remove(i).is_none_or(|(_, t)| t),
                None => true,
            }
        };
        let body = EventBody::OpResult {
            op,
            tag: o.tag,
            rows: o.rows,
            duration_us: o.duration_us,
            error: o.error.map(|(code, message)| OpError { code, message }),
            skipped: o.skipped,
            result: o.result.map(|r| self.literals.result(r, touches)),
        };
        self.recorder.append_nowait(self.event(body));
    }

    fn result_limit(&self) -> usize {
        self.result_limit
    }

    fn masked(
        &self,
        op: u64,
        findings: Vec<gatehouse_core::Finding>,
        faults: Vec<gatehouse_core::MaskFault>,
    ) {
        self.recorder
            .append_nowait(self.event(EventBody::Masking { op, findings, faults }));
    }

    fn notice(&self, level: &'static str, message: String) {
        let body = EventBody::Notice {
            level: level.to_string(),
            message,
        };
        self.recorder.append_nowait(self.event(body));
    }

    fn close(&self, reason: &str) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let end = self.event(EventBody::SessionEnd {
            reason: reason.to_string(),
            ops: self.ops.load(Ordering::Relaxed),
            duration_us: self.started.elapsed().as_micros() as u64,
        });
        let Some(approvals) = self.approvals.clone() else {
            self.recorder.append_nowait(end);
            return;
        };
        let ender = self.ender();
        run_soon(async move {
            // After every withdrawal asked for before (they record their own endings).
            let _order = ender.endings.clone().lock_owned().await;
            // Requests the protocol crate never withdrew (its task was aborted) end with the
            // session, recorded before its end.
            for req in approvals.finish_session(&ender.session_id, "session ended").await {
                ender.notify(Step::Ended, &req);
                let why = format!("approval request {} ended: session ended", req.id);
                ender.recorder.append_nowait(ender.unrun(req.op, None, &req, why));
            }
            ender.recorder.append_nowait(end);
        });
    }

    fn redacts_by_name(&self) -> bool {
        match self.literals.mode {
            LiteralMode::RedactClassified => true,
            LiteralMode::Keep => false,
            LiteralMode::Redact | LiteralMode::Hash => self.result_limit > 0,
        }
    }

    fn row_masker(&self) -> Option<Arc<dyn gatehouse_core::RowMasker>> {
        let m: Arc<dyn gatehouse_core::RowMasker> = self.masker.clone()?;
        Some(m)
    }

    fn ctx(&self) -> &SessionCtx {
        &self.ctx
    }
}
