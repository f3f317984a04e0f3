//! Just-in-time access end to end: a policy that admits engineers to production only with a
//! grant, `gatehouse access request` by the engineer, approval by a DBA with
//! `gatehouse approvals approve`, a session under the grant, and the grant expiring mid-session.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Output;
use std::time::Duration;

use gatehouse_conformance::{
    Harness, JIT_GRANT_POLICY, Options, db_message, output_text, repo_policies_with,
};

fn access(h: &Harness, user: &str, args: &[&str]) -> Output {
    h.cli_at(h.admin.unwrap(), "access", user, args).unwrap()
}

/// `gatehouse access request` by bob for target `app`.
fn request(h: &Harness, duration: &str, reason: &str) -> Output {
    access(
        h,
        "bob",
        &[
            "request",
            "--target",
            "app",
            "--duration",
            duration,
            "--reason",
            reason,
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_opens_production_for_its_duration_and_no_longer() {
    let dir = tempfile::tempdir().unwrap();
    let policies = repo_policies_with(&dir.path().join("policies"), "jit.cedar", JIT_GRANT_POLICY).unwrap();
    let h = Harness::start_with(Options {
        policies,
        extra_config: "\n[access]\napprovers = [\"dba\"]\nmax_duration_secs = 3600\n",
        ..Options::default()
    })
    .unwrap();

    // bob (engineering) without a grant: refused, naming the policy.
    let err = h.connect("bob", "app").await.unwrap_err();
    assert!(
        format!("{err:#}").contains("engineering-prod-needs-grant"),
        "{err:#}"
    );

    // Too long a grant is refused outright.
    let out = request(&h, "2h", "INC-7");
    assert!(
        !out.status.success() && output_text(&out).contains("duration_secs"),
        "{}",
        output_text(&out)
    );

    let out = request(&h, "20s", "INC-7 disk full");
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    let id = text.split(':').next().unwrap().trim().to_string();
    assert!(id.starts_with("ap-"), "{text}");
    // Still pending: still refused.
    assert!(h.connect("bob", "app").await.is_err());

    // bob cannot approve it (not a DBA, and it is his own); alice can.
    let out = h.approvals("bob", &["approve", &id]).unwrap();
    assert!(!out.status.success(), "{}", output_text(&out));
    let out = h.approvals("alice", &["show", &id]).unwrap();
    let shown = output_text(&out);
    assert!(
        shown.contains("access to app for 20s") && shown.contains("INC-7 disk full"),
        "{shown}"
    );
    let granted_at = std::time::Instant::now();
    let out = h
        .approvals("alice", &["approve", &id, "--comment", "ok for INC-7"])
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));

    // The grant shows up for bob, and admits him.
    let mut listed = String::new();
    for _ in 0..50 {
        listed = output_text(&access(&h, "bob", &["grants"]));
        if listed.contains(&id) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        listed.contains(&id) && listed.contains("user:bob on app"),
        "{listed}"
    );
    let bob = h.connect("bob", "app").await.unwrap();
    let row = bob.query_one("SELECT 7::int4", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);

    // Past its end the session ends at its next statement, and new sessions are refused.
    let left = granted_at + Duration::from_secs(21);
    tokio::time::sleep_until(left.into()).await;
    let err = bob.query_one("SELECT 8::int4", &[]).await.unwrap_err();
    let msg = db_message(&err);
    assert!(
        msg.contains(&format!("access grant {id}")) && msg.contains("expired"),
        "{msg}"
    );
    let err = h.connect("bob", "app").await.unwrap_err();
    assert!(
        format!("{err:#}").contains("engineering-prod-needs-grant"),
        "{err:#}"
    );
    assert!(output_text(&access(&h, "bob", &["grants"])).contains("no active grants"));

    // The record: the request's own session tells the story, and bob's session names its grant.
    std::thread::sleep(Duration::from_millis(500));
    let story = h.audit_show(&format!("access-{id}")).unwrap();
    for step in [
        "access requested",
        "APPROVE request",
        "access granted",
        "access expired",
    ] {
        assert!(story.contains(step), "no `{step}` in:\n{story}");
    }
    assert!(
        story.contains("INC-7 disk full") && story.contains("ok for INC-7"),
        "{story}"
    );
    let sessions = h.audit_sessions().unwrap();
    let with_grant: Vec<String> = sessions
        .iter()
        .filter(|s| s["principal"].as_str() == Some("user:bob"))
        .map(|s| h.audit_show(s["session_id"].as_str().unwrap()).unwrap())
        .filter(|t| t.contains("SELECT 7::int4"))
        .collect();
    assert_eq!(with_grant.len(), 1, "{sessions:?}");
    assert!(
        with_grant[0].contains(&format!("access grant {id}")),
        "{}",
        with_grant[0]
    );
}
