//! Events in the Open Cybersecurity Schema Framework (OCSF 1.3.0), the shape SIEMs ingest.
//!
//! | recorded event | OCSF class | activity |
//! |---|---|---|
//! | `session_start` | Authentication (3002) | Logon (1), success |
//! | `auth_failure` | Authentication (3002) | Logon (1), failure, the reason in `status_detail` |
//! | `session_end` | Authentication (3002) | Logoff (2) |
//! | `decision` of a statement | Datastore Activity (6005) | Query (4) for SELECT, Create (6) INSERT, Update (2) UPDATE/MERGE, Delete (7) DELETE, Other (99) DDL and the rest; disposition Allowed (1) / Blocked (2), or Delayed (14) while held for approval (its request in `status_detail`) |
//! | `decision` of a connection | Datastore Activity (6005) | Connect (3) |
//! | `access` `granted` / `expired` | User Access Management (3005) | Assign Privileges (1) / Revoke Privileges (2) |
//!
//! Every event keeps its place in the tamper-evident log: `metadata.uid` is its sequence
//! number, `metadata.correlation_uid` its session, and `unmapped.gatehouse` holds its hash, the
//! deciding policy ids and whom an agent acted for. Events of other kinds (results, masking
//! findings, votes, notices) have no OCSF class here and are left out; the JSON-lines export
//! has them all.

use serde_json::{Value, json};

use crate::event::{Event, EventBody};
use crate::store::SessionSummary;

/// The OCSF schema version these events follow.
pub const OCSF_VERSION: &str = "1.3.0";

fn base(ev: &Event, class_uid: u32, class_name: &str, category: (u32, &str), activity: (u32, &str)) -> Value {
    json!({
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category.0,
        "category_name": category.1,
        "activity_id": activity.0,
        "activity_name": activity.1,
        "type_uid": u64::from(class_uid) * 100 + u64::from(activity.0),
        "type_name": format!("{class_name}: {}", activity.1),
        "time": ev.time_us.div_euclid(1000),
        "severity_id": 1,
        "severity": "Informational",
        "metadata": {
            "version": OCSF_VERSION,
            "uid": ev.seq.to_string(),
            "correlation_uid": ev.session_id,
            "log_name": "gatehouse-audit",
            "product": {
                "name": "Gatehouse",
                "vendor_name": "Gatehouse",
                "version": env!("CARGO_PKG_VERSION"),
            },
        },
        "unmapped": {
            "gatehouse": {
                "seq": ev.seq,
                "hash": ev.hash,
                "kind": kind_name(&ev.body),
                "on_behalf_of": ev.on_behalf_of,
                "actor_chain": ev.actor_chain,
            },
        },
    })
}

fn kind_name(body: &EventBody) -> &'static str {
    crate::search::kind_name(body)
}

/// `agent:name` / `user:name` → an OCSF user (`type_id` 99 Other for agents: OCSF has no
/// non-human user type besides System).
fn user(principal: Option<&str>) -> Value {
    let p = principal.unwrap_or("");
    let (kind, name) = p.split_once(':').unwrap_or(("", p));
    let (type_id, type_name) = match kind {
        "user" => (1, "User"),
        _ => (99, "Agent"),
    };
    json!({ "name": name, "uid": p, "type_id": type_id, "type": type_name })
}

fn endpoint(source: &str) -> Value {
    match source.parse::<std::net::SocketAddr>() {
        Ok(a) => json!({ "ip": a.ip().to_string(), "port": a.port() }),
        Err(_) => json!({ "ip": source }),
    }
}

fn actor(ev: &Event) -> Value {
    json!({
        "user": user(ev.principal.as_deref()),
        "session": { "uid": ev.session_id },
    })
}

fn set(v: &mut Value, key: &str, value: Value) {
    if let Some(o) = v.as_object_mut() {
        o.insert(key.to_string(), value);
    }
}

