//! Ordered plugin chains per target, and the per-session state that runs them.
//!
//! A [`PluginSession`] owns one instance per plugin of its chain, created on the session's
//! first call of a hook the plugin implements and reused for the session's later calls. An
//! instance is replaced by a fresh one after a fault, and when the plugin was reloaded (the
//! session switches to the new version at its next call).
//!
//! Guest code runs on tokio's blocking pool (`spawn_blocking`), one hop per hook call for
//! the whole chain, never on the async I/O threads; every call has its epoch deadline.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::Store;

use crate::batch::EditError;
use crate::config::FailMode;
use crate::fault::{BatchError, Fault, FaultKind, PluginId};
use crate::plugin::{Entry, Invoked, Live};
use crate::store::StoreState;
use crate::wit::{
    Bindings, Command, Finding, HoldRequest, Hook, HttpMessage, HttpResult, RowBatch, RowsResult,
    SessionInfo, Statement, Verdict,
};

/// Longest deny/hold reason (bytes).
const MAX_REASON: usize = 4096;
/// Most approver groups in a hold, and the longest group name.
const MAX_APPROVERS: usize = 32;
const MAX_LABEL: usize = 256;
/// Most findings in one return.
const MAX_FINDINGS: usize = 4096;

/// The combined verdict of a chain for a statement, command or HTTP message. Match it
/// exhaustively: `FailClosed` must be treated as a deny.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainVerdict {
    /// Every plugin allowed it (or faulted with `fail = "open"`, see the runs).
    Allow,
    /// The first plugin that denied, and its reason (for the client and the record).
    Deny { plugin: PluginId, reason: String },
    /// The first plugin that asked for approval.
    Hold {
        plugin: PluginId,
        approvers: Vec<String>,
        reason: String,
    },
    /// A plugin with `fail = "closed"` faulted (or is quarantined): deny the operation.
    FailClosed(Fault),
}

/// What happened in one plugin of a chain, for the audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRun {
    pub plugin: PluginId,
    pub hook: Hook,
    pub result: RunResult,
    /// Wall time of the plugin's part (instantiation included when it happened).
    pub elapsed: Duration,
}

/// The result of one plugin's hook call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunResult {
    /// A statement/command/HTTP verdict.
    Verdict(Verdict),
    /// `on-rows`: how many cells it changed and how many findings it reported.
    Rows { edits: u32, findings: u32 },
    /// An HTTP hook: its verdict and whether it replaced the body.
    Http { verdict: Verdict, body_replaced: bool },
    /// It faulted; the fault says which fail mode applied.
    Fault(Fault),
}

/// The outcome of [`PluginSession::on_statement`] / [`PluginSession::on_command`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictOutcome {
    pub verdict: ChainVerdict,
    /// The plugins that ran (or were skipped by quarantine), in chain order.
    pub runs: Vec<PluginRun>,
}

/// A finding attributed to the plugin that reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginFinding {
    pub plugin: PluginId,
    pub entity: String,
    pub field: String,
    pub count: u32,
}

/// The outcome of [`PluginSession::on_rows`]. Match it exhaustively: `MaskAll` means no
/// value of the batch may reach the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowsOutcome {
    /// Deliver `batch`: the input with every plugin's edits applied, in chain order.
    Pass {
        batch: RowBatch,
        findings: Vec<PluginFinding>,
        runs: Vec<PluginRun>,
    },
    /// A `fail = "closed"` plugin faulted: mask every value of the batch (e.g. with
    /// [`RowBatch::masked_all`]). `batch` is what the faulting plugin was given (it still
    /// holds unmasked values); `findings` are those of the plugins before it.
    MaskAll {
        fault: Fault,
        batch: RowBatch,
        findings: Vec<PluginFinding>,
        runs: Vec<PluginRun>,
    },
}

impl RowsOutcome {
    /// The plugin runs, whichever the variant.
    pub fn runs(&self) -> &[PluginRun] {
        match self {
            RowsOutcome::Pass { runs, .. } | RowsOutcome::MaskAll { runs, .. } => runs,
        }
    }

    /// The findings, whichever the variant.
    pub fn findings(&self) -> &[PluginFinding] {
        match self {
            RowsOutcome::Pass { findings, .. } | RowsOutcome::MaskAll { findings, .. } => findings,
        }
    }
}

