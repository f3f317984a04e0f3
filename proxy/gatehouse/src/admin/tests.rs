use super::*;
use gatehouse_approval::NewRequest;
use gatehouse_core::config::{Config, Durability, RecorderConfig};
use gatehouse_identity::scram::ScramVerifier;
use gatehouse_recorder::LogReader;

const KEY: &str = "gh_test_key";

fn verifier() -> String {
    ScramVerifier::derive(KEY, b"0123456789abcdef", 4096).to_string()
}

fn config() -> Config {
    let v = verifier();
    let text = format!(
        r#"
[policy]
dir = "p"
[recorder]
dir = "r"
[admin]
listen = "127.0.0.1:0"
admins = ["security"]
auditors = ["audit"]
[[identity]]
name = "ai-agent"
kind = "agent"
groups = ["agents"]
key_verifier = "{v}"
on_behalf_of = "carol"
[[identity]]
name = "alice"
kind = "user"
groups = ["dba"]
key_verifier = "{v}"
[[identity]]
name = "carol"
kind = "user"
groups = ["dba"]
key_verifier = "{v}"
[[identity]]
name = "dave"
kind = "user"
groups = ["dev"]
key_verifier = "{v}"
[[identity]]
name = "erin"
kind = "user"
groups = ["audit"]
key_verifier = "{v}"
"#
    );
    Config::parse(&text, "test").unwrap()
}

struct Fixture {
    api: AdminApi,
    approvals: Arc<Approvals>,
    recorder: Recorder,
    dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let cfg = config();
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::open(&RecorderConfig {
        dir: dir.path().to_path_buf(),
        durability: Durability::Sync,
        max_batch: 64,
    })
    .unwrap();
    let approvals = Arc::new(Approvals::new(100));
    let keys = Arc::new(StaticKeys::from_config(&cfg.identities).unwrap());
    let api = AdminApi::new(
        cfg.admin.as_ref().unwrap(),
        approvals.clone(),
        recorder.clone(),
        keys,
    );
    Fixture {
        api,
        approvals,
        recorder,
        dir,
    }
}

fn basic(user: &str, key: &str) -> Vec<u8> {
    let t = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{key}"));
    format!("Basic {t}").into_bytes()
}

fn open_request(f: &Fixture) -> String {
    let id = Approvals::new_id();
    let requester = Principal {
        kind: gatehouse_core::PrincipalKind::Agent,
        id: "ai-agent".into(),
        groups: vec!["agents".into()],
        attrs: Default::default(),
        on_behalf_of: Some("carol".into()),
    };
    f.approvals.open(
        id.clone(),
        NewRequest {
            session_id: "sess-1".into(),
            op: 2,
            requester,
            target: "app".into(),
            action: "query".into(),
            operation: "UPDATE accounts SET balance = 0 WHERE id = 7".into(),
            kind: "update".into(),
            approvers: vec!["dba".into()],
            reason: "policy `agents-prod-update-needs-approval`".into(),
            policy_ids: vec!["agents-prod-update-needs-approval".into()],
            min_approvals: 1,
            timeout_secs: 60,
        },
    );
    id
}

impl Fixture {
    async fn call(&self, method: &str, path: &str, user: Option<&str>, body: Option<&[u8]>) -> Reply {
        let auth = user.map(|u| basic(u, KEY));
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        self.api.handle(method, path, query, auth.as_deref(), body).await
    }

