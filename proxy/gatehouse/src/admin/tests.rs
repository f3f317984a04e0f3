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
        checkpoints: None,
        shipping: None,
        literals: Default::default(),
        results: Default::default(),
    })
    .unwrap();
    let approvals = Arc::new(Approvals::new(100));
    let keys = Arc::new(StaticKeys::from_config(&cfg.identities).unwrap());
    let api = AdminApi::new(
        cfg.admin.as_ref().unwrap(),
        approvals.clone(),
        recorder.clone(),
        keys,
        None,
        dir.path().to_path_buf(),
    )
    .with_access(
        Some(Arc::new(gatehouse_approval::access::Grants::in_memory())),
        gatehouse_core::config::AccessConfig {
            approvers: vec!["dba".into()],
            ..Default::default()
        },
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

async fn open_request(f: &Fixture) -> String {
    let id = Approvals::new_id();
    let requester = Principal {
        kind: gatehouse_core::PrincipalKind::Agent,
        id: "ai-agent".into(),
        groups: vec!["agents".into()],
        attrs: Default::default(),
        on_behalf_of: Some("carol".into()),
        actor_chain: Vec::new(),
    };
    f.approvals
        .open(
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
                required_groups: vec![vec!["dba".into()]],
                reason: "policy `agents-prod-update-needs-approval`".into(),
                policy_ids: vec!["agents-prod-update-needs-approval".into()],
                min_approvals: 1,
                timeout_secs: 60,
            },
        )
        .await;
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
    let id = open_request(&f).await;
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
    let id = open_request(&f).await;
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
    assert_eq!(f.approvals.get(&id).await.unwrap().unwrap().state, State::Pending);

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

// ---------------------------------------------------------------------------------------------
// The OpenAPI description (`admin-openapi.json`) against the server
// ---------------------------------------------------------------------------------------------

const OPENAPI: &str = include_str!("../../admin-openapi.json");

/// Resolve a local `$ref` (`#/components/...`).
fn resolve<'a>(doc: &'a serde_json::Value, v: &'a serde_json::Value) -> &'a serde_json::Value {
    match v.get("$ref").and_then(|r| r.as_str()) {
        Some(r) => {
            let mut at = doc;
            for part in r.trim_start_matches("#/").split('/') {
                at = &at[part];
            }
            assert!(!at.is_null(), "dangling $ref {r}");
            resolve(doc, at)
        }
        None => v,
    }
}

/// Check `value` against the subset of JSON Schema the description uses: `type`, `required`,
/// `properties`, `items`, `enum`, `nullable`, `$ref`.
fn conforms(
    doc: &serde_json::Value,
    schema: &serde_json::Value,
    value: &serde_json::Value,
    at: &str,
) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if value.is_null() && schema["nullable"] == true {
        return Ok(());
    }
    let ok = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("boolean") => value.is_boolean(),
        Some(other) => return Err(format!("{at}: schema type `{other}` not understood")),
        None => true,
    };
    if !ok {
        return Err(format!("{at}: expected {}, got {value}", schema["type"]));
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {allowed:?}"));
    }
    for r in schema["required"].as_array().into_iter().flatten() {
        let name = r.as_str().unwrap_or_default();
        if value.get(name).is_none() {
            return Err(format!("{at}: missing required `{name}` in {value}"));
        }
    }
    if let (Some(props), Some(obj)) = (schema["properties"].as_object(), value.as_object()) {
        for (k, v) in obj {
            match props.get(k) {
                Some(s) => conforms(doc, s, v, &format!("{at}.{k}"))?,
                None => return Err(format!("{at}: `{k}` is not in the description")),
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), value.as_array()) {
        for (i, v) in arr.iter().enumerate() {
            conforms(doc, items, v, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// Check a reply against the description of `method pattern`.
fn check_reply(doc: &serde_json::Value, method: &str, pattern: &str, reply: &Reply) {
    let op = &doc["paths"][pattern][method.to_ascii_lowercase()];
    let documented = &op["responses"][reply.status.to_string()];
    assert!(
        !documented.is_null(),
        "{method} {pattern} answered {} which is not documented: {}",
        reply.status,
        reply.body
    );
    let documented = resolve(doc, documented);
    let schema = &documented["content"]["application/json"]["schema"];
    conforms(
        doc,
        schema,
        &reply.body,
        &format!("{method} {pattern} {}", reply.status),
    )
    .unwrap();
}

#[tokio::test]
async fn the_openapi_description_matches_the_server() {
    let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
    let mut documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_ascii_uppercase(), p.clone()))
        })
        .collect();
    documented.sort();
    let mut served: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    served.sort();
    assert_eq!(
        documented, served,
        "every route documented, every documented route served"
    );

    let f = fixture();
    let id = open_request(&f).await;
    record_session(&f).await;
    let denied = Approvals::new_id();
    // (method, pattern, concrete path, caller, body): successes and the documented errors.
    type Call<'a> = (&'a str, &'a str, String, Option<&'a str>, Option<&'a [u8]>);
    let calls: Vec<Call> = vec![
        ("GET", "/healthz", "/healthz".into(), None, Some(b"")),
        ("GET", "/v1/whoami", "/v1/whoami".into(), Some("alice"), Some(b"")),
        ("GET", "/v1/whoami", "/v1/whoami".into(), None, Some(b"")),
        (
            "GET",
            "/v1/approvals",
            "/v1/approvals?state=all".into(),
            Some("erin"),
            Some(b""),
        ),
        (
            "GET",
            "/v1/approvals",
            "/v1/approvals?state=nope".into(),
            Some("erin"),
            Some(b""),
        ),
        (
            "GET",
            "/v1/approvals/{id}",
            format!("/v1/approvals/{id}"),
            Some("alice"),
            Some(b""),
        ),
        (
            "GET",
            "/v1/approvals/{id}",
            format!("/v1/approvals/{denied}"),
            Some("alice"),
            Some(b""),
        ),
        (
            "POST",
            "/v1/approvals/{id}/deny",
            format!("/v1/approvals/{id}/deny"),
            Some("dave"),
            Some(b""),
        ),
        (
            "POST",
            "/v1/approvals/{id}/deny",
            format!("/v1/approvals/{id}/deny"),
            Some("carol"),
            Some(b""),
        ),
        (
            "POST",
            "/v1/approvals/{id}/approve",
            format!("/v1/approvals/{id}/approve"),
            Some("alice"),
            Some(b"{"),
        ),
        (
            "POST",
            "/v1/approvals/{id}/approve",
            format!("/v1/approvals/{id}/approve"),
            Some("alice"),
            None,
        ),
        (
            "POST",
            "/v1/approvals/{id}/approve",
            format!("/v1/approvals/{id}/approve"),
            Some("alice"),
            Some(br#"{"comment":"ok"}"#),
        ),
        (
            "POST",
            "/v1/approvals/{id}/deny",
            format!("/v1/approvals/{id}/deny"),
            Some("alice"),
            Some(b""),
        ),
        (
            "GET",
            "/v1/sessions",
            "/v1/sessions?limit=10".into(),
            Some("erin"),
            Some(b""),
        ),
        (
            "GET",
            "/v1/sessions",
            "/v1/sessions?limit=0".into(),
            Some("erin"),
            Some(b""),
        ),
        (
            "GET",
            "/v1/sessions",
            "/v1/sessions".into(),
            Some("alice"),
            Some(b""),
        ),
        (
            "GET",
            "/v1/sessions/{id}",
            "/v1/sessions/sess-1".into(),
            Some("erin"),
            Some(b""),
        ),
        (
            "GET",
            "/v1/sessions/{id}",
            "/v1/sessions/no-such".into(),
            Some("erin"),
            Some(b""),
        ),
        (
            "GET",
            "/v1/sessions/{id}",
            "/v1/sessions/sess-1".into(),
            Some("dave"),
            Some(b""),
        ),
        (
            "GET",
            "/v1/audit/search",
            "/v1/audit/search?principal=agent%3Aai-agent&kind=session_start&from=-1h".into(),
            Some("erin"),
            Some(b""),
        ),
        (
            "GET",
            "/v1/audit/search",
            "/v1/audit/search?decision=maybe".into(),
            Some("erin"),
            Some(b""),
        ),
        (
            "GET",
            "/v1/audit/search",
            "/v1/audit/search".into(),
            Some("dave"),
            Some(b""),
        ),
        (
            "POST",
            "/v1/access/requests",
            "/v1/access/requests".into(),
            Some("dave"),
            Some(br#"{"target":"app","duration_secs":1800,"reason":"INC-42"}"#),
        ),
        (
            "POST",
            "/v1/access/requests",
            "/v1/access/requests".into(),
            Some("dave"),
            Some(br#"{"target":"app","duration_secs":999999999,"reason":"INC-42"}"#),
        ),
        (
            "GET",
            "/v1/access/grants",
            "/v1/access/grants".into(),
            Some("dave"),
            Some(b""),
        ),
    ];
    let mut statuses = std::collections::BTreeSet::new();
    for (method, pattern, path, user, body) in calls {
        let reply = f.call(method, &path, user, body).await;
        check_reply(&doc, method, pattern, &reply);
        statuses.insert((pattern, reply.status));
    }
    let found = f
        .call(
            "GET",
            "/v1/audit/search?principal=agent%3Aai-agent&kind=session_start",
            Some("erin"),
            Some(b""),
        )
        .await;
    let v = &found.body;
    assert_eq!(v["events"][0]["session_id"], "sess-1", "{v}");
    // One session's events, newest first; a session nobody had, none.
    let found = f
        .call("GET", "/v1/audit/search?session=sess-1", Some("erin"), Some(b""))
        .await;
    let events = found.body["events"].as_array().cloned().unwrap_or_default();
    assert!(!events.is_empty(), "{}", found.body);
    assert!(
        events.iter().all(|e| e["session_id"] == "sess-1"),
        "{}",
        found.body
    );
    assert_eq!(
        events.last().map(|e| e["body"]["kind"].clone()),
        Some("session_start".into())
    );
    let found = f
        .call("GET", "/v1/audit/search?session=no-such", Some("erin"), Some(b""))
        .await;
    assert_eq!(found.body["events"], serde_json::json!([]), "{}", found.body);
    for expected in [
        ("/v1/whoami", 401),
        ("/v1/approvals", 400),
        ("/v1/approvals/{id}", 404),
        ("/v1/approvals/{id}/deny", 403),
        ("/v1/approvals/{id}/deny", 409),
        ("/v1/approvals/{id}/approve", 200),
        ("/v1/approvals/{id}/approve", 413),
        ("/v1/sessions", 200),
        ("/v1/sessions", 403),
        ("/v1/sessions/{id}", 200),
        ("/v1/sessions/{id}", 404),
        ("/v1/audit/search", 200),
        ("/v1/audit/search", 400),
        ("/v1/audit/search", 403),
        ("/v1/access/requests", 200),
        ("/v1/access/requests", 400),
        ("/v1/access/grants", 200),
    ] {
        assert!(
            statuses.contains(&expected),
            "{expected:?} not exercised: {statuses:?}"
        );
    }
}

/// A short recorded session `sess-1` of the agent.
async fn record_session(f: &Fixture) {
    let p = Principal {
        kind: gatehouse_core::PrincipalKind::Agent,
        id: "ai-agent".into(),
        groups: vec!["agents".into()],
        attrs: Default::default(),
        actor_chain: Vec::new(),
        on_behalf_of: Some("carol".into()),
    };
    f.recorder
        .append(NewEvent::now(
            "sess-1",
            Some(p.display()),
            EventBody::SessionStart {
                protocol: "postgres".into(),
                source: "127.0.0.1:50000".into(),
                target: "app".into(),
                client_app: Some("psql".into()),
                auth_method: "scram-sha-256".into(),
                principal: p,
                target_tags: Default::default(),
                auth: None,
                grant: None,
            },
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_approved_access_request_becomes_a_grant_and_a_denied_one_does_not() {
    let f = fixture();
    let ask = |reason: &str| format!(r#"{{"target":"app","duration_secs":600,"reason":"{reason}"}}"#);
    let r = f
        .call(
            "POST",
            "/v1/access/requests",
            Some("dave"),
            Some(ask("INC-1").as_bytes()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r.body["request"]["id"].as_str().unwrap().to_string();
    assert_eq!(r.body["request"]["action"], "access");
    // dave may not approve his own request; erin (an auditor) is no approver; alice is.
    let own = f
        .call(
            "POST",
            &format!("/v1/approvals/{id}/approve"),
            Some("dave"),
            Some(b""),
        )
        .await;
    assert_eq!(own.status, 403, "{}", own.body);
    let ok = f
        .call(
            "POST",
            &format!("/v1/approvals/{id}/approve"),
            Some("alice"),
            Some(br#"{"comment":"go"}"#),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let mut grants = serde_json::Value::Null;
    for _ in 0..100 {
        grants = f
            .call("GET", "/v1/access/grants", Some("dave"), Some(b""))
            .await
            .body;
        if grants["grants"].as_array().is_some_and(|g| !g.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let g = &grants["grants"][0];
    assert_eq!(
        (g["id"].as_str(), g["principal"].as_str(), g["target"].as_str()),
        (Some(id.as_str()), Some("user:dave"), Some("app"))
    );
    assert_eq!(g["approvers"][0], "user:alice");
    // Others see none of dave's grants; auditors see all.
    let alice = f.call("GET", "/v1/access/grants", Some("alice"), Some(b"")).await;
    assert_eq!(alice.body["grants"].as_array().map(Vec::len), Some(0));
    let erin = f.call("GET", "/v1/access/grants", Some("erin"), Some(b"")).await;
    assert_eq!(erin.body["grants"].as_array().map(Vec::len), Some(1));

    let r = f
        .call(
            "POST",
            "/v1/access/requests",
            Some("dave"),
            Some(ask("INC-2").as_bytes()),
        )
        .await;
    let denied = r.body["request"]["id"].as_str().unwrap().to_string();
    let no = f
        .call(
            "POST",
            &format!("/v1/approvals/{denied}/deny"),
            Some("alice"),
            Some(b""),
        )
        .await;
    assert_eq!(no.status, 200, "{}", no.body);

    // An approver may not approve their own request, and agents decide nothing.
    let r = f
        .call(
            "POST",
            "/v1/access/requests",
            Some("alice"),
            Some(ask("INC-3").as_bytes()),
        )
        .await;
    let own = r.body["request"]["id"].as_str().unwrap().to_string();
    let r = f
        .call(
            "POST",
            &format!("/v1/approvals/{own}/approve"),
            Some("alice"),
            Some(b""),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body["error"].as_str().unwrap().contains("your own request"),
        "{}",
        r.body
    );
    let r = f
        .call(
            "POST",
            &format!("/v1/approvals/{own}/approve"),
            Some("ai-agent"),
            Some(b""),
        )
        .await;
    // The agent may not even see it (404); either way the request stays pending.
    assert!(matches!(r.status, 403 | 404), "{}", r.body);
    let r = f
        .call("GET", &format!("/v1/approvals/{own}"), Some("alice"), Some(b""))
        .await;
    assert_eq!(r.body["request"]["state"], "pending", "{}", r.body);

    // Every step is in the request's own session (the denial once its task recorded it).
    for _ in 0..200 {
        if access_steps(&f, &denied).iter().any(|s| s == "denied") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let grants = f
        .call("GET", "/v1/access/grants", Some("dave"), Some(b""))
        .await
        .body;
    assert_eq!(grants["grants"].as_array().map(Vec::len), Some(1), "{grants}");
    assert_eq!(access_steps(&f, &id), ["requested", "vote true", "granted"]);
    assert_eq!(access_steps(&f, &denied), ["requested", "vote false", "denied"]);
}

/// The recorded steps and votes of access request `id`, in order.
fn access_steps(f: &Fixture, id: &str) -> Vec<String> {
    LogReader::open(f.dir.path())
        .unwrap()
        .session_events(&format!("access-{id}"))
        .unwrap()
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Access { step, .. } => Some(step.clone()),
            EventBody::ApprovalVote { approve, .. } => Some(format!("vote {approve}")),
            _ => None,
        })
        .collect()
}