/// The outcome of [`PluginSession::on_http_request`] / [`PluginSession::on_http_response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpOutcome {
    pub verdict: ChainVerdict,
    /// The message with every replacement body applied (meaningless after a deny).
    pub message: HttpMessage,
    pub findings: Vec<PluginFinding>,
    pub runs: Vec<PluginRun>,
}

/// An ordered list of plugins for a target. Cheap to clone; make one per target with
/// [`crate::PluginSet::chain`] and a [`PluginSession`] per client session.
#[derive(Clone)]
pub struct Chain {
    pub(crate) entries: Arc<[Arc<Entry>]>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| &*e.name))
            .finish()
    }
}

impl Chain {
    /// The plugin names, in order.
    pub fn names(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.name.to_string()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether any plugin of the chain (in its live version) implements `hook`: when not,
    /// calling it is free, but callers may skip building its arguments.
    pub fn wants(&self, hook: Hook) -> bool {
        self.entries.iter().any(|e| e.current().implements(hook))
    }

    /// State for one client session. Instances are created lazily, on the first call of a
    /// hook each plugin implements.
    pub fn session(&self, info: SessionInfo) -> PluginSession {
        PluginSession {
            chain: self.clone(),
            info: Arc::new(info),
            slots: Some(empty_slots(self.entries.len())),
        }
    }

    fn max_output(&self) -> u64 {
        self.entries
            .first()
            .map_or(u64::MAX, |e| e.host.config.max_output_bytes)
    }
}

fn empty_slots(n: usize) -> Vec<Option<Live>> {
    std::iter::repeat_with(|| None).take(n).collect()
}

/// One client session's plugin instances. Not `Clone`; `&mut self` per call, so a session's
/// calls are sequential. If a call's future is dropped mid-way, the instances it held are
/// dropped too and the next call starts fresh ones.
pub struct PluginSession {
    chain: Chain,
    info: Arc<SessionInfo>,
    /// `None` only while a call holds the instances.
    slots: Option<Vec<Option<Live>>>,
}

impl std::fmt::Debug for PluginSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginSession")
            .field("chain", &self.chain)
            .field("session_id", &self.info.session_id)
            .finish_non_exhaustive()
    }
}

type Job<R> = Box<dyn FnOnce(&Chain, &SessionInfo, &mut [Option<Live>]) -> R + Send + 'static>;

impl PluginSession {
    /// The chain this session runs.
    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// The session description plugins are given.
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// Run `on-statement` of each plugin in order; the first deny or hold wins.
    pub async fn on_statement(&mut self, stmt: Statement) -> VerdictOutcome {
        if !self.chain.wants(Hook::OnStatement) {
            return allow();
        }
        let job: Job<VerdictOutcome> =
            Box::new(move |chain, info, slots| statement_chain(chain, info, slots, &stmt));
        self.run_async(Hook::OnStatement, job, verdict_lost).await
    }

    /// Blocking [`PluginSession::on_statement`], for threads that are not async workers.
    pub fn on_statement_blocking(&mut self, stmt: &Statement) -> VerdictOutcome {
        if !self.chain.wants(Hook::OnStatement) {
            return allow();
        }
        self.run_here(|chain, info, slots| statement_chain(chain, info, slots, stmt))
    }

    /// Run `on-command` of each plugin in order; the first deny or hold wins.
    pub async fn on_command(&mut self, cmd: Command) -> VerdictOutcome {
        if !self.chain.wants(Hook::OnCommand) {
            return allow();
        }
        let job: Job<VerdictOutcome> =
            Box::new(move |chain, info, slots| command_chain(chain, info, slots, &cmd));
        self.run_async(Hook::OnCommand, job, verdict_lost).await
    }

    /// Blocking [`PluginSession::on_command`].
    pub fn on_command_blocking(&mut self, cmd: &Command) -> VerdictOutcome {
        if !self.chain.wants(Hook::OnCommand) {
            return allow();
        }
        self.run_here(|chain, info, slots| command_chain(chain, info, slots, cmd))
    }

    /// Run `on-rows` of each plugin in order, applying each one's edits before the next.
    /// `Err` only for a batch whose shape is inconsistent (a caller bug; nothing ran).
    pub async fn on_rows(&mut self, batch: RowBatch) -> Result<RowsOutcome, BatchError> {
        batch.validate()?;
        if !self.chain.wants(Hook::OnRows) {
            return Ok(pass(batch));
        }
        let job: Job<RowsOutcome> = Box::new(move |chain, info, slots| rows_chain(chain, info, slots, batch));
        Ok(self.run_async(Hook::OnRows, job, rows_lost).await)
    }