    fn list_len(reply: &Reply) -> usize {
        reply.body["requests"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(usize::MAX)
    }
}

#[tokio::test]
async fn authentication_is_required_and_checked() {
    let f = fixture();
    assert_eq!(f.call("GET", "/healthz", None, Some(b"")).await.status, 200);
    let r = f.call("GET", "/v1/approvals", None, Some(b"")).await;
    assert_eq!(r.status, 401);
    assert!(r.challenge);
    let wrong = basic("alice", "not-the-key");
    let r = f
        .api
        .handle("GET", "/v1/approvals", "", Some(&wrong), Some(b""))
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"], "invalid identity or access key");
    let unknown = basic("nobody", KEY);
    let r = f
        .api
        .handle("GET", "/v1/approvals", "", Some(&unknown), Some(b""))
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"], "invalid identity or access key");
    let r = f
        .api
        .handle("GET", "/v1/approvals", "", Some(b"Bearer abc.def.ghi"), Some(b""))
        .await;
    assert_eq!(r.status, 401);
    let r = f
        .api
        .handle("GET", "/v1/approvals", "", Some(b"Basic !!!"), Some(b""))
        .await;
    assert_eq!(r.status, 401);
    let r = f.call("GET", "/v1/whoami", Some("alice"), Some(b"")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["principal"], "user:alice");
    let r = f.call("GET", "/v1/whoami", Some("erin"), Some(b"")).await;
    assert_eq!(r.body["roles"], serde_json::json!(["auditor"]));
    assert_eq!(
        f.call("GET", "/v2/nothing", Some("alice"), Some(b""))
            .await
            .status,
        404
    );
    assert_eq!(
        f.call("DELETE", "/v1/approvals", Some("alice"), Some(b""))
            .await
            .status,
        405
    );
    drop(f.dir);
}

#[tokio::test]
async fn requests_are_visible_to_approvers_auditors_and_the_requester_only() {
    let f = fixture();
    let id = open_request(&f);
    for (who, n) in [
        ("alice", 1),
        ("erin", 1),
        ("ai-agent", 1),
        ("carol", 1),
        ("dave", 0),
    ] {
        let r = f
            .call("GET", "/v1/approvals?state=pending", Some(who), Some(b""))
            .await;
        assert_eq!(r.status, 200, "{who}");
        assert_eq!(Fixture::list_len(&r), n, "{who}");
    }
    let r = f
        .call("GET", &format!("/v1/approvals/{id}"), Some("dave"), Some(b""))
        .await;
    assert_eq!(r.status, 404);
    let r = f
        .call("GET", &format!("/v1/approvals/{id}"), Some("alice"), Some(b""))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body["request"]["operation"],
        "UPDATE accounts SET balance = 0 WHERE id = 7"
    );
    let r = f
        .call("GET", "/v1/approvals?state=bogus", Some("alice"), Some(b""))
        .await;
    assert_eq!(r.status, 400);
    let r = f
        .call("GET", "/v1/approvals?state=all", Some("alice"), Some(b""))
        .await;
    assert_eq!(Fixture::list_len(&r), 1);
}

#[tokio::test]
async fn votes_follow_the_rules_and_are_recorded_before_they_count() {
    let f = fixture();
    let id = open_request(&f);
    let approve = format!("/v1/approvals/{id}/approve");
    // The agent itself, the human it acts for, an outsider.
    let r = f.call("POST", &approve, Some("ai-agent"), Some(b"")).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (403, Some("only people may decide approval requests, not agents"))
    );
    let r = f.call("POST", &approve, Some("carol"), Some(b"")).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (403, Some("you may not decide your own request"))
    );
    let r = f.call("POST", &approve, Some("dave"), Some(b"")).await;
    assert_eq!(r.status, 404, "an outsider learns nothing about the request");
    let r = f.call("POST", &approve, Some("alice"), Some(b"{not json")).await;
    assert_eq!(r.status, 400);
    let r = f.call("POST", &approve, Some("alice"), None).await;
    assert_eq!(r.status, 413);
    assert_eq!(f.approvals.get(&id).unwrap().state, State::Pending);

    let r = f
        .call(
            "POST",
            &approve,
            Some("alice"),
            Some(br#"{"comment": "ticket OPS-12"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["request"]["state"], "approved");
    assert_eq!(r.body["request"]["votes"][0]["approver"], "user:alice");
    let r = f
        .call(
            "POST",
            &format!("/v1/approvals/{id}/deny"),
            Some("alice"),
            Some(b""),
        )
        .await;
    assert_eq!(r.status, 409);
    let r = f.call("GET", &approve, Some("alice"), Some(b"")).await;
    assert_eq!(r.status, 405);

    f.recorder.shutdown();
    let events = LogReader::open(f.dir.path())
        .unwrap()
        .session_events("sess-1")
        .unwrap();
    let votes: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::ApprovalVote {
                request,
                approve,
                comment,
                op,
            } => Some((
                e.principal.clone(),
                request.clone(),
                *approve,
                comment.clone(),
                *op,
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        votes,
        vec![(
            Some("user:alice".to_string()),
            id,
            true,
            "ticket OPS-12".to_string(),
            2
        )],
        "exactly the counted vote is recorded"
    );
}
