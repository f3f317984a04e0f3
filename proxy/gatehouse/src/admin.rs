//! The admin API (DESIGN.md §7): JSON over HTTP/1.1 on `[admin] listen`, parsed by pingora's
//! HTTP server session on an [`Endpoint`] (its own pingora service and thread).
//!
//! Every route but `GET /healthz` is authenticated. Today that is an identity's access key
//! (the one it uses as its PostgreSQL password) in `Authorization: Basic` (name and key),
//! checked against the identity's SCRAM verifier; OIDC bearer tokens come with the OIDC
//! provider. The listener is loopback-only (the config refuses anything else) because the API
//! has no TLS of its own yet.
//!
//! | route | who | what |
//! |---|---|---|
//! | `GET /healthz` | anyone | `ok` |
//! | `GET /v1/whoami` | any identity | the caller and its roles |
//! | `GET /v1/approvals?state=pending` | see below | requests the caller may see, newest first |
//! | `GET /v1/approvals/{id}` | see below | one request |
//! | `POST /v1/approvals/{id}/approve` | approvers | `{"comment": "…"}` (optional) |
//! | `POST /v1/approvals/{id}/deny` | approvers | `{"comment": "…"}` (optional) |
//! | `GET /v1/sessions?limit=100` | admins, auditors | recorded sessions, newest first |
//! | `GET /v1/sessions/{id}` | admins, auditors | summary, events (as stored, hash-chained), transcript |
//! | `GET /v1/audit/search?principal=&target=&kind=&decision=&policy=&text=&from=&to=&limit=` | admins, auditors | matching events, newest first, from the log's search indexes |
//!
//! `admin-openapi.json` beside `Cargo.toml` describes every route and answer; a test checks
//! the server against it.
//!
//! A request is visible to members of `[admin] admins` and `auditors`, to members of the
//! request's approver groups, and to the requester (and the human an agent acts for). Votes
//! follow [`gatehouse_approval`]'s rules; each vote is recorded durably in the held session's
//! audit trail *before* it counts, so an approval that could not be recorded never releases a
//! statement. Errors are `{"error": "…"}` with 400, 401, 403, 404, 405, 409, 413 or 503.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use gatehouse_approval::{ApprovalRequest, Approvals, State, VoteError};
use gatehouse_core::Principal;
use gatehouse_core::config::AdminConfig;
use gatehouse_identity::StaticKeys;
use gatehouse_recorder::{EventBody, LogReader, NewEvent, Recorder, render_transcript};
use pingora_core::protocols::http::ServerSession;
use pingora_http::ResponseHeader;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

use crate::endpoint::{Endpoint, Handler};

/// Largest request body read (a vote's comment).
const MAX_BODY: usize = 16 * 1024;
/// Longest comment kept with a vote.
const MAX_COMMENT: usize = 2000;
/// Time a client has for each read and write.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Successful key checks are remembered this long, so a CLI polling the API does not pay a
/// PBKDF2 run per request.
const AUTH_CACHE_TTL: Duration = Duration::from_secs(60);
const AUTH_CACHE_MAX: usize = 1024;

/// The API's state, shared by its connections.
pub struct AdminApi {
    approvals: Arc<Approvals>,
    recorder: Recorder,
    keys: Arc<StaticKeys>,
    /// The recorder's directory, read (read-only) for `/v1/sessions`.
    log_dir: std::path::PathBuf,
    admins: Vec<String>,
    auditors: Vec<String>,
    /// SHA-256 of `name:key` → who it authenticated, and when.
    auth_cache: Mutex<HashMap<[u8; 32], (Principal, Instant)>>,
    /// One key check (a PBKDF2 run) at a time: guessing keys costs a guesser time, and never
    /// more than one core of the gateway.
    key_checks: tokio::sync::Semaphore,
}

/// A response before it is written.
struct Reply {
    status: u16,
    body: serde_json::Value,
    /// `WWW-Authenticate` on a 401.
    challenge: bool,
}

impl Reply {
    fn ok(body: serde_json::Value) -> Reply {
        Reply {
            status: 200,
            body,
            challenge: false,
        }
    }