    /// Blocking [`PluginSession::on_rows`].
    pub fn on_rows_blocking(&mut self, batch: RowBatch) -> Result<RowsOutcome, BatchError> {
        batch.validate()?;
        if !self.chain.wants(Hook::OnRows) {
            return Ok(pass(batch));
        }
        Ok(self.run_here(|chain, info, slots| rows_chain(chain, info, slots, batch)))
    }

    /// Run `on-http-request` of each plugin in order (the body only to plugins that asked
    /// for it); replacement bodies apply in order; the first deny or hold wins.
    pub async fn on_http_request(&mut self, message: HttpMessage) -> HttpOutcome {
        self.http_async(Hook::OnHttpRequest, message).await
    }

    /// Same as [`PluginSession::on_http_request`] for responses.
    pub async fn on_http_response(&mut self, message: HttpMessage) -> HttpOutcome {
        self.http_async(Hook::OnHttpResponse, message).await
    }

    /// Blocking [`PluginSession::on_http_request`] / `on_http_response` (`hook` picks).
    pub fn on_http_blocking(&mut self, hook: Hook, message: HttpMessage) -> HttpOutcome {
        if !matches!(hook, Hook::OnHttpRequest | Hook::OnHttpResponse) || !self.chain.wants(hook) {
            return http_allow(message);
        }
        self.run_here(|chain, info, slots| http_chain(chain, info, slots, hook, message))
    }

    async fn http_async(&mut self, hook: Hook, message: HttpMessage) -> HttpOutcome {
        if !self.chain.wants(hook) {
            return http_allow(message);
        }
        let job: Job<HttpOutcome> =
            Box::new(move |chain, info, slots| http_chain(chain, info, slots, hook, message));
        self.run_async(hook, job, http_lost).await
    }

    fn take_slots(&mut self) -> Vec<Option<Live>> {
        self.slots
            .take()
            .unwrap_or_else(|| empty_slots(self.chain.entries.len()))
    }

    fn run_here<R>(&mut self, job: impl FnOnce(&Chain, &SessionInfo, &mut [Option<Live>]) -> R) -> R {
        let mut slots = self.take_slots();
        let out = job(&self.chain, &self.info, &mut slots);
        self.slots = Some(slots);
        out
    }

    /// Move the instances to the blocking pool, run the job there, and take them back.
    async fn run_async<R: Send + 'static>(&mut self, hook: Hook, job: Job<R>, lost: fn(Fault) -> R) -> R {
        let mut slots = self.take_slots();
        let chain = self.chain.clone();
        let info = Arc::clone(&self.info);
        let joined = tokio::task::spawn_blocking(move || {
            let out = job(&chain, &info, &mut slots);
            (slots, out)
        })
        .await;
        match joined {
            Ok((slots, out)) => {
                self.slots = Some(slots);
                out
            }
            Err(error) => {
                // The worker panicked or the runtime is shutting down: the instances are
                // gone (fresh ones next time) and nothing can be said about the plugins'
                // verdicts, so fail closed whatever the fail modes.
                let fault = self.lost_fault(hook, &error.to_string());
                tracing::error!(%fault, "plugin worker lost");
                lost(fault)
            }
        }
    }

    fn lost_fault(&self, hook: Hook, message: &str) -> Fault {
        let entry = self
            .chain
            .entries
            .iter()
            .find(|e| e.current().implements(hook))
            .or_else(|| self.chain.entries.first());
        let plugin = match entry {
            Some(e) => e.current().id.clone(),
            None => PluginId {
                name: Arc::from("-"),
                hash: Arc::from("-"),
            },
        };
        Fault {
            plugin,
            hook,
            kind: FaultKind::Host(message.to_string()),
            fail: FailMode::Closed,
        }
    }
}

fn allow() -> VerdictOutcome {
    VerdictOutcome {
        verdict: ChainVerdict::Allow,
        runs: Vec::new(),
    }
}

fn pass(batch: RowBatch) -> RowsOutcome {
    RowsOutcome::Pass {
        batch,
        findings: Vec::new(),
        runs: Vec::new(),
    }
}

