//! OIDC end to end: a real OpenID Provider (npm's `oidc-provider`, run with Node) issues JWT
//! access tokens; real clients (`psql`, tokio-postgres, raw HTTP) present them to Gatehouse as
//! the PostgreSQL password and as the admin API's bearer token.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gatehouse_conformance::{
    Harness, OpenIdProvider, Options, connect_dsn, db_message, gatehouse_bin, http_request, output_text,
};

fn oidc_config(op: &OpenIdProvider) -> String {
    format!(
        r#"
[[oidc]]
issuer = "{}"
audience = "urn:gatehouse"
username_claim = "preferred_username"
allow_http = true
clock_skew_secs = 0
jwks_min_refresh_secs = 1
"#,
        op.issuer
    )
}

/// A real OpenID Provider and a gateway trusting it.
fn start() -> (OpenIdProvider, Harness) {
    let op = OpenIdProvider::start().unwrap();
    let extra = oidc_config(&op);
    let h = Harness::start_with(Options {
        extra_config: &extra,
        ..Options::default()
    })
    .unwrap();
    (op, h)
}

/// `psql` through Gatehouse over TLS with `token` as the password.
fn psql(h: &Harness, user: &str, token: &str, sql: &str) -> Output {
    Command::new(h.setup.cluster.bindir.join("psql"))
        .arg("-X")
        .arg(format!(
            "host=127.0.0.1 port={} user={user} dbname=app sslmode=require",
            h.addr.port()
        ))
        .args(["-v", "ON_ERROR_STOP=1", "-tAc", sql])
        .env("PGPASSWORD", token)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn refused(h: &Harness, user: &str, token: &str, why: &str) {
    let out = psql(h, user, token, "SELECT 1");
    let text = output_text(&out);
    assert!(!out.status.success(), "accepted: {text}");
    assert!(
        text.contains(&format!("password authentication failed for user \"{user}\"")) && text.contains(why),
        "expected a refusal naming `{why}`: {text}"
    );
}

/// The token with one claim changed, the signature kept.
fn tampered(token: &str, claim: &str, value: serde_json::Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims[claim] = value;
    format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    )
}

fn admin_get(h: &Harness, token: &str) -> (u16, String) {
    http_request(
        h.admin.unwrap(),
        "GET",
        "/v1/approvals",
        &[("Authorization", &format!("Bearer {token}"))],
        "",
    )
    .unwrap()
}

#[test]
fn tokens_from_a_real_provider_identify_agents_and_forgeries_do_not() {
    let (op, h) = start();

    // A client-credentials token: the agent `report-bot` in group `agents`.
    let token = op.token("report-bot", None).unwrap();
    let out = psql(&h, "report-bot", &token, "SELECT 40 + 2");
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    let sessions = h.audit_sessions().unwrap();
    let s = sessions
        .iter()
        .find(|s| s["principal"].as_str() == Some("agent:report-bot"))
        .expect("the agent's session is recorded");
    let transcript = h.audit_show(s["session_id"].as_str().unwrap()).unwrap();
    assert!(
        transcript.contains(&format!("(auth oidc from {}", op.issuer)) && transcript.contains("valid until"),
        "{transcript}"
    );
    assert!(transcript.contains("SELECT 40 + 2"), "{transcript}");

    // The token names report-bot; it is not a password for anyone else.
    refused(
        &h,
        "plain-bot",
        &token,
        "identifies `report-bot`, not `plain-bot`",
    );
    // A token for another resource (audience).
    refused(
        &h,
        "report-bot",
        &op.token("report-bot", Some("urn:other-api")).unwrap(),
        "not for audience `urn:gatehouse`",
    );
    // Another provider's token: same client names, an issuer nobody configured.
    let stranger = OpenIdProvider::start().unwrap();
    refused(
        &h,
        "report-bot",
        &stranger.token("report-bot", None).unwrap(),
        "is not trusted",
    );
    // alg none, and a changed payload under the original signature.
    let parts: Vec<&str> = token.split('.').collect();
    let none = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"at+jwt"}"#);
    refused(
        &h,
        "report-bot",
        &format!("{none}.{}.", parts[1]),
        "`none` is not accepted",
    );
    refused(
        &h,
        "report-bot",
        &tampered(&token, "groups", serde_json::json!(["dba"])),
        "signature does not verify",
    );
    // A token without the groups claim is a principal without groups: Cedar permits agents
    // only in `agents`, so the connection is denied by policy (and recorded as such).
    let out = psql(&h, "plain-bot", &op.token("plain-bot", None).unwrap(), "SELECT 1");
    let text = output_text(&out);
    assert!(!out.status.success() && text.contains("gatehouse:"), "{text}");
    assert!(!text.contains("password authentication failed"), "{text}");
    // Every refusal above is in the log with its reason.
    let failures: Vec<String> = h
        .audit_sessions()
        .unwrap()
        .iter()
        .filter(|s| {
            s["session_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("failed-"))
        })
        .map(|s| h.audit_show(s["session_id"].as_str().unwrap()).unwrap())
        .collect();
    for why in [
        "not for audience",
        "is not trusted",
        "`none` is not accepted",
        "signature does not verify",
    ] {
        assert!(
            failures.iter().any(|t| t.contains(why)),
            "no recorded failure names `{why}`: {failures:?}"
        );
    }

    // The admin API takes the same tokens as bearer tokens; report-bot is no admin, so it sees
    // an empty list, not a 401. A forged token is a 401 that says why.
    let (status, body) = admin_get(&h, &token);
    assert_eq!(status, 200, "{body}");
    let (status, body) = admin_get(&h, &tampered(&token, "sub", serde_json::json!("root")));
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("signature does not verify"), "{body}");
}

