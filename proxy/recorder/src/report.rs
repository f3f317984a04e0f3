//! The bundle's human-readable report (`report.html`): what the bundle holds, how to verify it,
//! and which artifacts support which SOC 2 / ISO/IEC 27001:2022 controls. One static page: no
//! script, no external resource, every recorded string HTML-escaped.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use gatehouse_core::Verdict;
use gatehouse_core::time::rfc3339_micros;

use crate::event::{Event, EventBody};
use crate::store::SessionSummary;

/// Counts over the window's events, gathered during export.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub events: u64,
    pub sessions_started: u64,
    pub auth_failures: u64,
    pub connects_allowed: u64,
    pub connects_denied: u64,
    pub statements_allowed: u64,
    pub statements_denied: u64,
    /// Writes, DDL, DCL and COPY allowed (privileged operations).
    pub privileged_allowed: u64,
    pub holds: u64,
    pub approved: u64,
    pub refused_approvals: u64,
    pub votes: u64,
    pub masked_values: u64,
    pub mask_faults: u64,
    pub plugin_denials: u64,
    pub notices: u64,
    /// Masked values per entity type.
    pub masked_by_entity: BTreeMap<String, u64>,
    /// Denials per policy id.
    pub denials_by_policy: BTreeMap<String, u64>,
    /// Approval outcomes: (time, session, request, state, approvers).
    pub approvals: Vec<(i64, String, String, String, Vec<String>)>,
}

impl Tally {
    pub(crate) fn add(&mut self, ev: &Event) {
        self.events += 1;
        match &ev.body {
            EventBody::SessionStart { .. } => self.sessions_started += 1,
            EventBody::AuthFailure { .. } => self.auth_failures += 1,
            EventBody::Decision {
                action,
                statement,
                verdict,
                plugins,
                hold,
                approval,
                ..
            } => {
                if hold.is_some() {
                    self.holds += 1;
                    return;
                }
                if let Some(a) = approval {
                    if a.state == "approved" {
                        self.approved += 1;
                    } else {
                        self.refused_approvals += 1;
                    }
                    self.approvals.push((
                        ev.time_us,
                        ev.session_id.clone(),
                        a.request.clone(),
                        a.state.clone(),
                        a.votes
                            .iter()
                            .map(|v| {
                                format!("{} {}", v.approver, if v.approve { "approved" } else { "denied" })
                            })
                            .collect(),
                    ));
                }
                let allowed = verdict.is_allow();
                if plugins.iter().any(|p| p.result == "deny") {
                    self.plugin_denials += 1;
                }
                if action == "connect" {
                    if allowed {
                        self.connects_allowed += 1;
                    } else {
                        self.connects_denied += 1;
                    }
                } else if allowed {
                    self.statements_allowed += 1;
                    use gatehouse_core::StatementKind as K;
                    let privileged = statement.as_ref().is_some_and(|s| {
                        matches!(
                            s.kind(),
                            K::Insert | K::Update | K::Delete | K::Merge | K::Ddl | K::Dcl | K::Copy
                        )
                    });
                    if privileged {
                        self.privileged_allowed += 1;
                    }
                } else {
                    self.statements_denied += 1;
                }
                if let Verdict::Deny { policy_ids, .. } = verdict {
                    for id in policy_ids {
                        *self.denials_by_policy.entry(id.clone()).or_default() += 1;
                    }
                }
            }
            EventBody::ApprovalVote { .. } => self.votes += 1,
            EventBody::Masking { findings, faults, .. } => {
                for f in findings {
                    self.masked_values += u64::from(f.count);
                    *self.masked_by_entity.entry(f.entity.clone()).or_default() += u64::from(f.count);
                }
                self.mask_faults += faults.len() as u64;
            }
            EventBody::Notice { .. } => self.notices += 1,
            EventBody::OpResult { .. } | EventBody::SessionEnd { .. } | EventBody::Access { .. } => {}
        }
    }
}

