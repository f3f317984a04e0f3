//! Approval holds, end to end: a real PostgreSQL, the real gateway binary, real `psql` and
//! `tokio-postgres` sessions, and approvers using the real `gatehouse approvals` CLI against the
//! gateway's admin API.
//!
//! The repository's policies say an agent's UPDATE on production needs a DBA's approval
//! (`agents-prod-update-needs-approval`, `@approvers("dba")`). In the demo config the agent
//! acts for alice (a DBA, who therefore may not approve it); dana is the other DBA.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gatehouse_conformance::{Harness, Options, db_message, repo_policies, sqlstate};

fn start(timeout_secs: u64) -> Harness {
    let extra = format!("\n[approvals]\ntimeout_secs = {timeout_secs}\n");
    Harness::start_with(Options {
        policies: repo_policies(),
        extra_config: &extra,
        ..Options::default()
    })
    .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `gatehouse approvals list --json` as `user`.
fn pending(h: &Harness, user: &str) -> Vec<serde_json::Value> {
    let out = h.approvals(user, &["list", "--json"]).unwrap();
    assert!(out.status.success(), "approvals list: {}", text(&out.stderr));
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
}

/// Wait (bounded) until `user` sees exactly one pending request; return it.
fn wait_for_request(h: &Harness, user: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = pending(h, user);
        if p.len() == 1 {
            return p.into_iter().next().unwrap();
        }
        assert!(p.len() < 2, "more than one pending request: {p:?}");
        assert!(Instant::now() < deadline, "no approval request appeared");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wait (bounded) until request `id` is in `state`, as dana sees it.
fn wait_for_state(h: &Harness, id: &str, state: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = h.approvals("dana", &["show", id, "--json"]).unwrap();
        assert!(out.status.success(), "approvals show: {}", text(&out.stderr));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if r["state"] == state {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "request {id} never became {state}: {r}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `psql -c SQL` as ai-agent over TLS, running in the background.
fn psql_bg(h: &Harness, sql: &str) -> Child {
    h.agent_psql_bg(h.addr, sql).unwrap()
}

fn wait_child(c: Child) -> (i32, String, String) {
    gatehouse_conformance::wait_child(c).unwrap()
}

/// `SELECT count(*) FROM orders` on `c`: proof that a session still works.
async fn orders(c: &tokio_postgres::Client) -> i64 {
    c.query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0)
}

async fn order_status(h: &Harness, id: i64) -> String {
    let c = h.connect("alice", "app").await.unwrap();
    c.query_one("SELECT status FROM orders WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0)
}

fn session_of(h: &Harness, user: &str, needle: &str) -> String {
    for s in h.audit_sessions().unwrap() {
        let id = s["session_id"].as_str().unwrap_or_default().to_string();
        if s["principal"].as_str() == Some(user) {
            let t = h.audit_show(&id).unwrap();
            if t.contains(needle) {
                return t;
            }
        }
    }
    panic!("no session of {user} mentions {needle}");
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_update_is_held_approved_through_the_cli_and_committed() {
    let h = start(120);
    let sql = "UPDATE orders SET status = 'approved-by-dana' WHERE id = 1";
    let psql = psql_bg(&h, sql);
    let req = wait_for_request(&h, "dana");
    let id = req["id"].as_str().unwrap().to_string();
    assert_eq!(req["operation"], sql, "the approver sees the exact statement");
    assert_eq!(req["requester"], "agent:ai-agent");
    assert_eq!(req["approvers"], serde_json::json!(["dba"]));
    assert_eq!(req["target"], "app");

    // The agent's other sessions, and the rest of the gateway, go on meanwhile.
    let other = h.connect("ai-agent", "app").await.unwrap();
    assert!(orders(&other).await > 0);
    assert_ne!(
        order_status(&h, 1).await,
        "approved-by-dana",
        "nothing ran before approval"
    );

    // The human the agent acts for, the agent itself and a non-DBA cannot decide it.
    let out = h.approvals("alice", &["approve", &id]).unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("you may not decide your own request"),
        "{}",
        text(&out.stderr)
    );
    let out = h.approvals("ai-agent", &["approve", &id]).unwrap();
    assert!(
        text(&out.stderr).contains("only people may decide"),
        "{}",
        text(&out.stderr)
    );
    let out = h.approvals("bob", &["approve", &id]).unwrap();
    assert!(
        text(&out.stderr).contains("no approval request"),
        "{}",
        text(&out.stderr)
    );
    assert!(pending(&h, "bob").is_empty(), "bob sees nothing");

    // `show` gives the approver what they need to decide.
    let out = h.approvals("dana", &["show", &id]).unwrap();
    let shown = text(&out.stdout);
    assert!(
        shown.contains(sql) && shown.contains("agents-prod-update-needs-approval"),
        "{shown}"
    );
    assert!(shown.contains("on behalf of alice"), "{shown}");

    let out = h
        .approvals("dana", &["approve", &id, "--comment", "ticket OPS-1"])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("approved"), "{}", text(&out.stdout));

    let (code, stdout, stderr) = wait_child(psql);
    assert_eq!(code, 0, "psql: {stderr}");
    assert!(stdout.contains("UPDATE 1"), "{stdout}");
    assert!(
        stderr.contains("NOTICE:") && stderr.contains(&id) && stderr.contains("dba"),
        "the client was told what it waits for: {stderr}"
    );
    assert_eq!(order_status(&h, 1).await, "approved-by-dana");

    // A second vote on a decided request is refused.
    let out = h.approvals("dana", &["deny", &id]).unwrap();
    assert!(
        text(&out.stderr).contains("already approved"),
        "{}",
        text(&out.stderr)
    );

    // The record links every step: the hold, the vote, the decision after approval, the result.
    let t = session_of(&h, "agent:ai-agent", &id);
    assert!(t.contains(&format!("HOLD request {id}")), "{t}");
    assert!(
        t.contains(&format!("APPROVE request {id} by user:dana: \"ticket OPS-1\"")),
        "{t}"
    );
    assert!(t.contains("ALLOW  policies: agents-prod-update-approved"), "{t}");
    assert!(t.contains(&format!("after request {id} approved")), "{t}");
    assert!(t.contains("UPDATE 1"), "{t}");
    let verify = h.audit_verify(&[]).unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn denial_fails_the_statement_and_the_session_goes_on() {
    let h = start(120);
    let c = h.connect("ai-agent", "app").await.unwrap();
    let before = order_status(&h, 2).await;
    // Extended protocol, bound parameters: the held Execute runs exactly the bound portal.
    // A SELECT pipelined behind the held UPDATE waits in the gateway's buffer, then runs.
    let held = tokio::spawn(async move {
        let (r, next) = tokio::join!(
            c.execute(
                "UPDATE orders SET status = $1 WHERE id = $2",
                &[&"denied-x", &2i64]
            ),
            c.query_one("SELECT 40 + 2", &[]),
        );
        assert_eq!(
            next.unwrap().get::<_, i32>(0),
            42,
            "the pipelined statement ran after the denial"
        );
        (c, r)
    });
    let req = wait_for_request(&h, "dana");
    let id = req["id"].as_str().unwrap().to_string();
    // The approver sees the bound values (tokio-postgres binds in binary: text reads as text,
    // the int8 in hex).
    assert_eq!(
        req["operation"],
        "UPDATE orders SET status = $1 WHERE id = $2\n-- bound parameters: $1 = 'denied-x', $2 = <binary 8 bytes: 0x0000000000000002>"
    );
    let out = h
        .approvals("dana", &["deny", &id, "-c", "not during the freeze"])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (c, r) = held.await.unwrap();
    let e = r.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e}");
    let msg = db_message(&e);
    assert!(
        msg.contains(&format!(
            "approval request {id} was denied by user:dana: not during the freeze"
        )),
        "{msg}"
    );
    assert_eq!(order_status(&h, 2).await, before);
    // Same session, next statement.
    assert!(orders(&c).await > 0);
    let t = session_of(&h, "agent:ai-agent", &id);
    assert!(t.contains(&format!("DENY request {id} by user:dana")), "{t}");
    assert!(
        t.contains("bound parameters: $1 = 'denied-x', $2 = <binary 8 bytes: 0x0000000000000002>"),
        "{t}"
    );
    assert!(t.contains(&format!("after request {id} denied")), "{t}");
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_denies_and_disconnect_or_cancel_withdraws() {
    let h = start(3);
    // Nobody decides: the request times out and the statement is denied.
    let c = h.connect("ai-agent", "app").await.unwrap();
    let e = c
        .batch_execute("UPDATE orders SET status = 'timed-out' WHERE id = 3")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e}");
    let msg = db_message(&e);
    assert!(msg.contains("timed out: no decision within 3s"), "{msg}");
    assert_ne!(order_status(&h, 3).await, "timed-out");
    assert!(orders(&c).await > 0);

    // The client disconnects while waiting: the request is withdrawn and cannot be approved.
    let mut psql = psql_bg(&h, "UPDATE orders SET status = 'withdrawn' WHERE id = 4");
    let req = wait_for_request(&h, "dana");
    let id = req["id"].as_str().unwrap().to_string();
    psql.kill().unwrap();
    psql.wait().unwrap();
    let r = wait_for_state(&h, &id, "withdrawn");
    assert_eq!(r["end_reason"], "client disconnected");
    let out = h.approvals("dana", &["approve", &id]).unwrap();
    assert!(
        text(&out.stderr).contains("already withdrawn"),
        "{}",
        text(&out.stderr)
    );
    assert_ne!(order_status(&h, 4).await, "withdrawn");

    // A CancelRequest (psql's Ctrl-C) withdraws it and fails the statement as PostgreSQL does.
    let c = h.connect("ai-agent", "app").await.unwrap();
    let cancel = c.cancel_token();
    let held = tokio::spawn(async move {
        let r = c
            .batch_execute("UPDATE orders SET status = 'canceled' WHERE id = 5")
            .await;
        (c, r)
    });
    let req = wait_for_request(&h, "dana");
    let id = req["id"].as_str().unwrap().to_string();
    cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (c, r) = held.await.unwrap();
    let e = r.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("57014"), "{e}");
    let r = wait_for_state(&h, &id, "withdrawn");
    assert_eq!(r["end_reason"], "canceled by the client");
    assert!(orders(&c).await > 0, "the session goes on after a cancel");
    assert_ne!(order_status(&h, 5).await, "canceled");
}

/// A webhook receiver: Python's standard-library HTTP server. It answers 503 to the first
/// `fail_first` requests and 204 to the rest, appending each of those to `log` as JSON lines.
struct Receiver {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

const RECEIVER: &str = r#"
import http.server, json, sys
log, fail_first = sys.argv[1], int(sys.argv[2])
seen = {"n": 0}
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        seen["n"] += 1
        if seen["n"] <= fail_first:
            self.send_response(503); self.end_headers(); return
        with open(log, "a") as f:
            f.write(json.dumps({"path": self.path, "signature": self.headers.get("x-gatehouse-signature"), "body": body.decode()}) + "\n")
        self.send_response(204); self.end_headers()
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

impl Receiver {
    fn start(dir: &std::path::Path, fail_first: u32) -> Receiver {
        let script = dir.join("receiver.py");
        std::fs::write(&script, RECEIVER).unwrap();
        let log = dir.join("received.jsonl");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(&log)
            .arg(fail_first.to_string())
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        Receiver {
            child,
            port: line.trim().parse().unwrap(),
            log,
        }
    }

    fn received(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Wait (bounded) for a message with `event` about request `id`.
    fn wait_for(&self, event: &str, id: &str) -> (serde_json::Value, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for m in self.received() {
                let body: serde_json::Value = serde_json::from_str(m["body"].as_str().unwrap()).unwrap();
                if body["event"] == event && body["request"]["id"] == id {
                    return (m.clone(), m["body"].as_str().unwrap().to_string());
                }
            }
            assert!(
                Instant::now() < deadline,
                "no {event} message for {id}: {:?}",
                self.received()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn approvers_are_notified_by_webhook_with_retries_and_failures_are_recorded() {
    use hmac::{Hmac, Mac};
    let dir = tempfile::tempdir().unwrap();
    // Its first answer is a 503: the notifier must retry.
    let receiver = Receiver::start(dir.path(), 1);
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let secret_file = dir.path().join("hook.secret");
    std::fs::write(&secret_file, "s3cret\n").unwrap();
    let extra = format!(
        r#"
[approvals]
timeout_secs = 120
[[approvals.webhook]]
url = "http://127.0.0.1:{port}/hooks/dba"
groups = ["dba"]
secret = {{ file = "{secret}" }}
[[approvals.webhook]]
url = "http://127.0.0.1:{dead_port}/unreachable"
format = "slack"
max_attempts = 2
[[approvals.webhook]]
url = "http://127.0.0.1:{port}/hooks/security"
groups = ["security"]
"#,
        port = receiver.port,
        secret = secret_file.display(),
    );
    let h = Harness::start_with(Options {
        extra_config: &extra,
        ..Options::default()
    })
    .unwrap();
    let psql = psql_bg(&h, "UPDATE orders SET status = 'notified' WHERE id = 6");
    let id = wait_for_request(&h, "dana")["id"].as_str().unwrap().to_string();

    let (msg, body) = receiver.wait_for("approval.requested", &id);
    assert_eq!(msg["path"], "/hooks/dba");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
    mac.update(body.as_bytes());
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(
        msg["signature"],
        expected.as_str(),
        "the body is signed with the secret"
    );
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body["request"]["operation"],
        "UPDATE orders SET status = 'notified' WHERE id = 6"
    );
    assert_eq!(
        body["approve"],
        format!("gatehouse approvals approve {id}").as_str()
    );

    let out = h.approvals("dana", &["approve", &id, "-c", "ok"]).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (code, _, stderr) = wait_child(psql);
    assert_eq!(code, 0, "{stderr}");
    let (_, body) = receiver.wait_for("approval.ended", &id);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["request"]["state"], "approved");
    assert_eq!(body["request"]["votes"][0]["approver"], "user:dana");
    assert!(
        receiver.received().iter().all(|m| m["path"] == "/hooks/dba"),
        "a webhook for another group hears nothing"
    );

    // Deliveries, the retried one and the one that never got through, are in the record; the
    // unreachable webhook never held anything up.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = session_of(&h, "agent:ai-agent", &id);
        let delivered = t.contains(&format!(
            "approval notification approval.requested for request {id} delivered to http://127.0.0.1:{} (attempt 2)",
            receiver.port
        ));
        let failed = t.contains(&format!(
            "approval notification approval.requested for request {id} to http://127.0.0.1:{dead_port} failed after 2 attempts"
        ));
        if delivered && failed {
            break;
        }
        assert!(Instant::now() < deadline, "deliveries not recorded:\n{t}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