fn http_allow(message: HttpMessage) -> HttpOutcome {
    HttpOutcome {
        verdict: ChainVerdict::Allow,
        message,
        findings: Vec::new(),
        runs: Vec::new(),
    }
}

fn verdict_lost(fault: Fault) -> VerdictOutcome {
    VerdictOutcome {
        runs: vec![PluginRun {
            plugin: fault.plugin.clone(),
            hook: fault.hook,
            result: RunResult::Fault(fault.clone()),
            elapsed: Duration::ZERO,
        }],
        verdict: ChainVerdict::FailClosed(fault),
    }
}

fn rows_lost(fault: Fault) -> RowsOutcome {
    RowsOutcome::MaskAll {
        runs: vec![PluginRun {
            plugin: fault.plugin.clone(),
            hook: fault.hook,
            result: RunResult::Fault(fault.clone()),
            elapsed: Duration::ZERO,
        }],
        fault,
        // The batch moved into the lost worker; an empty one with no columns tells the
        // caller there is nothing it may deliver.
        batch: RowBatch::new(Vec::new()),
        findings: Vec::new(),
    }
}

fn http_lost(fault: Fault) -> HttpOutcome {
    HttpOutcome {
        runs: vec![PluginRun {
            plugin: fault.plugin.clone(),
            hook: fault.hook,
            result: RunResult::Fault(fault.clone()),
            elapsed: Duration::ZERO,
        }],
        verdict: ChainVerdict::FailClosed(fault),
        message: HttpMessage {
            head: crate::wit::HttpHead {
                method: String::new(),
                path: String::new(),
                status: 0,
                headers: Vec::new(),
            },
            body: None,
        },
        findings: Vec::new(),
    }
}

/// How a plugin's step ended, for the chain loops.
enum Step<T> {
    Skipped,
    Ok(PluginId, T, Duration),
    Fault(Fault, Duration),
}

/// Invoke one plugin and validate its return with `check`; a malformed return is a fault
/// like any other.
fn step<R, T>(
    entry: &Entry,
    slot: &mut Option<Live>,
    hook: Hook,
    call: impl FnOnce(&Bindings, &mut Store<StoreState>) -> wasmtime::Result<Result<R, String>>,
    check: impl FnOnce(R) -> Result<T, String>,
) -> Step<T> {
    match entry.invoke(slot, hook, call) {
        Invoked::Skipped => Step::Skipped,
        Invoked::Ran {
            id,
            result: Ok(value),
            elapsed,
        } => match check(value) {
            Ok(checked) => Step::Ok(id, checked, elapsed),
            Err(message) => {
                let kind = FaultKind::Malformed(message);
                entry.fault(slot, &id, hook, &kind);
                Step::Fault(
                    Fault {
                        plugin: id,
                        hook,
                        kind,
                        fail: entry.fail(),
                    },
                    elapsed,
                )
            }
        },
        Invoked::Ran {
            id,
            result: Err(kind),
            elapsed,
        } => Step::Fault(
            Fault {
                plugin: id,
                hook,
                kind,
                fail: entry.fail(),
            },
            elapsed,
        ),
    }
}

fn statement_chain(
    chain: &Chain,
    info: &SessionInfo,
    slots: &mut [Option<Live>],
    stmt: &Statement,
) -> VerdictOutcome {
    verdict_chain(chain, slots, Hook::OnStatement, &mut |b, s| {
        b.call_on_statement(s, info, stmt)
    })
}

fn command_chain(
    chain: &Chain,
    info: &SessionInfo,
    slots: &mut [Option<Live>],
    cmd: &Command,
) -> VerdictOutcome {
    verdict_chain(chain, slots, Hook::OnCommand, &mut |b, s| {
        b.call_on_command(s, info, cmd)
    })
}

type VerdictCall<'a> =
    dyn FnMut(&Bindings, &mut Store<StoreState>) -> wasmtime::Result<Result<Verdict, String>> + 'a;