    fn error(status: u16, message: impl std::fmt::Display) -> Reply {
        Reply {
            status,
            body: serde_json::json!({ "error": message.to_string() }),
            challenge: status == 401,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct VoteBody {
    #[serde(default)]
    comment: String,
}

impl AdminApi {
    pub fn new(
        cfg: &AdminConfig,
        approvals: Arc<Approvals>,
        recorder: Recorder,
        keys: Arc<StaticKeys>,
        log_dir: std::path::PathBuf,
    ) -> Self {
        AdminApi {
            approvals,
            recorder,
            keys,
            log_dir,
            admins: cfg.admins.clone(),
            auditors: cfg.auditors.clone(),
            auth_cache: Mutex::new(HashMap::new()),
            key_checks: tokio::sync::Semaphore::new(1),
        }
    }

    fn in_any(p: &Principal, groups: &[String]) -> bool {
        p.groups.iter().any(|g| groups.contains(g))
    }

    fn roles(&self, p: &Principal) -> Vec<&'static str> {
        let mut roles = Vec::new();
        if Self::in_any(p, &self.admins) {
            roles.push("admin");
        }
        if Self::in_any(p, &self.auditors) {
            roles.push("auditor");
        }
        roles
    }

    fn may_see(&self, p: &Principal, r: &ApprovalRequest) -> bool {
        self.reads_everything(p)
            || Self::in_any(p, &r.approvers)
            || r.requester == p.display()
            || (p.kind == gatehouse_core::PrincipalKind::User
                && r.on_behalf_of.as_deref() == Some(p.id.as_str()))
    }

    /// The caller, from `Authorization: Basic name:key`.
    async fn authenticate(&self, header: Option<&[u8]>) -> Result<Principal, Reply> {
        let Some(h) = header else {
            return Err(Reply::error(401, "authentication required"));
        };
        let h = std::str::from_utf8(h).map_err(|_| Reply::error(401, "malformed Authorization header"))?;
        let Some((scheme, value)) = h.trim().split_once(' ') else {
            return Err(Reply::error(401, "malformed Authorization header"));
        };
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(Reply::error(
                401,
                "use Basic authentication with an identity and its access key",
            ));
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| Reply::error(401, "malformed Authorization header"))?;
        let Some((name, key)) = decoded.split_once(':') else {
            return Err(Reply::error(401, "malformed Authorization header"));
        };
        let digest: [u8; 32] = Sha256::digest(decoded.as_bytes()).into();
        if let Some(p) = self.cached(&digest) {
            return Ok(p);
        }
        let keys = self.keys.clone();
        let (name, key) = (name.to_string(), key.to_string());
        let Ok(_turn) = self.key_checks.acquire().await else {
            return Err(Reply::error(503, "authentication unavailable"));
        };
        // PBKDF2 is deliberately slow: keep it off the I/O threads.
        let checked = tokio::task::spawn_blocking(move || keys.verify_key(&name, &key)).await;
        match checked {
            Ok(Ok(p)) => {
                self.remember(digest, &p);
                Ok(p)
            }
            Ok(Err(_)) => Err(Reply::error(401, "invalid identity or access key")),
            Err(_) => Err(Reply::error(503, "authentication unavailable")),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (Principal, Instant)>> {
        match self.auth_cache.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<Principal> {
        let cache = self.cache();
        let (p, at) = cache.get(digest)?;
        (at.elapsed() < AUTH_CACHE_TTL).then(|| p.clone())
    }

    fn remember(&self, digest: [u8; 32], p: &Principal) {
        let mut cache = self.cache();
        if cache.len() >= AUTH_CACHE_MAX {
            cache.retain(|_, (_, at)| at.elapsed() < AUTH_CACHE_TTL);
            if cache.len() >= AUTH_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(digest, (p.clone(), Instant::now()));
    }

    /// Route one request. `body` is `None` when it was over [`MAX_BODY`].
    async fn handle(
        &self,
        method: &str,
        path: &str,
        query: &str,
        auth: Option<&[u8]>,
        body: Option<&[u8]>,
    ) -> Reply {
        let Some(route) = route(path) else {
            return Reply::error(404, "not found");
        };
        if !ROUTES.iter().any(|&(m, p)| p == route.pattern && m == method) {
            return Reply::error(405, "method not allowed");
        }
        if route.pattern == "/healthz" {
            return Reply::ok(serde_json::json!({"status": "ok"}));
        }
        let segments = route.segments;
        let caller = match self.authenticate(auth).await {
            Ok(p) => p,
            Err(r) => return r,
        };
        match (method, segments.as_slice()) {
            ("GET", ["v1", "whoami"]) => Reply::ok(serde_json::json!({
                "principal": caller.display(),
                "groups": caller.groups,
                "roles": self.roles(&caller),
            })),
            ("GET", ["v1", "approvals"]) => self.list(&caller, query),
            ("GET", ["v1", "approvals", id]) => match self.approvals.get(id) {
                Some(r) if self.may_see(&caller, &r) => Reply::ok(serde_json::json!({ "request": r })),
                // Not visible looks the same as absent.
                _ => Reply::error(404, format!("no approval request `{id}`")),
            },
            ("GET", ["v1", "sessions"]) => self.sessions(&caller, query).await,
            ("GET", ["v1", "sessions", id]) => self.session(&caller, id).await,
            ("GET", ["v1", "audit", "search"]) => self.search(&caller, query).await,
            ("POST", ["v1", "approvals", id, verb]) => {
                let Some(body) = body else {
                    return Reply::error(413, "request body too large");
                };
                let vote: VoteBody = if body.iter().all(u8::is_ascii_whitespace) {
                    VoteBody::default()
                } else {
                    match serde_json::from_slice(body) {
                        Ok(v) => v,
                        Err(e) => return Reply::error(400, format!("invalid JSON body: {e}")),
                    }
                };
                if vote.comment.len() > MAX_COMMENT {
                    return Reply::error(400, format!("comment longer than {MAX_COMMENT} bytes"));
                }
                self.vote(&caller, id, *verb == "approve", &vote.comment).await
            }
            _ => Reply::error(405, "method not allowed"),
        }
    }

    fn list(&self, caller: &Principal, query: &str) -> Reply {
        let mut state = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("state", "all")) => state = None,
                Some(("state", s)) => match State::parse(s) {
                    Some(s) => state = Some(s),
                    None => return Reply::error(400, format!("unknown state `{s}`")),
                },
                _ => return Reply::error(400, format!("unknown query parameter `{pair}`")),
            }
        }
        let visible: Vec<ApprovalRequest> = self
            .approvals
            .list(state)
            .into_iter()
            .filter(|r| self.may_see(caller, r))
            .collect();
        Reply::ok(serde_json::json!({ "requests": visible }))
    }

    /// Admins and auditors: every approval request and every session.
    fn reads_everything(&self, p: &Principal) -> bool {
        Self::in_any(p, &self.admins) || Self::in_any(p, &self.auditors)
    }

    async fn sessions(&self, caller: &Principal, query: &str) -> Reply {
        if !self.reads_everything(caller) {
            return Reply::error(403, "only admins and auditors read sessions");
        }
        let mut limit = 100usize;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("limit", n)) => match n.parse::<usize>() {
                    Ok(n @ 1..=1000) => limit = n,
                    _ => return Reply::error(400, "`limit` must be 1 to 1000"),
                },
                _ => return Reply::error(400, format!("unknown query parameter `{pair}`")),
            }
        }
        let dir = self.log_dir.clone();
        let read = tokio::task::spawn_blocking(move || LogReader::open(&dir)?.sessions()).await;
        match read {
            Ok(Ok(mut sessions)) => {
                sessions.truncate(limit);
                Reply::ok(serde_json::json!({ "sessions": sessions }))
            }
            _ => Reply::error(503, "the audit log cannot be read"),
        }
    }

    async fn search(&self, caller: &Principal, query: &str) -> Reply {
        if !self.reads_everything(caller) {
            return Reply::error(403, "only admins and auditors search the audit log");
        }
        let mut q = gatehouse_recorder::SearchQuery {
            from_us: i64::MIN,
            to_us: gatehouse_core::time::now_micros(),
            limit: 100,
            ..Default::default()
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let Some(value) = percent_decode(raw) else {
                return Reply::error(
                    400,
                    format!("query parameter `{name}` is not valid percent-encoded UTF-8"),
                );
            };
            let time = |v: &str| gatehouse_core::time::parse_instant(v);
            match name {
                "principal" => q.principal = Some(value),
                "target" => q.target = Some(value),
                "kind" => q.kind = Some(value),
                "decision" if matches!(value.as_str(), "allow" | "deny" | "hold") => q.decision = Some(value),
                "decision" => return Reply::error(400, "`decision` must be allow, deny or hold"),
                "policy" => q.policy = Some(value),
                "text" => q.text = Some(value),
                "from" | "to" => match time(&value) {
                    Ok(t) if name == "from" => q.from_us = t,
                    Ok(t) => q.to_us = t,
                    Err(e) => return Reply::error(400, format!("`{name}`: {e}")),
                },
                "limit" => match value.parse::<usize>() {
                    Ok(n @ 1..=1000) => q.limit = n,
                    _ => return Reply::error(400, "`limit` must be 1 to 1000"),
                },
                _ => return Reply::error(400, format!("unknown query parameter `{name}`")),
            }
        }
        let dir = self.log_dir.clone();
        let read = tokio::task::spawn_blocking(move || LogReader::open(&dir)?.search(&q)).await;
        match read {
            Ok(Ok(found)) => Reply::ok(serde_json::json!({
                "events": found.events,
                "truncated": found.truncated,
            })),
            _ => Reply::error(503, "the audit log cannot be read"),
        }
    }

    async fn session(&self, caller: &Principal, id: &str) -> Reply {
        if !self.reads_everything(caller) {
            return Reply::error(403, "only admins and auditors read sessions");
        }
        let dir = self.log_dir.clone();
        let sid = id.to_string();
        let read = tokio::task::spawn_blocking(move || {
            let r = LogReader::open(&dir)?;
            Ok::<_, gatehouse_recorder::RecorderError>((r.session(&sid)?, r.session_events(&sid)?))
        })
        .await;
        match read {
            Ok(Ok((Some(summary), events))) => Reply::ok(serde_json::json!({
                "summary": summary,
                "transcript": render_transcript(&events),
                "events": events,
            })),
            Ok(Ok((None, _))) => Reply::error(404, format!("no session `{id}`")),
            _ => Reply::error(503, "the audit log cannot be read"),
        }
    }

    async fn vote(&self, caller: &Principal, id: &str, approve: bool, comment: &str) -> Reply {
        let req = match self.approvals.check_vote(id, caller) {
            Ok(r) => r,
            Err(e) => return vote_error(self, caller, id, e),
        };
        // No record, no effect: the vote counts only once it is durable.
        let event = NewEvent::now(
            req.session_id.clone(),
            Some(caller.display()),
            EventBody::ApprovalVote {
                request: req.id.clone(),
                op: req.op,
                approve,
                comment: comment.to_string(),
            },
        );
        if self.recorder.append(event).await.is_err() {
            return Reply::error(503, "the audit log is unavailable; the vote was not counted");
        }
        match self.approvals.vote(id, caller, approve, comment) {
            Ok(r) => Reply::ok(serde_json::json!({ "request": r })),
            Err(e) => {
                // The request ended (or this approver voted) between the check and the vote:
                // say in the record that the vote just recorded did not count.
                self.recorder.append_nowait(NewEvent::now(
                    req.session_id.clone(),
                    Some(caller.display()),
                    EventBody::Notice {
                        level: "warn".into(),
                        message: format!("the vote on approval request {id} was not counted: {e}"),
                    },
                ));
                vote_error(self, caller, id, e)
            }
        }
    }
}