/// The OCSF form of `ev`; `session` is its session's summary (for the target and the client
/// address of decisions). `None` for kinds OCSF has no class for here.
pub fn to_ocsf(ev: &Event, session: Option<&SessionSummary>) -> Option<Value> {
    const IAM: (u32, &str) = (3, "Identity & Access Management");
    const APP: (u32, &str) = (6, "Application Activity");
    match &ev.body {
        EventBody::SessionStart {
            protocol,
            source,
            target,
            auth_method,
            principal,
            auth,
            ..
        } => {
            let mut v = base(ev, 3002, "Authentication", IAM, (1, "Logon"));
            set(&mut v, "status_id", json!(1));
            set(&mut v, "status", json!("Success"));
            set(&mut v, "user", user(ev.principal.as_deref()));
            set(&mut v, "actor", actor(ev));
            set(&mut v, "auth_protocol", json!(auth_method));
            set(&mut v, "is_mfa", json!(auth.as_ref().is_some_and(|a| a.mfa)));
            set(&mut v, "src_endpoint", endpoint(source));
            set(&mut v, "service", json!({ "name": target }));
            set(&mut v, "dst_endpoint", json!({ "svc_name": protocol }));
            let mut s = json!({ "uid": ev.session_id, "created_time": ev.time_us.div_euclid(1000) });
            if let Some(exp) = auth.as_ref().and_then(|a| a.expires_at) {
                set(&mut s, "expiration_time", json!(exp.saturating_mul(1000)));
            }
            if let Some(iss) = auth.as_ref().and_then(|a| a.issuer.clone()) {
                set(&mut s, "issuer", json!(iss));
            }
            set(&mut v, "session", s);
            if !principal.groups.is_empty() {
                set(
                    &mut v["user"],
                    "groups",
                    json!(
                        principal
                            .groups
                            .iter()
                            .map(|g| json!({ "name": g }))
                            .collect::<Vec<_>>()
                    ),
                );
            }
            Some(v)
        }
        EventBody::AuthFailure {
            protocol,
            source,
            user: name,
            target,
            reason,
        } => {
            let mut v = base(ev, 3002, "Authentication", IAM, (1, "Logon"));
            set(&mut v, "status_id", json!(2));
            set(&mut v, "status", json!("Failure"));
            set(&mut v, "status_detail", json!(reason));
            set(&mut v, "severity_id", json!(3));
            set(&mut v, "severity", json!("Medium"));
            set(&mut v, "user", json!({ "name": name }));
            set(&mut v, "src_endpoint", endpoint(source));
            set(&mut v, "service", json!({ "name": target }));
            set(&mut v, "dst_endpoint", json!({ "svc_name": protocol }));
            Some(v)
        }
        EventBody::SessionEnd { reason, ops, .. } => {
            let mut v = base(ev, 3002, "Authentication", IAM, (2, "Logoff"));
            set(&mut v, "status_id", json!(1));
            set(&mut v, "status", json!("Success"));
            set(&mut v, "status_detail", json!(reason));
            set(&mut v, "user", user(ev.principal.as_deref()));
            set(&mut v, "actor", actor(ev));
            set(&mut v, "session", json!({ "uid": ev.session_id }));
            set(&mut v["unmapped"]["gatehouse"], "ops", json!(ops));
            Some(v)
        }
        EventBody::Decision {
            op,
            action,
            statement,
            verdict,
            hold,
            approval,
            ..
        } => {
            use gatehouse_core::StatementKind as K;
            let activity = match (action.as_str(), statement.as_ref().map(|s| s.kind())) {
                ("connect", _) => (3, "Connect"),
                (_, Some(K::Select)) => (4, "Query"),
                (_, Some(K::Insert)) => (6, "Create"),
                (_, Some(K::Update | K::Merge)) => (2, "Update"),
                (_, Some(K::Delete)) => (7, "Delete"),
                _ => (99, "Other"),
            };
            let mut v = base(ev, 6005, "Datastore Activity", APP, activity);
            let (disposition, status) = match (verdict.is_allow(), hold.is_some()) {
                // OCSF's "Delayed": the operation waits (for approvers) and is neither allowed
                // nor blocked yet; the decision that ends the hold is a second event.
                (_, true) => ((14, "Delayed"), (99, "Other")),
                (true, false) => ((1, "Allowed"), (1, "Success")),
                (false, false) => ((2, "Blocked"), (2, "Failure")),
            };
            set(&mut v, "disposition_id", json!(disposition.0));
            set(&mut v, "disposition", json!(disposition.1));
            set(&mut v, "status_id", json!(status.0));
            set(&mut v, "status", json!(status.1));
            if let Some(h) = hold {
                set(
                    &mut v,
                    "status_detail",
                    json!(format!("held for approval (request {}): {}", h.request, h.reason)),
                );
            } else if let gatehouse_core::Verdict::Deny { reason, .. } = verdict {
                set(&mut v, "status_detail", json!(reason));
                set(&mut v, "severity_id", json!(2));
                set(&mut v, "severity", json!("Low"));
            }
            set(&mut v, "actor", actor(ev));
            if let Some(s) = session {
                set(
                    &mut v,
                    "database",
                    json!({ "name": s.target, "type": s.protocol }),
                );
                set(&mut v, "src_endpoint", endpoint(&s.source));
            }
            if let Some(s) = statement {
                set(&mut v, "query_info", json!({ "query_string": s.text }));
            }
            if let Some(first) = verdict.policy_ids().first() {
                set(&mut v, "policy", json!({ "uid": first, "name": first }));
            }
            let g = &mut v["unmapped"]["gatehouse"];
            set(g, "op", json!(op));
            set(g, "policy_ids", json!(verdict.policy_ids()));
            if let Some(h) = hold {
                set(g, "approval_request", json!(h.request));
            }
            if let Some(a) = approval {
                set(g, "approval", json!(a));
            }
            Some(v)
        }
        EventBody::Access {
            request,
            step,
            target,
            reason,
            expires_us,
            ..
        } => {
            let activity = match step.as_str() {
                "granted" => (1, "Assign Privileges"),
                "expired" => (2, "Revoke Privileges"),
                _ => return None,
            };
            let mut v = base(ev, 3005, "User Access Management", IAM, activity);
            set(&mut v, "status_id", json!(1));
            set(&mut v, "status", json!("Success"));
            set(&mut v, "user", user(ev.principal.as_deref()));
            set(&mut v, "privileges", json!([format!("access to {target}")]));
            set(&mut v, "resource", json!({ "name": target, "type": "target" }));
            set(&mut v, "message", json!(reason));
            let g = &mut v["unmapped"]["gatehouse"];
            set(g, "request", json!(request));
            set(g, "expires", json!(expires_us.map(|t| t.div_euclid(1000))));
            Some(v)
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use gatehouse_core::{SqlStatement, StatementKind, Verdict};

    fn event(body: EventBody) -> Event {
        Event {
            seq: 42,
            time_us: 1_700_000_000_123_456,
            session_id: "s1".into(),
            principal: Some("agent:copilot".into()),
            on_behalf_of: Some("alice".into()),
            actor_chain: Vec::new(),
            body,
            prev_hash: String::new(),
            hash: "ab".repeat(32),
        }
    }

    fn common(v: &Value, class: u64, activity: u64) {
        assert_eq!(v["class_uid"], class);
        assert_eq!(v["activity_id"], activity);
        assert_eq!(v["type_uid"], class * 100 + activity);
        assert_eq!(v["category_uid"], class / 1000);
        assert_eq!(v["time"], 1_700_000_000_123i64);
        assert_eq!(v["metadata"]["version"], OCSF_VERSION);
        assert_eq!(v["metadata"]["uid"], "42");
        assert_eq!(v["metadata"]["product"]["name"], "Gatehouse");
        assert_eq!(v["unmapped"]["gatehouse"]["on_behalf_of"], "alice");
        assert!(v["severity_id"].is_u64());
    }

    #[test]
    fn a_denied_delete_is_a_blocked_datastore_delete_naming_its_policy() {
        let stmt = SqlStatement {
            text: "DELETE FROM orders".into(),
            kind: Some(StatementKind::Delete),
            ..SqlStatement::default()
        };
        let ev = event(EventBody::Decision {
            op: 3,
            action: "query".into(),
            statement: Some(stmt),
            verdict: Verdict::Deny {
                reason: "no deletes".into(),
                policy_ids: vec!["agents-no-delete".into()],
            },
            policy_generation: 1,
            errors: Vec::new(),
            plugins: Vec::new(),
            hold: None,
            approval: None,
            unheld: None,
        });
        let v = to_ocsf(&ev, None).unwrap();
        common(&v, 6005, 7);
        assert_eq!(v["disposition_id"], 2);
        assert_eq!(v["status_id"], 2);
        assert_eq!(v["policy"]["uid"], "agents-no-delete");
        assert_eq!(v["query_info"]["query_string"], "DELETE FROM orders");
        assert_eq!(v["actor"]["user"]["name"], "copilot");
    }

    #[test]
    fn a_held_statement_is_delayed_and_its_approval_allowed() {
        let stmt = SqlStatement {
            text: "DELETE FROM orders WHERE id = 1".into(),
            kind: Some(StatementKind::Delete),
            ..SqlStatement::default()
        };
        let decision = |hold, approval, verdict| {
            event(EventBody::Decision {
                op: 3,
                action: "query".into(),
                statement: Some(stmt.clone()),
                verdict,
                policy_generation: 1,
                errors: Vec::new(),
                plugins: Vec::new(),
                hold,
                approval,
                unheld: None,
            })
        };
        let held = decision(
            Some(Box::new(crate::event::HoldRecord {
                request: "ap-7".into(),
                approvers: vec!["dba".into()],
                min_approvals: 1,
                timeout_secs: 60,
                reason: "deletes need a DBA".into(),
                parameters: Vec::new(),
            })),
            None,
            Verdict::Deny {
                reason: "deletes need a DBA".into(),
                policy_ids: vec!["deletes-need-approval".into()],
            },
        );
        let v = to_ocsf(&held, None).unwrap();
        common(&v, 6005, 7);
        assert_eq!(v["disposition_id"], 14);
        assert_eq!(v["disposition"], "Delayed");
        assert_eq!(v["status_id"], 99);
        assert_eq!(
            v["status_detail"],
            "held for approval (request ap-7): deletes need a DBA"
        );
        assert_eq!(v["unmapped"]["gatehouse"]["approval_request"], "ap-7");
        let approved = decision(
            None,
            Some(Box::new(crate::event::ApprovalRecord {
                request: "ap-7".into(),
                state: "approved".into(),
                votes: Vec::new(),
                end_reason: None,
            })),
            Verdict::Allow {
                policy_ids: vec!["approved-deletes".into()],
            },
        );
        let v = to_ocsf(&approved, None).unwrap();
        assert_eq!(v["disposition_id"], 1);
        assert_eq!(v["status_id"], 1);
        assert_eq!(v["unmapped"]["gatehouse"]["approval"]["state"], "approved");
    }

    #[test]
    fn logons_logoffs_and_grants() {
        let v = to_ocsf(
            &event(EventBody::AuthFailure {
                protocol: "postgres".into(),
                source: "10.0.0.7:5123".into(),
                user: "mallory".into(),
                target: "app".into(),
                reason: "bad password".into(),
            }),
            None,
        )
        .unwrap();
        common(&v, 3002, 1);
        assert_eq!(v["status_id"], 2);
        assert_eq!(v["src_endpoint"]["ip"], "10.0.0.7");
        let v = to_ocsf(
            &event(EventBody::SessionEnd {
                reason: "client closed".into(),
                ops: 4,
                duration_us: 1,
            }),
            None,
        )
        .unwrap();
        common(&v, 3002, 2);
        let v = to_ocsf(
            &event(EventBody::Access {
                request: "ap-1".into(),
                step: "granted".into(),
                target: "app".into(),
                duration_secs: 60,
                reason: "INC-1".into(),
                expires_us: Some(1),
            }),
            None,
        )
        .unwrap();
        common(&v, 3005, 1);
        assert!(
            to_ocsf(
                &event(EventBody::Notice {
                    level: "info".into(),
                    message: "x".into()
                }),
                None
            )
            .is_none()
        );
    }
}