#[test]
fn rotated_keys_are_picked_up_and_an_unreachable_provider_lets_nothing_unverifiable_in() {
    let (mut op, h) = start();
    let before = op.token("report-bot", None).unwrap();
    assert!(psql(&h, "report-bot", &before, "SELECT 1").status.success());

    // The provider rotates: the new key (unknown kid) is fetched without a restart, the old
    // key is gone from the set and its tokens stop working.
    op.rotate().unwrap();
    let after = op.token("report-bot", None).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let out = psql(&h, "report-bot", &after, "SELECT 1");
    assert!(out.status.success(), "{}", output_text(&out));
    std::thread::sleep(Duration::from_millis(1100));
    refused(&h, "report-bot", &before, "is not published by the issuer");

    // Rotated again, then the provider goes away: a token signed with the newest key cannot be
    // verified, so it is refused (and the reason says the keys could not be fetched).
    op.rotate().unwrap();
    let unverifiable = op.token("report-bot", None).unwrap();
    op.stop();
    std::thread::sleep(Duration::from_millis(1100));
    refused(&h, "report-bot", &unverifiable, "identity provider unavailable");
    // The client is not told the IdP's network error; the record says which keys could not be
    // fetched.
    let text = output_text(&psql(&h, "report-bot", &unverifiable, "SELECT 1"));
    assert!(!text.contains(&op.issuer), "{text}");
    let failures: Vec<String> = h
        .audit_sessions()
        .unwrap()
        .iter()
        .filter_map(|s| {
            s["session_id"]
                .as_str()
                .filter(|id| id.starts_with("failed-"))
                .map(str::to_string)
        })
        .map(|id| h.audit_show(&id).unwrap())
        .collect();
    assert!(
        failures
            .iter()
            .any(|t| t.contains("cannot fetch the signing keys")),
        "{failures:?}"
    );
    // The key it already holds keeps working meanwhile.
    assert!(psql(&h, "report-bot", &after, "SELECT 1").status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_mid_session_ends_the_session() {
    let (op, h) = start();
    // short-bot's tokens live 4 seconds.
    let token = op.token("short-bot", None).unwrap();
    let dsn = format!(
        "host=127.0.0.1 port={} user=short-bot dbname=app password={token} sslmode=disable",
        h.addr.port()
    );
    let client = connect_dsn(&dsn).await.unwrap();
    let row = client.query_one("SELECT 1::int4", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let err = client.query_one("SELECT 2::int4", &[]).await.unwrap_err();
    let msg = db_message(&err);
    assert!(msg.contains("expired") && msg.contains("sign in again"), "{msg}");
    assert!(client.is_closed() || client.query_one("SELECT 3", &[]).await.is_err());
    // A new connection with it is refused outright.
    let err = connect_dsn(&dsn).await.unwrap_err();
    assert!(format!("{err:#}").contains("credential expired"), "{err:#}");

    // The record: the statement before expiry ran, the one after did not, and the session
    // ended because the credential expired.
    let sessions = h.audit_sessions().unwrap();
    let s = sessions
        .iter()
        .find(|s| {
            s["principal"].as_str() == Some("agent:short-bot")
                && !s["session_id"].as_str().unwrap().starts_with("failed-")
        })
        .expect("short-bot's session");
    let t = h.audit_show(s["session_id"].as_str().unwrap()).unwrap();
    assert!(t.contains("SELECT 1::int4"), "{t}");
    assert!(!t.contains("SELECT 2::int4"), "{t}");
    assert!(
        t.contains("the token this session was opened with expired at"),
        "{t}"
    );
}

#[test]
fn gatehouse_login_signs_a_human_in_with_the_device_flow() {
    use std::io::{BufRead as _, Read as _};
    let (op, h) = start();
    // The CLI tells the human where to go and which code to expect.
    let (mut login, mut stderr) = spawn_login(&op, "device");
    let mut said = String::new();
    let code = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "login ended early: {said}"
        );
        said.push_str(&line);
        if let Some(rest) = line.split("shows the code ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    assert!(
        said.contains(&format!("{}/device?user_code=", op.issuer)),
        "{said}"
    );
    // The human signs in as erin at the provider's pages.
    let (status, body) = http_request(
        op.addr,
        "POST",
        &format!("/_device_login?user_code={code}&login=erin"),
        &[],
        "",
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let mut out = String::new();
    login.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(login.wait().unwrap().success(), "{said}{rest}");
    assert!(
        rest.contains("Signed in as erin (access_token valid until"),
        "{rest}"
    );
    let env: std::collections::HashMap<String, String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect();
    assert_eq!(env["PGUSER"], "erin");
    assert_eq!(env["PGSSLMODE"], "require");

    // psql with exactly that environment.
    let out = Command::new(h.setup.cluster.bindir.join("psql"))
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &h.addr.port().to_string(),
            "-d",
            "app",
            "-tAc",
            "SELECT current_user IS NOT NULL",
        ])
        .env("PGUSER", &env["PGUSER"])
        .env("PGPASSWORD", &env["PGPASSWORD"])
        .env("PGSSLMODE", &env["PGSSLMODE"])
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let sessions = h.audit_sessions().unwrap();
    assert!(
        sessions
            .iter()
            .any(|s| s["principal"].as_str() == Some("user:erin")),
        "{sessions:?}"
    );
    // The same token works for the approvals CLI (GATEHOUSE_TOKEN), no access key needed.
    let out = Command::new(gatehouse_bin())
        .args([
            "approvals",
            "list",
            "--url",
            &format!("http://{}", h.admin.unwrap()),
        ])
        .env("GATEHOUSE_TOKEN", &env["GATEHOUSE_TOKEN"])
        .env_remove("GATEHOUSE_KEY")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
}

/// Start `gatehouse login --flow FLOW` against `op` for the `urn:gatehouse` resource, with its
/// stderr (where it tells the human what to do) to read.
fn spawn_login(
    op: &OpenIdProvider,
    flow: &str,
) -> (std::process::Child, std::io::BufReader<std::process::ChildStderr>) {
    let mut login = Command::new(gatehouse_bin())
        .args([
            "login",
            "--flow",
            flow,
            "--issuer",
            &op.issuer,
            "--resource",
            "urn:gatehouse",
        ])
        .args(["--user-claim", "preferred_username"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(login.stderr.take().unwrap());
    (login, stderr)
}

/// Start `gatehouse login --flow code`; returns the child and the authorization link it printed.
fn code_login(
    op: &OpenIdProvider,
) -> (
    std::process::Child,
    String,
    std::io::BufReader<std::process::ChildStderr>,
) {
    use std::io::BufRead as _;
    let (login, mut stderr) = spawn_login(op, "code");
    let link = loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "login ended early");
        if line.starts_with("http") {
            break line.trim().to_string();
        }
    };
    (login, link, stderr)
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn gatehouse_login_with_a_browser_uses_the_code_flow_with_pkce_and_checks_the_state() {
    use std::io::Read as _;
    let (op, h) = start();

    let (mut login, link, mut stderr) = code_login(&op);
    assert!(
        link.contains("code_challenge_method=S256")
            && link.contains("redirect_uri=http%3A%2F%2F127.0.0.1%3A"),
        "{link}"
    );
    // Someone else's redirect to the CLI's listener (another state) is refused and ignored.
    let port = link
        .split("redirect_uri=http%3A%2F%2F127.0.0.1%3A")
        .nth(1)
        .and_then(|r| r.split("%2F").next())
        .unwrap()
        .to_string();
    let listener: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (status, _) =
        http_request(listener, "GET", "/callback?code=stolen&state=not-yours", &[], "").unwrap();
    assert_eq!(status, 400);
    // The browser: sign in as erin, consent, and come back to the CLI's listener.
    let (status, body) = http_request(
        op.addr,
        "POST",
        &format!("/_browser_login?login=erin&url={}", percent_encode(&link)),
        &[],
        "",
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"callback_status\":200"), "{body}");
    let mut out = String::new();
    login.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let mut said = String::new();
    stderr.read_to_string(&mut said).unwrap();
    assert!(login.wait().unwrap().success(), "{said}");
    assert!(out.contains("export PGUSER='erin'"), "{out}");
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("export PGPASSWORD='"))
        .unwrap()
        .trim_end_matches('\'')
        .to_string();
    let run = psql(&h, "erin", &token, "SELECT 5");
    assert!(run.status.success(), "{}", output_text(&run));
}
