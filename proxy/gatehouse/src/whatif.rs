//! `gatehouse policy whatif`: re-decide every recorded operation of a time window under a
//! candidate policy set and report the decisions that would change.
//!
//! Each recorded decision is re-made exactly as the gateway made it: the session's principal
//! (groups, attributes, `on_behalf_of`), source address, authentication method and the target's
//! tags come from the session's recorded start; the statement's classification (kind, tables,
//! WHERE, functions, …) from the decision record; `context.now` is the recorded time. What is
//! compared is Cedar's part of the decision — allow, deny or hold for approval — because plugins
//! run only on what Cedar allowed: where a plugin denied or held an operation, its Cedar outcome
//! was "allow", and the report says a plugin had the last word. Decisions re-made after an
//! approval (`context.approved`) are not re-decided; their original hold is. A hold the gateway
//! could not open (it denied instead, recorded as `unheld`) counts as a hold. Operations that
//! can never be held (connections, statements without text) compare a hold as the deny it
//! becomes.
//!
//! Limits: sessions recorded before target tags were recorded re-decide with no tags (counted
//! in the report); `context.auth.token_age_secs` and `mfa` are not recorded yet and are taken as
//! 0 and false, which is what static access keys always give.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use gatehouse_core::{AuthInfo, Operation, SessionCtx, TargetRef, Verdict};
use gatehouse_policy::{PolicyEngine, SessionPolicy};
use gatehouse_recorder::{Event, EventBody, LogReader};
use serde::Serialize;

/// Cedar's outcome for one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CedarOutcome {
    Allow,
    Deny,
    /// Denied only by `@approvers` policies: held for approval.
    Hold,
}

impl CedarOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CedarOutcome::Allow => "allow",
            CedarOutcome::Deny => "deny",
            CedarOutcome::Hold => "hold",
        }
    }
}

/// One decision that would change.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub seq: u64,
    pub time_us: i64,
    pub session_id: String,
    pub principal: String,
    pub target: String,
    /// `connect` | `query`.
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statement: Option<String>,
    pub old: CedarOutcome,
    pub old_policies: Vec<String>,
    pub new: CedarOutcome,
    pub new_policies: Vec<String>,
    /// With `new == hold`: the approver groups.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub new_approvers: Vec<String>,
    /// A plugin denied or held the operation after Cedar allowed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin_verdict: Option<String>,
    /// Problems building or evaluating the new request (they deny).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// What the what-if run found.
#[derive(Debug, Default, Serialize)]
pub struct WhatIfReport {
    /// Recorded decisions re-decided.
    pub decided: u64,
    pub unchanged: u64,
    pub changes: Vec<Change>,
    /// Per transition (`deny->allow`), how many.
    pub transitions: std::collections::BTreeMap<String, u64>,
    /// Decisions made after an approval, not re-decided.
    pub skipped_after_approval: u64,
    /// Decisions whose session start is not in the log.
    pub skipped_no_session: u64,
    /// Sessions re-decided without their target's tags (recorded before tags were).
    pub sessions_without_tags: u64,
}

/// A session's re-decision context, or why there is none.
enum SessionState {
    Ready {
        policy: Box<SessionPolicy>,
        target: String,
    },
    /// The candidate set cannot even build the session (e.g. the schema no longer accepts the
    /// principal): every decision of it is a deny with this error.
    Failed {
        error: String,
        target: String,
    },
    Missing,
}

fn session_ctx(ev: &Event) -> Option<(SessionCtx, bool)> {
    let EventBody::SessionStart {
        protocol,
        source,
        target,
        client_app,
        auth_method,
        principal,
        target_tags,
        auth,
        grant,
    } = &ev.body
    else {
        return None;
    };
    // `source` is the client's address (older records: `ip:port`).
    let source_ip = source
        .parse()
        .ok()
        .or_else(|| source.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))?;
    Some((
        SessionCtx {
            session_id: ev.session_id.clone(),
            principal: principal.clone(),
            target: TargetRef {
                name: target.clone(),
                kind: protocol.clone(),
                tags: target_tags.clone(),
            },
            source_ip,
            // What Cedar saw; records from before `auth` was kept have the method only.
            auth: auth.clone().unwrap_or_else(|| AuthInfo {
                method: auth_method.clone(),
                token_age_secs: 0,
                mfa: false,
                expires_at: None,
                issuer: None,
            }),
            client_app: client_app.clone(),
            grant: grant.clone(),
        },
        target_tags.is_empty(),
    ))
}

