//! The guard pipeline (DESIGN.md §3): Cedar decision → (plugins, approval holds: later) →
//! durable record. Protocol crates reach it only through `gatehouse_core::guard`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use gatehouse_core::guard::AuthFailure;
use gatehouse_core::time::now_micros;
use gatehouse_core::{Checked, Guard, GuardError, OpOutcome, Operation, SessionCtx, SessionGuard, Verdict};
use gatehouse_policy::{PolicyEngine, SessionPolicy};
use gatehouse_recorder::{EventBody, NewEvent, OpError, Recorder};

use crate::masking::{ColumnRules, SessionMasker};
use crate::plugins::{Plugins, SessionPlugins};

pub struct GatehouseGuard {
    policy: Arc<PolicyEngine>,
    recorder: Recorder,
    plugins: Option<Arc<Plugins>>,
    /// The `hash` masking strategy's keyed tokenizer.
    hash: Arc<gatehouse_mask::Masker>,
}

impl GatehouseGuard {
    pub fn new(
        policy: Arc<PolicyEngine>,
        recorder: Recorder,
        plugins: Option<Arc<Plugins>>,
        hash: Arc<gatehouse_mask::Masker>,
    ) -> Self {
        GatehouseGuard {
            policy,
            recorder,
            plugins,
            hash,
        }
    }
}

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
    /// The target's plugin chain for this session, if it has one.
    plugins: Option<Arc<SessionPlugins>>,
    /// Column rules and content maskers for result rows, if any apply.
    masker: Option<Arc<SessionMasker>>,
}

impl Session {
    fn event(&self, body: EventBody) -> NewEvent {
        NewEvent {
            time_us: now_micros(),
            session_id: self.ctx.session_id.clone(),
            principal: Some(self.principal.clone()),
            body,
        }
    }

    async fn decide(&self, op: &Operation) -> Result<Checked, GuardError> {
        let n = self.ops.fetch_add(1, Ordering::Relaxed) + 1;
        let (verdict, generation, errors) = match &self.sp {
            Some(sp) => {
                let d = self.policy.decide(sp, op, false);
                (d.verdict, d.generation, d.errors)
            }
            None => (
                Verdict::Deny {
                    reason: "the session could not be evaluated by policy".into(),
                    policy_ids: vec![],
                },
                self.policy.generation(),
                vec!["session entities could not be built".into()],
            ),
        };
        // Plugins see what Cedar allowed; their deny, hold or fault turns it into a deny.
        let mut plugin_runs = Vec::new();
        let verdict = match (&verdict, op, &self.plugins) {
            (Verdict::Allow { .. }, Operation::Query(s), Some(p)) => {
                let (deny, runs) = p.on_statement(s).await;
                plugin_runs = runs;
                deny.unwrap_or(verdict)
            }
            _ => verdict,
        };
        let statement = match op {
            Operation::Query(s) => Some((**s).clone()),
            Operation::Connect => None,
        };
        let body = EventBody::Decision {
            op: n,
            action: op.action().to_string(),
            statement,
            verdict: verdict.clone(),
            policy_generation: generation,
            errors,
            plugins: plugin_runs,
        };
        // No record, no access.
        self.recorder
            .append(self.event(body))
            .await
            .map_err(|_| GuardError::RecorderUnavailable)?;
        Ok(Checked { op: n, verdict })
    }
}

#[async_trait]
impl Guard for GatehouseGuard {
    async fn open(&self, ctx: SessionCtx) -> Result<(Arc<dyn SessionGuard>, Verdict), GuardError> {
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
            plugins,
            masker,
        });
        let start = EventBody::SessionStart {
            protocol: session.ctx.target.kind.clone(),
            source: session.ctx.source_ip.to_string(),
            target: session.ctx.target.name.clone(),
            client_app: session.ctx.client_app.clone(),
            auth_method: session.ctx.auth.method.clone(),
            principal: session.ctx.principal.clone(),
        };
        self.recorder
            .append(session.event(start))
            .await
            .map_err(|_| GuardError::RecorderUnavailable)?;
        let checked = session.decide(&Operation::Connect).await?;
        Ok((session, checked.verdict))
    }

    fn connection_failed(&self, f: AuthFailure) {
        self.recorder.append_nowait(NewEvent {
            time_us: now_micros(),
            // Each failed attempt is its own (never opened) session in the record.
            session_id: format!("failed-{}", crate::pgcluster::hex_token()),
            principal: None,
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
        self.decide(&op).await
    }

    fn outcome(&self, op: u64, o: OpOutcome) {
        let body = EventBody::OpResult {
            op,
            tag: o.tag,
            rows: o.rows,
            duration_us: o.duration_us,
            error: o.error.map(|(code, message)| OpError { code, message }),
            skipped: o.skipped,
        };
        self.recorder.append_nowait(self.event(body));
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
        let body = EventBody::SessionEnd {
            reason: reason.to_string(),
            ops: self.ops.load(Ordering::Relaxed),
            duration_us: self.started.elapsed().as_micros() as u64,
        };
        self.recorder.append_nowait(self.event(body));
    }

    fn row_masker(&self) -> Option<Arc<dyn gatehouse_core::RowMasker>> {
        let m: Arc<dyn gatehouse_core::RowMasker> = self.masker.clone()?;
        Some(m)
    }

    fn ctx(&self) -> &SessionCtx {
        &self.ctx
    }
}