fn vote_error(api: &AdminApi, caller: &Principal, id: &str, e: VoteError) -> Reply {
    match e {
        VoteError::NotFound(_) => Reply::error(404, e),
        // Someone who may not even see the request learns nothing about it.
        _ if api.approvals.get(id).is_some_and(|r| !api.may_see(caller, &r)) => {
            Reply::error(404, format!("no approval request `{id}`"))
        }
        VoteError::NotPending(..) | VoteError::AlreadyVoted | VoteError::Expired(_) => Reply::error(409, e),
        VoteError::SelfApproval | VoteError::NotHuman | VoteError::NotAnApprover(_) => Reply::error(403, e),
    }
}

/// Every route (method, path pattern), exactly as `admin-openapi.json` describes them: a test
/// keeps the two equal.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/v1/whoami"),
    ("GET", "/v1/approvals"),
    ("GET", "/v1/approvals/{id}"),
    ("POST", "/v1/approvals/{id}/approve"),
    ("POST", "/v1/approvals/{id}/deny"),
    ("GET", "/v1/sessions"),
    ("GET", "/v1/sessions/{id}"),
    ("GET", "/v1/audit/search"),
];

/// `%XX` and `+` decoded; `None` for a bad escape or invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// A path matched against [`ROUTES`].
struct Route<'a> {
    pattern: &'static str,
    segments: Vec<&'a str>,
}

