//! Human-readable session transcripts (`gatehouse audit show SESSION`).

use std::fmt::Write as _;

use gatehouse_core::Verdict;
use gatehouse_core::time::rfc3339_micros;

use crate::event::{Event, EventBody};

/// Render one session's events (in log order) as a transcript:
///
/// ```text
/// session 7f3c…  agent:etl
/// 2026-11-23T08:00:00.123Z  #12  session start  agent:etl from 10.0.0.5:51234 to app via postgres (auth scram-sha-256, app psql)
/// 2026-11-23T08:00:00.130Z  #13  op 1 query  ALLOW  policies: read-only  (generation 3)
///                                   [select] SELECT * FROM public.orders
/// 2026-11-23T08:00:00.140Z  #14  op 1 result  SELECT 3  3 rows  9.870 ms
/// ```
pub fn render_transcript(events: &[Event]) -> String {
    let mut out = String::new();
    let Some(first) = events.first() else {
        return out;
    };
    let who = events
        .iter()
        .find_map(|e| e.principal.clone())
        .unwrap_or_else(|| "(unauthenticated)".to_string());
    let _ = writeln!(out, "session {}  {who}", first.session_id);
    for ev in events {
        let t = rfc3339_micros(ev.time_us);
        let lead = format!("{t}  #{}  ", ev.seq);
        let indent = " ".repeat(lead.chars().count() + 4);
        out.push_str(&lead);
        match &ev.body {
            EventBody::SessionStart {
                protocol,
                source,
                target,
                client_app,
                auth_method,
                principal,
                auth,
                grant,
                ..
            } => {
                let _ = write!(
                    out,
                    "session start  {} from {source} to {target} via {protocol} (auth {auth_method}",
                    principal.display()
                );
                if let Some(iss) = auth.as_ref().and_then(|a| a.issuer.as_ref()) {
                    let _ = write!(out, " from {iss}");
                }
                if let Some(exp) = auth.as_ref().and_then(|a| a.expires_at) {
                    let _ = write!(
                        out,
                        ", valid until {}",
                        gatehouse_core::time::rfc3339_micros(exp.saturating_mul(1_000_000))
                    );
                }
                if let Some(app) = client_app {
                    let _ = write!(out, ", app {:?}", app);
                }
                if let Some(h) = &principal.on_behalf_of {
                    let _ = write!(out, ", on behalf of {h}");
                }
                if let Some(g) = grant {
                    let _ = write!(
                        out,
                        ", under access grant {} until {}",
                        clean(&g.id),
                        gatehouse_core::time::rfc3339_micros(g.expires_at.saturating_mul(1_000_000))
                    );
                }
                if !principal.actor_chain.is_empty() {
                    let _ = write!(out, ", instructed by {}", principal.actor_chain.join(" <- "));
                }
                out.push_str(")\n");
            }
            EventBody::AuthFailure {
                protocol,
                source,
                user,
                target,
                reason,
            } => {
                let _ = writeln!(
                    out,
                    "auth failure  user {user:?} from {source} to {target} via {protocol}: {reason}"
                );
            }
            EventBody::Decision {
                op,
                action,
                statement,
                verdict,
                policy_generation,
                errors,
                plugins,
                hold,
                approval,
                unheld,
            } => {
                let _ = write!(out, "op {op} {action}  ");
                match (verdict, hold) {
                    (_, Some(h)) => {
                        let _ = write!(
                            out,
                            "HOLD request {} for {} approval(s) by {} ({}; timeout {}s)",
                            clean(&h.request),
                            h.min_approvals,
                            clean(&h.approvers.join(", ")),
                            clean(&h.reason),
                            h.timeout_secs
                        );
                    }
                    (Verdict::Allow { .. }, None) => out.push_str("ALLOW"),
                    (Verdict::Deny { reason, .. }, None) => {
                        let _ = write!(out, "DENY {reason:?}");
                    }
                }

                let ids = verdict.policy_ids();
                if ids.is_empty() {
                    out.push_str("  policies: (none)");
                } else {
                    let _ = write!(out, "  policies: {}", ids.join(", "));
                }
                let _ = writeln!(out, "  (generation {policy_generation})");
                if let Some(st) = statement {
                    let kind = st.kind();
                    let mut first = true;
                    for line in st.text.lines() {
                        if first {
                            let _ = writeln!(out, "{indent}[{kind}] {}", clean(line));
                            first = false;
                        } else {
                            let _ = writeln!(out, "{indent}{}", clean(line));
                        }
                    }
                    if first {
                        let _ = writeln!(out, "{indent}[{kind}] (empty statement)");
                    }
                    if let Some(e) = &st.parse_error {
                        let _ = writeln!(out, "{indent}parse error: {}", clean(e));
                    }
                }
                for e in errors {
                    let _ = writeln!(out, "{indent}error: {}", clean(e));
                }
                if let Some(why) = unheld {
                    let _ = writeln!(out, "{indent}approval was asked for, but {}", clean(why));
                }
                if let Some(h) = hold
                    && !h.parameters.is_empty()
                {
                    let bound: Vec<String> = h
                        .parameters
                        .iter()
                        .enumerate()
                        .map(|(i, v)| format!("${} = {}", i + 1, clean(v)))
                        .collect();
                    let _ = writeln!(out, "{indent}bound parameters: {}", bound.join(", "));
                }
                if let Some(a) = approval {
                    let _ = write!(
                        out,
                        "{indent}after request {} {}",
                        clean(&a.request),
                        clean(&a.state)
                    );
                    if let Some(r) = &a.end_reason {
                        let _ = write!(out, " ({})", clean(r));
                    }
                    out.push('\n');
                }
                for v in approval.iter().flat_map(|a| &a.votes) {
                    let _ = writeln!(
                        out,
                        "{indent}{} by {} at {}{}",
                        if v.approve { "approved" } else { "denied" },
                        clean(&v.approver),
                        rfc3339_micros(v.time_us),
                        if v.comment.is_empty() {
                            String::new()
                        } else {
                            format!(": {:?}", clean(&v.comment))
                        }
                    );
                }
                for p in plugins {
                    let _ = write!(
                        out,
                        "{indent}plugin {} (sha256 {}) {}: {}",
                        clean(&p.plugin),
                        p.hash.get(..12).unwrap_or(&p.hash),
                        clean(&p.hook),
                        clean(&p.result)
                    );
                    if !p.detail.is_empty() {
                        let _ = write!(out, " {}", clean(&p.detail));
                    }
                    let _ = writeln!(out, " ({} us)", p.elapsed_us);
                }
            }
            EventBody::OpResult {
                op,
                tag,
                rows,
                duration_us,
                error,
                skipped,
                result,
            } => {
                let _ = write!(out, "op {op} result  ");
                if *skipped {
                    out.push_str("skipped");
                } else {
                    if let Some(tag) = tag {
                        let _ = write!(out, "{}  ", clean(tag));
                    }
                    let _ = write!(out, "{rows} rows  {}", fmt_duration(*duration_us));
                }
                if let Some(e) = error {
                    let _ = write!(out, "  error {}: {}", clean(&e.code), clean(&e.message));
                }
                out.push('\n');
                if let Some(r) = result {
                    rows_table(&mut out, r);
                }
            }
            EventBody::SessionEnd {
                reason,
                ops,
                duration_us,
            } => {
                let _ = writeln!(
                    out,
                    "session end  {} ({ops} ops, {})",
                    clean(reason),
                    fmt_duration(*duration_us)
                );
            }
            EventBody::Notice { level, message } => {
                let _ = writeln!(out, "notice [{}] {}", clean(level), clean(message));
            }
            EventBody::Access {
                request,
                step,
                target,
                duration_secs,
                reason,
                expires_us,
            } => {
                let who = ev.principal.as_deref().unwrap_or("(unknown)");
                let _ = write!(
                    out,
                    "access {}  request {} by {who} for {} ({duration_secs}s): {}",
                    clean(step),
                    clean(request),
                    clean(target),
                    clean(reason)
                );
                if let Some(e) = expires_us {
                    let _ = write!(out, ", until {}", gatehouse_core::time::rfc3339_micros(*e));
                }
                out.push('\n');
            }
            EventBody::ApprovalVote {
                request,
                op,
                approve,
                comment,
            } => {
                let who = ev.principal.as_deref().unwrap_or("(unknown)");
                let _ = write!(
                    out,
                    "op {op} {} request {} by {}",
                    if *approve { "APPROVE" } else { "DENY" },
                    clean(request),
                    clean(who)
                );
                if !comment.is_empty() {
                    let _ = write!(out, ": {:?}", clean(comment));
                }
                out.push('\n');
            }
            EventBody::Masking { op, findings, faults } => {
                for f in findings {
                    let _ = writeln!(
                        out,
                        "  #{op} masked {} x{} in `{}` (by {})",
                        clean(&f.entity),
                        f.count,
                        clean(&f.field),
                        clean(&f.source)
                    );
                }
                for f in faults {
                    let _ = writeln!(
                        out,
                        "  #{op} MASKER FAULT {} ({}, sha256 {}): {}",
                        clean(&f.plugin),
                        clean(&f.kind),
                        f.hash.get(..12).unwrap_or(&f.hash),
                        clean(&f.message)
                    );
                }
            }
        }
    }
    out
}

/// Client-supplied text with control characters escaped, so a transcript cannot drive the
/// reader's terminal.
pub fn clean(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn fmt_duration(us: u64) -> String {
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.3} ms", us as f64 / 1e3)
    } else {
        format!("{:.3} s", us as f64 / 1e6)
    }
}

/// Recorded result rows under their operation, one line per row, cells separated by ` | `.
fn rows_table(out: &mut String, r: &gatehouse_core::RecordedRows) {
    use std::fmt::Write as _;
    if !r.columns.is_empty() {
        let names: Vec<String> = r.columns.iter().map(|c| clean(c)).collect();
        let _ = writeln!(out, "    | {} |", names.join(" | "));
    }
    for row in &r.rows {
        let cells: Vec<String> = row
            .iter()
            .map(|c| match c {
                Some(v) => clean(v),
                None => "NULL".to_string(),
            })
            .collect();
        let _ = writeln!(out, "    | {} |", cells.join(" | "));
    }
    if r.truncated {
        out.push_str("    … (further rows not recorded: [recorder.results] max_bytes)\n");
    }
}