fn verdict_chain(
    chain: &Chain,
    slots: &mut [Option<Live>],
    hook: Hook,
    call: &mut VerdictCall<'_>,
) -> VerdictOutcome {
    let mut runs = Vec::new();
    for (entry, slot) in chain.entries.iter().zip(slots.iter_mut()) {
        match step(entry, slot, hook, &mut *call, check_verdict) {
            Step::Skipped => {}
            Step::Ok(plugin, verdict, elapsed) => {
                runs.push(PluginRun {
                    plugin: plugin.clone(),
                    hook,
                    result: RunResult::Verdict(verdict.clone()),
                    elapsed,
                });
                if let Some(decided) = decisive(plugin, verdict) {
                    return VerdictOutcome {
                        verdict: decided,
                        runs,
                    };
                }
            }
            Step::Fault(fault, elapsed) => {
                runs.push(fault_run(&fault, elapsed));
                if fault.fail == FailMode::Closed {
                    return VerdictOutcome {
                        verdict: ChainVerdict::FailClosed(fault),
                        runs,
                    };
                }
            }
        }
    }
    VerdictOutcome {
        verdict: ChainVerdict::Allow,
        runs,
    }
}

fn decisive(plugin: PluginId, verdict: Verdict) -> Option<ChainVerdict> {
    match verdict {
        Verdict::Allow => None,
        Verdict::Deny(reason) => Some(ChainVerdict::Deny { plugin, reason }),
        Verdict::Hold(HoldRequest { approvers, reason }) => Some(ChainVerdict::Hold {
            plugin,
            approvers,
            reason,
        }),
    }
}

fn fault_run(fault: &Fault, elapsed: Duration) -> PluginRun {
    PluginRun {
        plugin: fault.plugin.clone(),
        hook: fault.hook,
        result: RunResult::Fault(fault.clone()),
        elapsed,
    }
}

fn rows_chain(
    chain: &Chain,
    info: &SessionInfo,
    slots: &mut [Option<Live>],
    mut batch: RowBatch,
) -> RowsOutcome {
    let max_output = chain.max_output();
    let mut findings = Vec::new();
    let mut runs = Vec::new();
    for (entry, slot) in chain.entries.iter().zip(slots.iter_mut()) {
        let hook = Hook::OnRows;
        let result = step(
            entry,
            slot,
            hook,
            |b, s| b.call_on_rows(s, info, &batch),
            |result: RowsResult| {
                check_rows_size(&result, max_output)?;
                check_findings(&result.findings)?;
                Ok(result)
            },
        );
        // Apply the edits (their validation is part of the plugin's step).
        let result = match result {
            Step::Ok(id, result, elapsed) => match batch.apply_edits(&result.edits) {
                Ok(()) => Step::Ok(id, result, elapsed),
                Err(error) => {
                    let kind = FaultKind::Malformed(edit_message(&error));
                    entry.fault(slot, &id, hook, &kind);
                    Step::Fault(
                        Fault {
                            plugin: id,
                            hook,
                            kind,
                            fail: entry.fail(),
                        },
                        elapsed,
                    )
                }
            },
            other => other,
        };
        match result {
            Step::Skipped => {}
            Step::Ok(plugin, result, elapsed) => {
                runs.push(PluginRun {
                    plugin: plugin.clone(),
                    hook,
                    result: RunResult::Rows {
                        edits: u32::try_from(result.edits.len()).unwrap_or(u32::MAX),
                        findings: u32::try_from(result.findings.len()).unwrap_or(u32::MAX),
                    },
                    elapsed,
                });
                findings.extend(attribute(&plugin, result.findings));
            }
            Step::Fault(fault, elapsed) => {
                runs.push(fault_run(&fault, elapsed));
                if fault.fail == FailMode::Closed {
                    return RowsOutcome::MaskAll {
                        fault,
                        batch,
                        findings,
                        runs,
                    };
                }
            }
        }
    }
    RowsOutcome::Pass {
        batch,
        findings,
        runs,
    }
}

fn edit_message(error: &EditError) -> String {
    format!("on-rows returned a bad edit: {error}")
}