/// The route pattern `path` matches (`{id}` stands for any one non-empty segment).
fn route(path: &str) -> Option<Route<'_>> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    ROUTES.iter().find_map(|&(_, pattern)| {
        let parts: Vec<&str> = pattern.trim_matches('/').split('/').collect();
        let fits = parts.len() == segments.len()
            && parts
                .iter()
                .zip(&segments)
                .all(|(p, s)| p == s || (*p == "{id}" && !s.is_empty()));
        fits.then(|| Route {
            pattern,
            segments: segments.clone(),
        })
    })
}

/// The admin API endpoint, bound but not yet serving.
pub fn endpoint(addr: SocketAddr, api: Arc<AdminApi>) -> std::io::Result<Endpoint> {
    let handler: Handler = Arc::new(move |tcp| {
        let api = api.clone();
        Box::pin(async move { connection(tcp, &api).await })
    });
    Endpoint::bind("admin", addr, handler)
}

/// Serve one request on a connection (no keep-alive: the API is not on any hot path).
async fn connection(tcp: TcpStream, api: &AdminApi) {
    let stream: pingora_core::protocols::Stream =
        Box::new(pingora_core::protocols::l4::stream::Stream::from(tcp));
    let mut session = ServerSession::new_http1(stream);
    session.set_keepalive(None);
    session.set_read_timeout(Some(IO_TIMEOUT));
    session.set_write_timeout(Some(IO_TIMEOUT));
    let reply = match session.read_request().await {
        Ok(true) => {
            let req = session.req_header();
            let method = req.method.as_str().to_string();
            let path = req.uri.path().to_string();
            let query = req.uri.query().unwrap_or_default().to_string();
            let auth = req.headers.get("authorization").map(|v| v.as_bytes().to_vec());
            match read_body(&mut session).await {
                Ok(body) => {
                    api.handle(&method, &path, &query, auth.as_deref(), body.as_deref())
                        .await
                }
                Err(()) => Reply::error(400, "could not read the request body"),
            }
        }
        Ok(false) => return,
        Err(_) => Reply::error(400, "malformed request"),
    };
    let _ = respond(&mut session, reply).await;
    let _ = session.finish().await;
}

/// The body, or `None` when it is over [`MAX_BODY`] (the rest is drained).
async fn read_body(session: &mut ServerSession) -> Result<Option<Vec<u8>>, ()> {
    let mut body = Vec::new();
    while let Some(chunk) = session.read_request_body().await.map_err(|_| ())? {
        if body.len() + chunk.len() > MAX_BODY {
            let _ = session.drain_request_body().await;
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

async fn respond(session: &mut ServerSession, reply: Reply) -> pingora_core::Result<()> {
    let mut body = serde_json::to_vec_pretty(&reply.body).unwrap_or_default();
    body.push(b'\n');
    let mut head = ResponseHeader::build(reply.status, Some(4))?;
    head.insert_header("content-type", "application/json")?;
    head.insert_header("content-length", body.len().to_string())?;
    head.insert_header("cache-control", "no-store")?;
    if reply.challenge {
        head.insert_header("www-authenticate", "Basic realm=\"gatehouse\"")?;
    }
    session.write_response_header(Box::new(head)).await?;
    session.write_response_body(Bytes::from(body), true).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests;