/// Cedar's part of a recorded decision: (outcome, policy ids, plugin verdict if a plugin had
/// the last word).
fn recorded_outcome(body: &EventBody) -> Option<(CedarOutcome, Vec<String>, Option<String>)> {
    let EventBody::Decision {
        verdict,
        plugins,
        hold,
        unheld,
        ..
    } = body
    else {
        return None;
    };
    let plugin = plugins
        .iter()
        .find(|p| p.result == "deny" || p.result == "hold" || p.result.starts_with("fault"))
        .map(|p| format!("{} {}", p.plugin, p.result));
    let ids = match verdict {
        Verdict::Allow { policy_ids } | Verdict::Deny { policy_ids, .. } => policy_ids.clone(),
    };
    let outcome = if plugin.is_some() {
        CedarOutcome::Allow
    } else if hold.is_some() || unheld.is_some() {
        CedarOutcome::Hold
    } else if verdict.is_allow() {
        CedarOutcome::Allow
    } else {
        CedarOutcome::Deny
    };
    // A plugin's verdict cites no policy: Cedar's permit ids are not recorded in that case.
    Some((outcome, if plugin.is_some() { Vec::new() } else { ids }, plugin))
}

/// Re-decide every `connect` and `query` decision with a time in `[from_us, to_us]`.
pub fn whatif(reader: &LogReader, engine: &PolicyEngine, from_us: i64, to_us: i64) -> Result<WhatIfReport> {
    const PAGE: usize = 4096;
    let mut report = WhatIfReport::default();
    let mut sessions: HashMap<String, SessionState> = HashMap::new();
    let mut next = 1u64;
    loop {
        let page = reader.events(next, PAGE).context("reading the log")?;
        let Some(last) = page.last() else { break };
        next = last.seq + 1;
        for ev in &page {
            if matches!(ev.body, EventBody::SessionEnd { .. }) {
                // Its decisions are all behind us: keep memory bounded by open sessions.
                sessions.remove(&ev.session_id);
                continue;
            }
            if ev.time_us < from_us || ev.time_us > to_us {
                continue;
            }
            let EventBody::Decision {
                action,
                statement,
                approval,
                errors: _,
                ..
            } = &ev.body
            else {
                continue;
            };
            if approval.is_some() {
                report.skipped_after_approval += 1;
                continue;
            }
            let op = match (action.as_str(), statement) {
                ("connect", _) => Operation::Connect,
                ("query", Some(stmt)) => Operation::Query(Arc::new(stmt.clone())),
                _ => continue,
            };
            let Some((mut old, old_policies, plugin_verdict)) = recorded_outcome(&ev.body) else {
                continue;
            };
            // The gateway denies what it cannot hold, whatever the policies say.
            let holdable = matches!(&op, Operation::Query(s) if !s.text.trim().is_empty());
            if !holdable && old == CedarOutcome::Hold {
                old = CedarOutcome::Deny;
            }
            if !sessions.contains_key(&ev.session_id) {
                let state = load_session(reader, engine, &ev.session_id, &mut report)?;
                sessions.insert(ev.session_id.clone(), state);
            }
            let (mut new, new_policies, mut new_approvers, errors, target) =
                match sessions.get(&ev.session_id) {
                    None | Some(SessionState::Missing) => {
                        report.skipped_no_session += 1;
                        continue;
                    }
                    Some(SessionState::Failed { error, target }) => (
                        CedarOutcome::Deny,
                        Vec::new(),
                        Vec::new(),
                        vec![error.clone()],
                        target.clone(),
                    ),
                    Some(SessionState::Ready { policy, target }) => {
                        let d = engine.decide_at(policy, &op, false, ev.time_us);
                        let ids = match &d.verdict {
                            Verdict::Allow { policy_ids } | Verdict::Deny { policy_ids, .. } => {
                                policy_ids.clone()
                            }
                        };
                        let outcome = if d.needs_approval.is_some() {
                            CedarOutcome::Hold
                        } else if d.verdict.is_allow() {
                            CedarOutcome::Allow
                        } else {
                            CedarOutcome::Deny
                        };
                        (
                            outcome,
                            ids,
                            d.needs_approval.unwrap_or_default(),
                            d.errors,
                            target.clone(),
                        )
                    }
                };
            if !holdable && new == CedarOutcome::Hold {
                new = CedarOutcome::Deny;
                new_approvers.clear();
            }
            report.decided += 1;
            if new == old {
                report.unchanged += 1;
                continue;
            }
            *report
                .transitions
                .entry(format!("{}->{}", old.as_str(), new.as_str()))
                .or_default() += 1;
            report.changes.push(Change {
                seq: ev.seq,
                time_us: ev.time_us,
                session_id: ev.session_id.clone(),
                principal: ev.principal.clone().unwrap_or_default(),
                target,
                action: action.clone(),
                statement: statement.as_ref().map(|s| s.text.clone()),
                old,
                old_policies,
                new,
                new_policies,
                new_approvers,
                plugin_verdict,
                errors,
            });
        }
        if page.len() < PAGE {
            break;
        }
    }
    Ok(report)
}

