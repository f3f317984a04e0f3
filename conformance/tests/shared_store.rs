//! Two gateways behind one (imaginary) load balancer sharing approvals and grants through a
//! PostgreSQL store (`[store]`): a real throwaway PostgreSQL (TLS, SCRAM) holds the store's
//! tables, reached through a TCP switch so the test can cut it off; both gateways are the real
//! binary; clients are real `psql` and `tokio-postgres`; approvers use the real CLI.
//!
//! - A statement held on gateway B is listed and approved through gateway A, and commits on B.
//! - A statement held on A is denied through B, and fails on A with the denial.
//! - An access request made through A, approved through B, opens a session on B; its expiry is
//!   recorded exactly once across both gateways' logs.
//! - With the store cut off, a statement needing approval is refused with the reason (nothing
//!   is held that nobody could release), sessions without holds go on, and once the store is
//!   back holds work again without a restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_conformance::{
    GatewayAddrs, Harness, JIT_GRANT_POLICY, Options, TcpSwitch, db_message, gatehouse_bin, output_text,
    repo_policies_with, spawn_gateway,
};

/// The second gateway: same config as the harness's but its own log.
struct Second {
    child: Child,
    addrs: GatewayAddrs,
    log: PathBuf,
}

impl Drop for Second {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn second_gateway(h: &Harness) -> Second {
    let text = std::fs::read_to_string(&h.setup.config_path).unwrap();
    let log = h.dir.path().join("log-b");
    let a_log = format!("dir = \"{}\"", h.setup.log_dir.display());
    assert!(text.contains(&a_log), "config names its log as expected");
    let text = text.replace(&a_log, &format!("dir = \"{}\"", log.display()));
    let path = h.dir.path().join("gatehouse-b.toml");
    std::fs::write(&path, text).unwrap();
    let (child, addrs) = spawn_gateway(&path).unwrap();
    Second { child, addrs, log }
}

/// `gatehouse approvals ARGS` as `user` against the admin API at `admin`.
fn approvals(h: &Harness, admin: SocketAddr, user: &str, args: &[&str]) -> Output {
    h.cli_at(admin, "approvals", user, args).unwrap()
}

/// `gatehouse access ARGS` as `user` against the admin API at `admin`.
fn access(h: &Harness, admin: SocketAddr, user: &str, args: &[&str]) -> Output {
    h.cli_at(admin, "access", user, args).unwrap()
}

/// The one pending request `user` sees through `admin`, waiting (bounded) for it.
fn wait_for_request(h: &Harness, admin: SocketAddr, user: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = approvals(h, admin, user, &["list", "--json"]);
        assert!(out.status.success(), "{}", output_text(&out));
        let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        if let [one] = list.as_slice() {
            return one.clone();
        }
        assert!(list.len() < 2, "more than one pending request: {list:?}");
        assert!(Instant::now() < deadline, "no approval request appeared");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `psql -c SQL` as ai-agent through the gateway at `pg`, in the background.
fn psql_bg(h: &Harness, pg: SocketAddr, sql: &str) -> Child {
    h.agent_psql_bg(pg, sql).unwrap()
}

fn wait_child(c: Child) -> (i32, String, String) {
    gatehouse_conformance::wait_child(c).unwrap()
}

fn order_status(h: &Harness, id: i64) -> String {
    h.setup
        .cluster
        .psql("app", &format!("SELECT status FROM orders WHERE id = {id}"))
        .unwrap()
        .trim()
        .to_string()
}

/// Every recorded session's transcript in the log at `log`.
fn transcripts(log: &Path) -> String {
    let log = log.display().to_string();
    let out = Command::new(gatehouse_bin())
        .args(["audit", "sessions", "--log", &log])
        .output()
        .unwrap();
    let mut all = String::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let s: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = s["session_id"].as_str().unwrap().to_string();
        let t = Command::new(gatehouse_bin())
            .args(["audit", "show", &id, "--log", &log])
            .output()
            .unwrap();
        all.push_str(&format!("== {id}\n{}\n", String::from_utf8_lossy(&t.stdout)));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_holds_votes_and_grants() {
    let dir = tempfile::tempdir().unwrap();
    let policies = repo_policies_with(&dir.path().join("policies"), "jit.cedar", JIT_GRANT_POLICY).unwrap();
    // The store: a database and role of their own in the harness's cluster, reached through a
    // switch; the connection string (with its password) is a secret file.
    let switch: Arc<Mutex<Option<TcpSwitch>>> = Arc::default();
    let sw_slot = switch.clone();
    let hook = move |setup: &gatehouse::demo::DemoSetup| -> anyhow::Result<()> {
        let c = &setup.cluster;
        c.psql(
            "postgres",
            "CREATE ROLE gatehouse_store LOGIN PASSWORD 'store-secret-7'",
        )?;
        c.psql(
            "postgres",
            "CREATE DATABASE gatehouse_state OWNER gatehouse_store",
        )?;
        let sw = TcpSwitch::start(SocketAddr::from(([127, 0, 0, 1], c.port)))?;
        let dsn_file = setup.config_path.with_file_name("store.dsn");
        std::fs::write(
            &dsn_file,
            format!(
                "host=127.0.0.1 port={} user=gatehouse_store password=store-secret-7 \
                 dbname=gatehouse_state sslmode=require connect_timeout=3",
                sw.addr.port()
            ),
        )?;
        let mut cfg = std::fs::read_to_string(&setup.config_path)?;
        cfg.push_str(&format!(
            "\n[store]\npostgres = {{ file = \"{}\" }}\nca_file = \"{}\"\ntimeout_ms = 3000\n",
            dsn_file.display(),
            c.ca_file.display()
        ));
        std::fs::write(&setup.config_path, cfg)?;
        *sw_slot.lock().unwrap() = Some(sw);
        Ok(())
    };
    let h = Harness::start_with(Options {
        policies,
        extra_config: "\n[approvals]\ntimeout_secs = 120\n\n[access]\napprovers = [\"dba\"]\nmax_duration_secs = 3600\n",
        before_start: Some(&hook),
        ..Options::default()
    })
    .unwrap();
    let b = second_gateway(&h);
    let (a_admin, b_admin) = (h.admin.unwrap(), b.addrs.admin.unwrap());

    // 1. Held on B, approved through A, committed on B.
    let sql = "UPDATE orders SET status = 'approved-through-a' WHERE id = 1";
    let psql = psql_bg(&h, b.addrs.pg, sql);
    let req = wait_for_request(&h, a_admin, "dana");
    let id = req["id"].as_str().unwrap().to_string();
    assert_eq!(req["operation"], sql, "A lists the statement held on B");
    assert_ne!(order_status(&h, 1), "approved-through-a", "nothing ran yet");
    let out = approvals(&h, a_admin, "alice", &["approve", &id]);
    assert!(
        output_text(&out).contains("you may not decide your own request"),
        "the rules hold through any gateway: {}",
        output_text(&out)
    );
    let out = approvals(&h, a_admin, "dana", &["approve", &id, "--comment", "OPS-9"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let (code, stdout, stderr) = wait_child(psql);
    assert_eq!(code, 0, "psql through B: {stderr}");
    assert!(stdout.contains("UPDATE 1"), "{stdout}");
    assert_eq!(order_status(&h, 1), "approved-through-a");
    let out = approvals(&h, b_admin, "dana", &["show", &id, "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["state"], "approved", "B sees the same request");
    assert_eq!(shown["votes"][0]["approver"], "user:dana");
    // B's log has the hold and the approved re-decision with dana's vote; A's has the vote.
    let b_log = transcripts(&b.log);
    assert!(b_log.contains(&id) && b_log.contains("dana"), "{b_log}");
    let a_log = transcripts(&h.setup.log_dir);
    assert!(a_log.contains(&id), "the vote is in A's log: {a_log}");

    // 2. Held on A, denied through B: the client on A hears the denial.
    let psql = psql_bg(
        &h,
        h.addr,
        "UPDATE orders SET status = 'denied-through-b' WHERE id = 2",
    );
    let req = wait_for_request(&h, b_admin, "dana");
    let id2 = req["id"].as_str().unwrap().to_string();
    let out = approvals(&h, b_admin, "dana", &["deny", &id2, "--comment", "not today"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let (code, _, stderr) = wait_child(psql);
    assert_ne!(code, 0);
    assert!(
        stderr.contains(&format!(
            "approval request {id2} was denied by user:dana: not today"
        )),
        "{stderr}"
    );
    assert_ne!(order_status(&h, 2), "denied-through-b");

    // 3. Access requested through A, approved through B, used on B; expiry recorded once.
    let err = gatehouse_conformance::connect_dsn(&format!(
        "host=127.0.0.1 port={} user=bob dbname=app password={} sslmode=disable",
        b.addrs.pg.port(),
        h.key("bob")
    ))
    .await
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("engineering-prod-needs-grant"),
        "{err:#}"
    );
    let out = access(
        &h,
        a_admin,
        "bob",
        &[
            "request",
            "--target",
            "app",
            "--duration",
            "10s",
            "--reason",
            "INC-12",
        ],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let req = wait_for_request(&h, b_admin, "dana");
    let grant_id = req["id"].as_str().unwrap().to_string();
    let out = approvals(&h, b_admin, "dana", &["approve", &grant_id]);
    assert!(out.status.success(), "{}", output_text(&out));
    // The grant is given by A (where the request waits) once it hears of the approval.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = access(&h, b_admin, "bob", &["grants", "--json"]);
        let g: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if g.iter().any(|g| g["id"] == grant_id.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never saw the grant: {}",
            output_text(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let bob = gatehouse_conformance::connect_dsn(&format!(
        "host=127.0.0.1 port={} user=bob dbname=app password={} sslmode=disable",
        b.addrs.pg.port(),
        h.key("bob")
    ))
    .await
    .unwrap();
    bob.simple_query("SELECT 1").await.unwrap();
    drop(bob);
    // Expired: recorded by exactly one of the two gateways.
    let deadline = Instant::now() + Duration::from_secs(30);
    let expired_in = |log: &Path| {
        transcripts(log)
            .lines()
            .filter(|l| l.contains(&grant_id) && l.contains("expired"))
            .count()
    };
    loop {
        let n = expired_in(&h.setup.log_dir) + expired_in(&b.log);
        if n > 0 {
            std::thread::sleep(Duration::from_secs(2));
            let n = expired_in(&h.setup.log_dir) + expired_in(&b.log);
            assert_eq!(n, 1, "one expiry record across both gateways");
            break;
        }
        assert!(Instant::now() < deadline, "the grant's expiry was never recorded");
        std::thread::sleep(Duration::from_millis(250));
    }

    // 4. The store cut off: holds are refused with the reason, other work goes on.
    switch.lock().unwrap().as_ref().unwrap().set_up(false);
    let agent = h.connect("ai-agent", "app").await.unwrap();
    let n: i64 = agent
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n > 0, "sessions without holds are unaffected");
    let err = agent
        .batch_execute("UPDATE orders SET status = 'store-down' WHERE id = 3")
        .await
        .unwrap_err();
    let msg = db_message(&err);
    assert!(msg.contains("approval store unavailable"), "{msg}");
    assert_ne!(order_status(&h, 3), "store-down");
    let out = approvals(&h, b_admin, "dana", &["list"]);
    assert!(
        !out.status.success() && output_text(&out).contains("approval store unavailable"),
        "{}",
        output_text(&out)
    );
    // Back: the gateways reconnect by themselves (each notices its dead connection on its
    // own schedule: wait for both, B is asked next).
    switch.lock().unwrap().as_ref().unwrap().set_up(true);
    let deadline = Instant::now() + Duration::from_secs(30);
    for admin in [a_admin, b_admin] {
        while !approvals(&h, admin, "dana", &["list"]).status.success() {
            assert!(Instant::now() < deadline, "the store never came back");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let psql = psql_bg(
        &h,
        h.addr,
        "UPDATE orders SET status = 'after-outage' WHERE id = 3",
    );
    let req = wait_for_request(&h, b_admin, "dana");
    let out = approvals(&h, b_admin, "dana", &["approve", req["id"].as_str().unwrap()]);
    assert!(out.status.success(), "{}", output_text(&out));
    let (code, _, stderr) = wait_child(psql);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(order_status(&h, 3), "after-outage");
}

fn person(id: &str, groups: &[&str]) -> gatehouse_core::Principal {
    gatehouse_core::Principal {
        kind: gatehouse_core::PrincipalKind::User,
        id: id.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        attrs: Default::default(),
        on_behalf_of: None,
        actor_chain: Vec::new(),
    }
}

fn held_update(min_approvals: u32) -> gatehouse_approval::NewRequest {
    gatehouse_approval::NewRequest {
        session_id: "s-race".into(),
        op: 1,
        requester: gatehouse_core::Principal {
            kind: gatehouse_core::PrincipalKind::Agent,
            ..person("ai-agent", &["agents"])
        },
        target: "app".into(),
        action: "query".into(),
        operation: "UPDATE orders SET status = 'x' WHERE id = 9".into(),
        kind: "update".into(),
        approvers: vec!["dba".into()],
        required_groups: Vec::new(),
        reason: "policy `agents-prod-update-needs-approval`".into(),
        policy_ids: vec!["agents-prod-update-needs-approval".into()],
        min_approvals,
        timeout_secs: 60,
    }
}

/// The store's own guarantees, with two store instances (two gateways) on one database and
/// their operations racing: no vote is lost or counted twice, a vote and a timeout end a
/// request once, the waiter hears of a decision made through the other instance, and each
/// grant expiry is handed out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_gateways_lose_no_vote_and_end_each_request_once() {
    use gatehouse_approval::access::{Grant, GrantStore};
    use gatehouse_approval::pgstore::{PgStore, PgStoreOptions};
    use gatehouse_approval::{Approvals, State, VoteError};

    let dir = tempfile::tempdir().unwrap();
    let cluster = gatehouse::pgcluster::TempCluster::start(dir.path()).unwrap();
    let opts = PgStoreOptions {
        dsn: format!(
            "host=127.0.0.1 port={} user=postgres password={} dbname=postgres sslmode=require",
            cluster.port, cluster.password
        ),
        ca_file: Some(cluster.ca_file.clone()),
        op_timeout: Duration::from_secs(10),
        history: 100,
    };
    let (s1, s2) = (
        PgStore::start(opts.clone(), Duration::from_secs(20)).unwrap(),
        PgStore::start(opts.clone(), Duration::from_secs(20)).unwrap(),
    );
    assert!(s1.connected() && s2.connected());
    let a = Arc::new(Approvals::with_store(Arc::new(s1.clone())));
    let b = Arc::new(Approvals::with_store(Arc::new(s2.clone())));

    // Eight approvers vote at once, half through each gateway; all eight are needed.
    let id = Approvals::new_id();
    let (_, mut rx) = a.open(id.clone(), held_update(8)).await;
    let mut votes = tokio::task::JoinSet::new();
    for i in 0..8 {
        let via = if i % 2 == 0 { a.clone() } else { b.clone() };
        let id = id.clone();
        votes.spawn(async move {
            via.vote(&id, &person(&format!("dba{i}"), &["dba"]), true, "")
                .await
        });
    }
    while let Some(r) = votes.join_next().await {
        r.unwrap().unwrap();
    }
    let ended = tokio::time::timeout(Duration::from_secs(15), rx.wait_for(Option::is_some))
        .await
        .expect("the waiter on A heard of the decision")
        .unwrap()
        .clone()
        .unwrap();
    assert_eq!(ended.state, State::Approved);
    let mut voters: Vec<String> = ended.votes.iter().map(|v| v.approver.clone()).collect();
    voters.sort();
    voters.dedup();
    assert_eq!(voters.len(), 8, "every vote counted once: {:?}", ended.votes);
    assert_eq!(
        b.vote(&id, &person("late", &["dba"]), true, "").await,
        Err(VoteError::NotPending(id.clone(), "approved"))
    );

    // A vote through B and A's timeout racing, many times: each request ends once, and what
    // the waiter on A hears is what the store holds.
    for _ in 0..20 {
        let id = Approvals::new_id();
        let (_, mut rx) = a.open(id.clone(), held_update(1)).await;
        let dana = person("dana", &["dba"]);
        let (vote, timeout) = tokio::join!(
            b.vote(&id, &dana, true, ""),
            a.finish(&id, State::TimedOut, "no decision within 60s"),
        );
        assert!(
            vote.is_ok() != timeout.is_some(),
            "exactly one of them ended it: {vote:?} / {timeout:?}"
        );
        let heard = tokio::time::timeout(Duration::from_secs(15), rx.wait_for(Option::is_some))
            .await
            .unwrap()
            .unwrap()
            .clone()
            .unwrap();
        let stored = a.get(&id).await.unwrap().unwrap();
        assert_eq!(heard.state, stored.state);
    }

    // Grant expiries are claimed by one instance each.
    for i in 0..20 {
        let g = Grant {
            id: format!("ap-g{i}"),
            principal: "user:bob".into(),
            on_behalf_of: None,
            target: "app".into(),
            reason: "INC".into(),
            granted_us: 0,
            expires_us: 1_000 + i,
            approvers: vec!["user:dana".into()],
        };
        GrantStore::add(&s1, &g, 0).await.unwrap();
    }
    assert_eq!(
        GrantStore::active(&s2, "user:bob", None, "app", 500)
            .await
            .unwrap()
            .unwrap()
            .id,
        "ap-g19",
        "B sees A's grants, the longest-lasting first"
    );
    let (c1, c2) = tokio::join!(s1.claim_expired(5_000), s2.claim_expired(5_000));
    let (c1, c2) = (c1.unwrap(), c2.unwrap());
    assert_eq!(
        c1.len() + c2.len(),
        20,
        "each expiry handed out once: {} + {}",
        c1.len(),
        c2.len()
    );
    assert!(s1.claim_expired(5_000).await.unwrap().is_empty());
}
