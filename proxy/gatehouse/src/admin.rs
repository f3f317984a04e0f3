//! The admin API (DESIGN.md §7): JSON over HTTP/1.1 on `[admin] listen`, parsed by pingora's
//! HTTP server session on an [`Endpoint`] (its own pingora service and thread).
//!
//! Every route but `GET /healthz` is authenticated: an identity's access key (the one it uses
//! as its PostgreSQL password) in `Authorization: Basic` (name and key), checked against the
//! identity's SCRAM verifier, or, with `[[oidc]]` issuers configured, a token from one of them
//! in `Authorization: Bearer` (checked as for a PostgreSQL connection; its groups decide the
//! role). With `[admin] tls_cert`/`tls_key` it is served over TLS (rustls) and may listen on
//! any address; without, the config accepts only a loopback address.
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
//! | `POST /v1/access/requests` | any identity | `{"target", "duration_secs", "reason"}`: a just-in-time access request (an approval request with action `access`, decided with the routes above) |
//! | `GET /v1/access/grants` | any identity | the caller's active grants (admins, auditors: all) |
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
use gatehouse_approval::access::{Grant, Grants};
use gatehouse_approval::{ApprovalRequest, Approvals, NewRequest, State, VoteError};
use gatehouse_core::Principal;
use gatehouse_core::config::{AccessConfig, AdminConfig};
use gatehouse_identity::{AuthError, IdentityProvider, OidcProvider, StaticKeys};
use gatehouse_recorder::{EventBody, LogReader, NewEvent, Recorder, render_transcript};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
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
    /// OIDC issuers whose tokens are accepted as `Authorization: Bearer`.
    oidc: Option<Arc<OidcProvider>>,
    /// The recorder's directory, read (read-only) for `/v1/sessions`.
    log_dir: std::path::PathBuf,
    admins: Vec<String>,
    auditors: Vec<String>,
    /// SHA-256 of `name:key` → who it authenticated, and when.
    auth_cache: Mutex<HashMap<[u8; 32], (Principal, Instant)>>,
    /// One key check (a PBKDF2 run) at a time: guessing keys costs a guesser time, and never
    /// more than one core of the gateway.
    key_checks: tokio::sync::Semaphore,
    /// Just-in-time access: the grants and who approves them (`None`: no access requests).
    access: Option<(Arc<Grants>, AccessConfig)>,
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
        oidc: Option<Arc<OidcProvider>>,
        log_dir: std::path::PathBuf,
    ) -> Self {
        AdminApi {
            approvals,
            recorder,
            keys,
            oidc,
            log_dir,
            admins: cfg.admins.clone(),
            auditors: cfg.auditors.clone(),
            auth_cache: Mutex::new(HashMap::new()),
            key_checks: tokio::sync::Semaphore::new(1),
            access: None,
        }
    }

    /// Serve access requests and grants.
    pub fn with_access(mut self, grants: Option<Arc<Grants>>, cfg: AccessConfig) -> Self {
        self.access = grants.map(|g| (g, cfg));
        self
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

    /// The caller, from `Authorization: Basic name:key` or `Authorization: Bearer <OIDC token>`.
    async fn authenticate(&self, header: Option<&[u8]>) -> Result<Principal, Reply> {
        let Some(h) = header else {
            return Err(Reply::error(401, "authentication required"));
        };
        let h = std::str::from_utf8(h).map_err(|_| Reply::error(401, "malformed Authorization header"))?;
        let Some((scheme, value)) = h.trim().split_once(' ') else {
            return Err(Reply::error(401, "malformed Authorization header"));
        };
        if scheme.eq_ignore_ascii_case("bearer")
            && let Some(oidc) = &self.oidc
        {
            return match oidc.verify_token(value.trim()).await {
                // A name with an access key belongs to that identity, whatever an IdP says
                // (the PostgreSQL listener asks the access keys first for the same reason).
                Ok(a) if self.keys.lookup(&a.principal.id).is_some() => Err(Reply::error(
                    401,
                    format!(
                        "the token names `{}`, an identity that signs in with its access key",
                        a.principal.id
                    ),
                )),
                Ok(a) => Ok(a.principal),
                // Why the IdP is unreachable is for the gateway's log, not for callers.
                Err(AuthError::Unavailable(_)) => Err(Reply::error(503, "identity provider unavailable")),
                Err(e) => Err(Reply::error(401, e)),
            };
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            let how = if self.oidc.is_some() {
                "use Bearer authentication with an OIDC token, or Basic with an identity and its access key"
            } else {
                "use Basic authentication with an identity and its access key"
            };
            return Err(Reply::error(401, how));
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
            ("GET", ["v1", "approvals"]) => self.list(&caller, query).await,
            ("GET", ["v1", "approvals", id]) => match self.approvals.get(id).await {
                Ok(Some(r)) if self.may_see(&caller, &r) => Reply::ok(serde_json::json!({ "request": r })),
                Err(e) => Reply::error(503, e),
                // Not visible looks the same as absent.
                Ok(_) => Reply::error(404, format!("no approval request `{id}`")),
            },
            ("GET", ["v1", "sessions"]) => self.sessions(&caller, query).await,
            ("GET", ["v1", "sessions", id]) => self.session(&caller, id).await,
            ("GET", ["v1", "audit", "search"]) => self.search(&caller, query).await,
            ("POST", ["v1", "access", "requests"]) => match body {
                None => Reply::error(413, "request body too large"),
                Some(b) => self.request_access(&caller, b).await,
            },
            ("GET", ["v1", "access", "grants"]) => self.grants(&caller).await,
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

    async fn list(&self, caller: &Principal, query: &str) -> Reply {
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
        let all = match self.approvals.list_ending_abandoned(state).await {
            Ok((all, ended)) => {
                // Requests whose gateway stopped before a decision end here; nobody else will
                // record how they ended.
                for r in ended {
                    // In the gateway's own session: the request's session may be another
                    // gateway's, and a record here must not open a stub session that never
                    // ends.
                    self.recorder.append_nowait(
                        NewEvent::now(
                            gatehouse_recorder::GATEWAY_SESSION,
                            Some(r.requester.clone()),
                            EventBody::Notice {
                                level: "warn".into(),
                                message: format!(
                                    // Not the operation's text: the hold's record has it,
                                    // with literals redacted as configured.
                                    "approval request {} (op {} of session {} on {}) timed out: {}",
                                    r.id,
                                    r.op,
                                    r.session_id,
                                    r.target,
                                    r.end_reason
                                        .as_deref()
                                        .unwrap_or("no decision before its deadline")
                                ),
                            },
                        )
                        .acting_for(r.on_behalf_of.clone(), Vec::new()),
                    );
                }
                all
            }
            Err(e) => return Reply::error(503, e),
        };
        let visible: Vec<ApprovalRequest> = all.into_iter().filter(|r| self.may_see(caller, r)).collect();
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
                "session" => q.session = Some(value),
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

    /// `POST /v1/access/requests`: record the request, open it for the approvers, and wait for
    /// it in the background (a grant on approval, its expiry recorded when it comes).
    async fn request_access(&self, caller: &Principal, body: &[u8]) -> Reply {
        let Some((grants, cfg)) = &self.access else {
            return Reply::error(404, "access requests are not enabled on this gateway");
        };
        let req: AccessBody = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return Reply::error(400, format!("invalid JSON body: {e}")),
        };
        let target = req.target.trim();
        let reason = req.reason.trim();
        if target.is_empty() || target.len() > 256 {
            return Reply::error(400, "`target` must name a target");
        }
        if reason.is_empty() || reason.len() > MAX_COMMENT {
            return Reply::error(
                400,
                format!("`reason` must say why, in at most {MAX_COMMENT} bytes"),
            );
        }
        if req.duration_secs == 0 || req.duration_secs > cfg.max_duration_secs {
            return Reply::error(
                400,
                format!(
                    "`duration_secs` must be 1 to {} (this gateway's longest grant)",
                    cfg.max_duration_secs
                ),
            );
        }
        if cfg.approvers.is_empty() {
            return Reply::error(
                409,
                "nobody approves access requests here (`[access] approvers` is empty)",
            );
        }
        let id = Approvals::new_id();
        let session = format!("access-{id}");
        let step = |step: &str, expires_us: Option<i64>| EventBody::Access {
            request: id.clone(),
            step: step.to_string(),
            target: target.to_string(),
            duration_secs: req.duration_secs,
            reason: reason.to_string(),
            expires_us,
        };
        // No record, no request.
        let event = NewEvent::now(session.clone(), Some(caller.display()), step("requested", None))
            .acting_for(caller.on_behalf_of.clone(), caller.actor_chain.clone());
        if self.recorder.append(event).await.is_err() {
            return Reply::error(503, "the audit log is unavailable; the request was not opened");
        }
        let (opened, rx) = self
            .approvals
            .open(
                id.clone(),
                NewRequest {
                    session_id: session,
                    op: 0,
                    requester: caller.clone(),
                    target: target.to_string(),
                    action: "access".into(),
                    operation: format!("access to {target} for {}", human_duration(req.duration_secs)),
                    kind: "access".into(),
                    approvers: cfg.approvers.clone(),
                    required_groups: Vec::new(),
                    reason: reason.to_string(),
                    policy_ids: Vec::new(),
                    min_approvals: cfg.min_approvals,
                    timeout_secs: cfg.request_timeout_secs,
                },
            )
            .await;
        let not_opened = rx.borrow().clone();
        if let Some(ended) = not_opened {
            // The store refused it: say so in the record and to the caller.
            let why = ended.end_reason.unwrap_or_default();
            self.recorder.append_nowait(NewEvent::now(
                format!("access-{id}"),
                Some(caller.display()),
                EventBody::Notice {
                    level: "error".into(),
                    message: format!("access request {id} was not opened: {why}"),
                },
            ));
            return Reply::error(503, format!("the request was not opened: {why}"));
        }
        tokio::spawn(await_access(
            self.approvals.clone(),
            grants.clone(),
            self.recorder.clone(),
            caller.display(),
            opened.clone(),
            req.duration_secs,
            rx,
        ));
        Reply::ok(serde_json::json!({ "request": opened }))
    }

    /// `GET /v1/access/grants`: the caller's active grants (admins and auditors: everyone's).
    async fn grants(&self, caller: &Principal) -> Reply {
        let Some((grants, _)) = &self.access else {
            return Reply::error(404, "access requests are not enabled on this gateway");
        };
        let who = caller.display();
        let filter = (!self.reads_everything(caller)).then_some(who.as_str());
        match grants.list(filter, gatehouse_core::time::now_micros()).await {
            Ok(list) => Reply::ok(serde_json::json!({ "grants": list })),
            Err(e) => Reply::error(503, e),
        }
    }

    async fn vote(&self, caller: &Principal, id: &str, approve: bool, comment: &str) -> Reply {
        let req = match self.approvals.check_vote(id, caller).await {
            Ok(r) => r,
            Err(e) => return vote_error(self, caller, id, e).await,
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
        match self.approvals.vote(id, caller, approve, comment).await {
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
                vote_error(self, caller, id, e).await
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessBody {
    target: String,
    duration_secs: u64,
    reason: String,
}

fn human_duration(secs: u64) -> String {
    match secs {
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Wait for an access request's decision (or its timeout); on approval create the grant, and
/// record every outcome in the request's session.
async fn await_access(
    approvals: Arc<Approvals>,
    grants: Arc<Grants>,
    recorder: Recorder,
    requester: String,
    req: ApprovalRequest,
    duration_secs: u64,
    mut rx: tokio::sync::watch::Receiver<Option<ApprovalRequest>>,
) {
    let wait = std::time::Duration::from_micros(
        u64::try_from(req.expires_us.saturating_sub(gatehouse_core::time::now_micros())).unwrap_or(0),
    );
    let decided = tokio::time::timeout(wait, rx.wait_for(Option::is_some))
        .await
        .ok()
        .and_then(|r| r.ok().and_then(|v| v.clone()));
    let ended = match decided {
        Some(r) => r,
        None => {
            let why = format!("no decision within {}s", wait.as_secs());
            let ended = match approvals.finish(&req.id, State::TimedOut, &why).await {
                Some(r) => Some(r),
                // Decided through another gateway just before; the store has it.
                None => {
                    let seen = rx.borrow().clone();
                    match seen {
                        Some(r) => Some(r),
                        None => approvals.get(&req.id).await.ok().flatten(),
                    }
                }
            };
            match ended {
                Some(r) => r,
                None => return,
            }
        }
    };
    let event = |step: &str, expires_us: Option<i64>| {
        NewEvent::now(
            req.session_id.clone(),
            Some(requester.clone()),
            EventBody::Access {
                request: req.id.clone(),
                step: step.to_string(),
                target: req.target.clone(),
                duration_secs,
                reason: req.reason.clone(),
                expires_us,
            },
        )
        .acting_for(req.on_behalf_of.clone(), Vec::new())
    };
    if ended.state != State::Approved {
        let _ = recorder.append(event(ended.state.as_str(), None)).await;
        return;
    }
    let now = gatehouse_core::time::now_micros();
    let grant = Grant {
        id: req.id.clone(),
        principal: requester.clone(),
        on_behalf_of: req.on_behalf_of.clone(),
        target: req.target.clone(),
        reason: req.reason.clone(),
        granted_us: now,
        expires_us: now
            .saturating_add(i64::try_from(duration_secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX)),
        approvers: ended
            .votes
            .iter()
            .filter(|v| v.approve)
            .map(|v| v.approver.clone())
            .collect(),
    };
    // The grant counts only once recorded and kept; otherwise it is not given.
    if recorder
        .append(event("granted", Some(grant.expires_us)))
        .await
        .is_err()
    {
        tracing::warn!(request = %req.id, "access grant not given: the audit log is unavailable");
        return;
    }
    if let Err(e) = grants.add(grant, now).await {
        tracing::warn!(request = %req.id, "access grant not kept: {e}");
        recorder.append_nowait(NewEvent::now(
            req.session_id.clone(),
            Some(requester.clone()),
            EventBody::Notice {
                level: "error".into(),
                message: format!(
                    "access grant {} was approved but could not be stored ({e}); it is not in effect",
                    req.id
                ),
            },
        ));
    }
    // Its expiry is recorded by `record_expiries` (on whichever gateway claims it).
}

/// Record the expiry of every grant as it comes, each once (also among gateways sharing a
/// store); grants that expired long before (no gateway was running) say so. Runs forever.
pub async fn record_expiries(grants: Grants, recorder: Recorder) {
    let mut failing = false;
    loop {
        let now = gatehouse_core::time::now_micros();
        match grants.claim_expired(now).await {
            Ok(expired) => {
                failing = false;
                for g in expired {
                    let late_s = (now - g.expires_us) / 1_000_000;
                    let note = if late_s > 10 {
                        format!(" (recorded {late_s}s after it expired: no gateway was running)")
                    } else {
                        String::new()
                    };
                    // The expiry is claimed: it is a fact to record, not a request to refuse.
                    // Unawaited events outlive a log outage in the writer's backlog and are
                    // written once it is writable again (an awaited append that fails would
                    // be lost here, the claim already made).
                    recorder.append_nowait(expiry_event(&g, &note));
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!("cannot check access grants for expiry: {e}");
            }
            Err(_) => {}
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// The `expired` step of a grant; `note` is added to its reason (e.g. that the gateway was
/// not running when it expired).
pub fn expiry_event(grant: &Grant, note: &str) -> NewEvent {
    NewEvent::now(
        format!("access-{}", grant.id),
        Some(grant.principal.clone()),
        EventBody::Access {
            request: grant.id.clone(),
            step: "expired".into(),
            target: grant.target.clone(),
            duration_secs: u64::try_from((grant.expires_us - grant.granted_us) / 1_000_000).unwrap_or(0),
            reason: format!("{}{note}", grant.reason),
            expires_us: Some(grant.expires_us),
        },
    )
    .acting_for(grant.on_behalf_of.clone(), Vec::new())
}

async fn vote_error(api: &AdminApi, caller: &Principal, id: &str, e: VoteError) -> Reply {
    if let VoteError::Unavailable(_) = e {
        return Reply::error(503, e);
    }
    let hidden = matches!(api.approvals.get(id).await, Ok(Some(r)) if !api.may_see(caller, &r));
    match e {
        VoteError::NotFound(_) => Reply::error(404, e),
        // Someone who may not even see the request learns nothing about it.
        _ if hidden => Reply::error(404, format!("no approval request `{id}`")),
        VoteError::Unavailable(_) => Reply::error(503, e),
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
    ("POST", "/v1/access/requests"),
    ("GET", "/v1/access/grants"),
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
/// Bind the API; with `tls`, every connection must complete a TLS handshake first.
pub fn endpoint(
    addr: SocketAddr,
    api: Arc<AdminApi>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<Endpoint> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let handler: Handler = Arc::new(move |tcp| {
        let api = api.clone();
        let acceptor = acceptor.clone();
        Box::pin(async move {
            let stream = match acceptor {
                None => pingora_core::protocols::l4::stream::Stream::from(tcp),
                Some(a) => match tokio::time::timeout(IO_TIMEOUT, a.accept(tcp)).await {
                    Ok(Ok(tls)) => pingora_core::protocols::l4::stream::Stream::from(
                        VirtualSocketStream::new(Box::new(TlsSocket(tls))),
                    ),
                    // A failed or stalled handshake: nothing to answer.
                    _ => return,
                },
            };
            connection(stream, &api).await
        })
    });
    Endpoint::bind("admin", addr, handler)
}

/// A TLS connection as a pingora stream.
#[derive(Debug)]
struct TlsSocket(tokio_rustls::server::TlsStream<TcpStream>);

impl tokio::io::AsyncRead for TlsSocket {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsSocket {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl VirtualSocket for TlsSocket {
    fn set_socket_option(&self, _opt: VirtualSockOpt) -> std::io::Result<()> {
        Ok(())
    }
}

/// Serve one request on a connection (no keep-alive: the API is not on any hot path).
async fn connection(stream: pingora_core::protocols::l4::stream::Stream, api: &AdminApi) {
    let stream: pingora_core::protocols::Stream = Box::new(stream);
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