fn load_session(
    reader: &LogReader,
    engine: &PolicyEngine,
    session_id: &str,
    report: &mut WhatIfReport,
) -> Result<SessionState> {
    let Some(summary) = reader.session(session_id)? else {
        return Ok(SessionState::Missing);
    };
    // The session's first event must be exactly where its summary says (an event from another
    // session must never lend its principal).
    let Some(start) = reader
        .events(summary.first_seq, 1)?
        .into_iter()
        .next()
        .filter(|e| e.seq == summary.first_seq && e.session_id == session_id)
    else {
        return Ok(SessionState::Missing);
    };
    let Some((ctx, no_tags)) = session_ctx(&start) else {
        return Ok(SessionState::Missing);
    };
    if no_tags {
        report.sessions_without_tags += 1;
    }
    let target = ctx.target.name.clone();
    Ok(match engine.session(&ctx) {
        Ok(policy) => SessionState::Ready {
            policy: Box::new(policy),
            target,
        },
        Err(e) => SessionState::Failed {
            error: e.to_string(),
            target,
        },
    })
}

/// The report for people.
pub fn render(report: &WhatIfReport, policies: &str, from_us: i64, to_us: i64) -> String {
    use std::fmt::Write as _;
    let t = |us: i64| {
        if us == i64::MIN {
            "the beginning".to_string()
        } else {
            gatehouse_core::time::rfc3339_micros(us)
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "policy what-if: {policies} over {} .. {}",
        t(from_us),
        t(to_us)
    );
    let transitions: Vec<String> = report
        .transitions
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let _ = writeln!(
        out,
        "  {} of {} decisions would change{}",
        report.changes.len(),
        report.decided,
        if transitions.is_empty() {
            String::new()
        } else {
            format!(" ({})", transitions.join(", "))
        }
    );
    if report.skipped_after_approval > 0 {
        let _ = writeln!(
            out,
            "  {} decisions made after an approval were not re-decided (their holds were)",
            report.skipped_after_approval
        );
    }
    if report.skipped_no_session > 0 {
        let _ = writeln!(
            out,
            "  {} decisions skipped: their session's start is not in the log",
            report.skipped_no_session
        );
    }
    if report.sessions_without_tags > 0 {
        let _ = writeln!(
            out,
            "  {} sessions had no recorded target tags and were re-decided without them",
            report.sessions_without_tags
        );
    }
    let ids = |v: &[String]| {
        if v.is_empty() {
            "no policy".to_string()
        } else {
            v.join(", ")
        }
    };
    for c in &report.changes {
        let what = match &c.statement {
            Some(s) => gatehouse_recorder::escape_controls(s),
            None => c.action.clone(),
        };
        let _ = writeln!(
            out,
            "\n  {}  {}  {}  event {}  session {}\n    {what}",
            gatehouse_core::time::rfc3339_micros(c.time_us),
            c.principal,
            c.target,
            c.seq,
            c.session_id
        );
        let mut line = format!(
            "    {} [{}] -> {} [{}]",
            c.old.as_str(),
            ids(&c.old_policies),
            c.new.as_str(),
            ids(&c.new_policies)
        );
        if !c.new_approvers.is_empty() {
            let _ = write!(line, " approvers: {}", c.new_approvers.join(", "));
        }
        if let Some(p) = &c.plugin_verdict {
            let _ = write!(line, " (then plugin: {p})");
        }
        if !c.errors.is_empty() {
            let _ = write!(line, " errors: {}", c.errors.join("; "));
        }
        let _ = writeln!(out, "{line}");
    }
    out
}