fn http_chain(
    chain: &Chain,
    info: &SessionInfo,
    slots: &mut [Option<Live>],
    hook: Hook,
    mut message: HttpMessage,
) -> HttpOutcome {
    let max_output = chain.max_output();
    let mut findings = Vec::new();
    let mut runs = Vec::new();
    for (entry, slot) in chain.entries.iter().zip(slots.iter_mut()) {
        // Plugins that did not ask for bodies do not get them.
        let wants_body = entry.current().info.wants_http_body;
        let held_body = if wants_body { None } else { message.body.take() };
        let result = step(
            entry,
            slot,
            hook,
            |b, s| match hook {
                Hook::OnHttpResponse => b.call_on_http_response(s, info, &message),
                _ => b.call_on_http_request(s, info, &message),
            },
            |result: HttpResult| {
                check_verdict(result.verdict.clone())?;
                check_findings(&result.findings)?;
                let body = result.new_body.as_ref().map_or(0, Vec::len) as u64;
                if body > max_output {
                    return Err(format!(
                        "replacement body of {body} bytes is over the {max_output}-byte limit"
                    ));
                }
                Ok(result)
            },
        );
        if held_body.is_some() {
            message.body = held_body;
        }
        match result {
            Step::Skipped => {}
            Step::Ok(plugin, result, elapsed) => {
                let body_replaced = result.new_body.is_some();
                if let Some(body) = result.new_body {
                    message.body = Some(body);
                }
                runs.push(PluginRun {
                    plugin: plugin.clone(),
                    hook,
                    result: RunResult::Http {
                        verdict: result.verdict.clone(),
                        body_replaced,
                    },
                    elapsed,
                });
                findings.extend(attribute(&plugin, result.findings));
                if let Some(decided) = decisive(plugin, result.verdict) {
                    return HttpOutcome {
                        verdict: decided,
                        message,
                        findings,
                        runs,
                    };
                }
            }
            Step::Fault(fault, elapsed) => {
                runs.push(fault_run(&fault, elapsed));
                if fault.fail == FailMode::Closed {
                    return HttpOutcome {
                        verdict: ChainVerdict::FailClosed(fault),
                        message,
                        findings,
                        runs,
                    };
                }
            }
        }
    }
    HttpOutcome {
        verdict: ChainVerdict::Allow,
        message,
        findings,
        runs,
    }
}

fn attribute(plugin: &PluginId, findings: Vec<Finding>) -> impl Iterator<Item = PluginFinding> {
    findings.into_iter().map(move |f| PluginFinding {
        plugin: plugin.clone(),
        entity: f.entity,
        field: f.field,
        count: f.count,
    })
}

/// A verdict's strings must be short, printable enough for a PostgreSQL error (no NUL), and
/// a hold must name at least one approver group.
fn check_verdict(verdict: Verdict) -> Result<Verdict, String> {
    match &verdict {
        Verdict::Allow => {}
        Verdict::Deny(reason) => check_reason(reason)?,
        Verdict::Hold(hold) => {
            check_reason(&hold.reason)?;
            if hold.approvers.is_empty() || hold.approvers.len() > MAX_APPROVERS {
                return Err(format!(
                    "hold must name 1 to {MAX_APPROVERS} approver groups, not {}",
                    hold.approvers.len()
                ));
            }
            if hold
                .approvers
                .iter()
                .any(|a| a.is_empty() || a.len() > MAX_LABEL || a.chars().any(char::is_control))
            {
                return Err("hold names an empty, overlong or unprintable approver group".into());
            }
        }
    }
    Ok(verdict)
}

fn check_reason(reason: &str) -> Result<(), String> {
    if reason.len() > MAX_REASON {
        return Err(format!(
            "reason of {} bytes is over the {MAX_REASON}-byte limit",
            reason.len()
        ));
    }
    if reason.contains('\0') {
        return Err("reason contains a NUL character".into());
    }
    Ok(())
}

fn check_findings(findings: &[Finding]) -> Result<(), String> {
    if findings.len() > MAX_FINDINGS {
        return Err(format!(
            "{} findings, over the limit of {MAX_FINDINGS}",
            findings.len()
        ));
    }
    for f in findings {
        if f.entity.is_empty() || f.entity.len() > MAX_LABEL || f.field.len() > MAX_LABEL {
            return Err("a finding has an empty or overlong entity or an overlong field".into());
        }
        if f.entity.chars().chain(f.field.chars()).any(char::is_control) {
            return Err("a finding has control characters in its entity or field".into());
        }
    }
    Ok(())
}

fn check_rows_size(result: &RowsResult, max_output: u64) -> Result<(), String> {
    let edit_bytes: u64 = result
        .edits
        .iter()
        .map(|e| e.value.as_ref().map_or(0, Vec::len) as u64 + 8)
        .sum();
    let finding_bytes: u64 = result
        .findings
        .iter()
        .map(|f| (f.entity.len() + f.field.len()) as u64 + 4)
        .sum();
    let total = edit_bytes + finding_bytes;
    if total > max_output {
        return Err(format!(
            "on-rows returned {total} bytes, over the {max_output}-byte limit"
        ));
    }
    Ok(())
}