/// HTML-escape text (and make control characters visible).
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in crate::transcript::clean(s).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// What the report is about.
pub(crate) struct ReportInput<'a> {
    pub from_us: i64,
    pub to_us: i64,
    pub created_us: i64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub checkpoints: usize,
    pub checkpoint_keys: Vec<String>,
    /// Events of the bundle after its last checkpoint.
    pub unsigned_events: u64,
    pub head_hash: Option<String>,
    pub sessions: &'a [SessionSummary],
    /// Session id → transcript file (relative path).
    pub transcripts: &'a BTreeMap<String, String>,
    pub tally: &'a Tally,
}

struct Control {
    id: &'static str,
    framework: &'static str,
    title: &'static str,
    /// How the bundle supports it.
    evidence: String,
    artifacts: &'static [&'static str],
}

fn controls(t: &Tally, sessions: usize, signing: &str) -> Vec<Control> {
    let denials = t.connects_denied + t.statements_denied;
    vec![
        Control {
            id: "CC6.1",
            framework: "SOC 2",
            title: "Logical access security: identification, authentication and access restriction",
            evidence: format!(
                "{sessions} sessions, each tied to a verified identity and authentication method; \
                 {} failed authentications; every connection decided by policy ({} allowed, {} denied) \
                 with the deciding policy ids.",
                t.auth_failures, t.connects_allowed, t.connects_denied
            ),
            artifacts: &["sessions.jsonl", "events.jsonl"],
        },
        Control {
            id: "CC6.2",
            framework: "SOC 2",
            title: "Access authorized before it is granted",
            evidence: format!(
                "{} operations held for approval; {} approved and {} denied, timed out or withdrawn, \
                 with {} recorded votes (approver identity, time, comment).",
                t.holds, t.approved, t.refused_approvals, t.votes
            ),
            artifacts: &["events.jsonl", "transcripts/"],
        },
        Control {
            id: "CC6.3",
            framework: "SOC 2",
            title: "Access based on roles and least privilege",
            evidence: format!(
                "{} statements allowed and {} denied, each by named policies; {} privileged \
                 (write, DDL, DCL, COPY) statements allowed.",
                t.statements_allowed, t.statements_denied, t.privileged_allowed
            ),
            artifacts: &["events.jsonl", "transcripts/"],
        },
        Control {
            id: "CC6.6",
            framework: "SOC 2",
            title: "Access from outside the system boundary restricted",
            evidence: format!(
                "Every session entered through the gateway, which holds the upstream credentials; \
                 client source addresses are recorded per session; {} denied connections.",
                t.connects_denied
            ),
            artifacts: &["sessions.jsonl", "events.jsonl"],
        },
        Control {
            id: "CC7.2",
            framework: "SOC 2",
            title: "System components monitored for anomalies",
            evidence: format!(
                "{denials} denied operations, {} failed authentications, {} gateway notices \
                 (plugin faults, upstream errors, recording outages); the record is {signing}.",
                t.auth_failures, t.notices
            ),
            artifacts: &["events.jsonl", "events.ocsf.jsonl", "checkpoints.jsonl"],
        },
        Control {
            id: "A.5.15",
            framework: "ISO/IEC 27001:2022",
            title: "Access control",
            evidence: format!(
                "Rules enforced per connection and per statement: {} connections and {} statements \
                 decided, each decision citing its policy ids.",
                t.connects_allowed + t.connects_denied,
                t.statements_allowed + t.statements_denied
            ),
            artifacts: &["events.jsonl"],
        },
        Control {
            id: "A.5.18",
            framework: "ISO/IEC 27001:2022",
            title: "Access rights",
            evidence: format!(
                "Identities with their groups as presented at each session start; {} approval \
                 requests with their outcome and approvers.",
                t.holds
            ),
            artifacts: &["sessions.jsonl", "events.jsonl"],
        },
        Control {
            id: "A.8.2",
            framework: "ISO/IEC 27001:2022",
            title: "Privileged access rights",
            evidence: format!(
                "{} privileged statements allowed, {} held for approval, every one attributable to \
                 an identity (and, for agents, the person they act for).",
                t.privileged_allowed, t.holds
            ),
            artifacts: &["events.jsonl", "transcripts/"],
        },
        Control {
            id: "A.8.11",
            framework: "ISO/IEC 27001:2022",
            title: "Data masking",
            evidence: format!(
                "{} values masked before they left the gateway ({}); {} masker faults (failed closed). \
                 Counts and entity types only: no masked value is in this bundle.",
                t.masked_values,
                if t.masked_by_entity.is_empty() {
                    "none".to_string()
                } else {
                    t.masked_by_entity
                        .iter()
                        .map(|(k, v)| format!("{k}: {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                t.mask_faults
            ),
            artifacts: &["events.jsonl"],
        },
        Control {
            id: "A.8.15",
            framework: "ISO/IEC 27001:2022",
            title: "Logging",
            evidence: format!(
                "{} events, recorded durably before each operation ran; the record is {signing}.",
                t.events
            ),
            artifacts: &["events.jsonl", "checkpoints.jsonl", "manifest.json"],
        },
        Control {
            id: "A.8.16",
            framework: "ISO/IEC 27001:2022",
            title: "Monitoring activities",
            evidence: format!(
                "{denials} denials ({} by plugins), {} failed authentications and {} notices, \
                 with time, identity and source.",
                t.plugin_denials, t.auth_failures, t.notices
            ),
            artifacts: &["events.jsonl", "events.ocsf.jsonl", "sessions.jsonl"],
        },
    ]
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;color:#1b1b1b;max-width:80rem}\
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}table{border-collapse:collapse;width:100%}\
th,td{border:1px solid #ccc;padding:.35rem .5rem;text-align:left;vertical-align:top;font-size:.9rem}\
th{background:#f3f3f3}code,pre{font-family:ui-monospace,monospace;font-size:.85rem}\
pre{background:#f6f6f6;padding:.75rem;overflow-x:auto}.num{text-align:right}";

/// Render `report.html`.
pub(crate) fn render(r: &ReportInput<'_>) -> String {
    let t = r.tally;
    let time = |us: i64| {
        if us == i64::MIN {
            "the beginning of the log".to_string()
        } else if us == i64::MAX {
            "the end of the log".to_string()
        } else {
            rfc3339_micros(us)
        }
    };
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>Gatehouse evidence bundle</title><style>{STYLE}</style></head><body>\n"
    );
    let _ = writeln!(h, "<h1>Gatehouse evidence bundle</h1>");
    let _ = writeln!(
        h,
        "<table id=\"summary\"><tr><th>Window</th><td>{} to {}</td></tr>\
         <tr><th>Exported</th><td>{}</td></tr>\
         <tr><th>Events</th><td>{} to {} ({} in the window)</td></tr>\
         <tr><th>Chain head</th><td><code>{}</code></td></tr>\
         <tr><th>Signed checkpoints</th><td>{} (keys: {})</td></tr>\
         <tr><th>Sessions</th><td>{}</td></tr></table>",
        esc(&time(r.from_us)),
        esc(&time(r.to_us)),
        esc(&rfc3339_micros(r.created_us)),
        r.first_seq,
        r.last_seq,
        t.events,
        esc(r.head_hash.as_deref().unwrap_or("none")),
        r.checkpoints,
        esc(&if r.checkpoint_keys.is_empty() {
            "none".to_string()
        } else {
            r.checkpoint_keys.join(", ")
        }),
        r.sessions.len()
    );

    let _ = writeln!(
        h,
        "<h2>How to verify this bundle</h2>\
         <p>With only the gateway's public checkpoint key, on any machine:</p>\
         <pre>gatehouse audit verify --bundle . --key audit-signing.pub.pem --strict</pre>\
         <p>Exit code 0: every event is intact, in order, linked and covered by a verified signed \
         checkpoint, and every file matches the signed manifest. 1: tampering found (the output \
         names the event or file). 3: something could not be checked (e.g. the key was not \
         given). This page itself is listed, with its SHA-256, in <code>manifest.json</code>.</p>"
    );

    let _ = writeln!(
        h,
        "<h2>Controls</h2><table id=\"controls\"><tr><th>Control</th><th>Framework</th>\
         <th>Objective</th><th>Evidence in this bundle</th><th>Artifacts</th></tr>"
    );
    let signing = match (r.checkpoints, r.unsigned_events) {
        (0, _) => "hash-chained but covered by no signed checkpoint (the gateway had no signing key \
                   configured for these events): its internal consistency can be checked, its \
                   origin cannot"
            .to_string(),
        (n, 0) => format!(
            "hash-chained and covered by {n} Ed25519-signed checkpoint{}, verifiable offline \
             with the public key",
            if n == 1 { "" } else { "s" }
        ),
        (n, u) => format!(
            "hash-chained and covered by {n} Ed25519-signed checkpoint{}, except the last {u} \
             events, which no checkpoint covered yet and which the hash chain alone protects",
            if n == 1 { "" } else { "s" }
        ),
    };
    for c in controls(t, r.sessions.len(), &signing) {
        let artifacts: Vec<String> = c
            .artifacts
            .iter()
            .map(|a| format!("<a href=\"{0}\"><code>{0}</code></a>", esc(a)))
            .collect();
        let _ = writeln!(
            h,
            "<tr id=\"control-{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&c.id.replace('.', "-")),
            esc(c.id),
            esc(c.framework),
            esc(c.title),
            esc(&c.evidence),
            artifacts.join(" ")
        );
    }
    let _ = writeln!(h, "</table>");

    let _ = writeln!(
        h,
        "<h2>Sessions</h2><table id=\"sessions\"><tr><th>Session</th><th>Identity</th><th>Target</th>\
         <th>Source</th><th>Start</th><th>End</th><th class=\"num\">Operations</th>\
         <th class=\"num\">Denied</th></tr>"
    );
    for s in r.sessions {
        let link = r
            .transcripts
            .get(&s.session_id)
            .map(|f| format!("<a href=\"{}\">{}</a>", esc(f), esc(&s.session_id)))
            .unwrap_or_else(|| esc(&s.session_id));
        let who = match (&s.principal, &s.user) {
            (Some(p), _) => esc(p),
            (None, Some(u)) => format!("authentication failed as {}", esc(u)),
            (None, None) => "unknown".to_string(),
        };
        let _ = writeln!(
            h,
            "<tr><td>{link}</td><td>{who}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(&s.target),
            esc(&s.source),
            esc(&rfc3339_micros(s.start_us)),
            esc(&match (s.end_us, &s.end_reason) {
                (Some(e), Some(reason)) => format!("{} ({reason})", rfc3339_micros(e)),
                (Some(e), None) => rfc3339_micros(e),
                _ => "open at export".to_string(),
            }),
            s.ops,
            s.denied
        );
    }
    let _ = writeln!(h, "</table>");

    let _ = writeln!(
        h,
        "<h2>Approvals</h2><table id=\"approvals\"><tr><th>Time</th><th>Session</th><th>Request</th>\
         <th>Outcome</th><th>Votes</th></tr>"
    );
    if t.approvals.is_empty() {
        let _ = writeln!(
            h,
            "<tr><td colspan=\"5\">No approval request ended in this window.</td></tr>"
        );
    }
    for (time_us, session, request, state, votes) in &t.approvals {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            esc(&rfc3339_micros(*time_us)),
            esc(session),
            esc(request),
            esc(state),
            esc(&votes.join("; "))
        );
    }
    let _ = writeln!(h, "</table>");

    let _ = writeln!(
        h,
        "<h2>Denials by policy</h2><table id=\"denials\"><tr><th>Policy</th><th class=\"num\">Denials</th></tr>"
    );
    if t.denials_by_policy.is_empty() {
        let _ = writeln!(
            h,
            "<tr><td colspan=\"2\">No policy denied anything in this window.</td></tr>"
        );
    }
    for (id, n) in &t.denials_by_policy {
        let _ = writeln!(
            h,
            "<tr><td><code>{}</code></td><td class=\"num\">{n}</td></tr>",
            esc(id)
        );
    }
    let _ = writeln!(h, "</table>\n</body></html>");
    h
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn recorded_text_cannot_inject_markup() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\"\u{1b}[2J"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;\\u{1b}[2J"
        );
    }
}
