//! `gatehouse approvals list|show|approve|deny`: the admin API's approval routes from a shell.
//!
//! The API address comes from `--url` or `GATEHOUSE_ADMIN_URL`; the caller is `--user` or
//! `GATEHOUSE_USER`, with the access key in `GATEHOUSE_KEY`, or an OIDC token in
//! `GATEHOUSE_TOKEN` (`gatehouse login`); never an argument: arguments are visible to every
//! user of the machine in the process list. An `https://` API is verified against the Web PKI
//! roots, or against the CA bundle in `GATEHOUSE_ADMIN_CA`.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use gatehouse_approval::ApprovalRequest;
use gatehouse_core::time::rfc3339_micros;
use gatehouse_recorder::escape_controls;

/// Where and as whom to call the admin API.
pub struct Client {
    base: String,
    auth: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(url: &str, user: &str, key: &str) -> Client {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{key}"));
        Self::with_auth(url, format!("Basic {token}"))
    }

    /// Authenticated with an OIDC token (`gatehouse login`) instead of an access key.
    pub fn with_token(url: &str, token: &str) -> Client {
        Self::with_auth(url, format!("Bearer {}", token.trim()))
    }

    fn with_auth(url: &str, auth: String) -> Client {
        Self::with_auth_and_ca(url, auth, Vec::new())
    }

    /// `roots`: CA certificates to trust for an `https://` API instead of the Web PKI.
    fn with_auth_and_ca(url: &str, auth: String, roots: Vec<ureq::tls::Certificate<'static>>) -> Client {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)));
        if !roots.is_empty() {
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
                    .build(),
            );
        }
        let agent: ureq::Agent = config.build().into();
        Client {
            base: url.trim_end_matches('/').to_string(),
            auth,
            agent,
        }
    }

    /// The CA bundle named by `GATEHOUSE_ADMIN_CA` (PEM), for an API served with its own
    /// certificate authority.
    fn roots_from_env() -> Result<Vec<ureq::tls::Certificate<'static>>> {
        let Some(path) = std::env::var_os("GATEHOUSE_ADMIN_CA") else {
            return Ok(Vec::new());
        };
        let pem = std::fs::read(&path)
            .with_context(|| format!("GATEHOUSE_ADMIN_CA: cannot read {}", path.to_string_lossy()))?;
        let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            bail!("GATEHOUSE_ADMIN_CA: no certificate in {}", path.to_string_lossy());
        }
        Ok(certs)
    }

    /// From the environment, with explicit values first: an OIDC token in `GATEHOUSE_TOKEN`,
    /// else an identity (`--user`/`GATEHOUSE_USER`) and its key in `GATEHOUSE_KEY`.
    pub fn from_env(url: Option<String>, user: Option<String>) -> Result<Client> {
        let url = url
            .or_else(|| std::env::var("GATEHOUSE_ADMIN_URL").ok())
            .ok_or_else(|| anyhow!("no admin API address: pass --url or set GATEHOUSE_ADMIN_URL"))?;
        let roots = Self::roots_from_env()?;
        // Credentials go in every request: never in the clear across a network.
        if let Some(rest) = url.strip_prefix("http://") {
            let host = rest.split(['/', '?']).next().unwrap_or("");
            let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
            if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
                bail!("refusing to send credentials to {url} in the clear: use https://");
            }
            if !roots.is_empty() {
                bail!("GATEHOUSE_ADMIN_CA is set but {url} is not https://");
            }
        }
        if let Ok(token) = std::env::var("GATEHOUSE_TOKEN")
            && !token.trim().is_empty()
        {
            return Ok(Self::with_auth_and_ca(
                &url,
                format!("Bearer {}", token.trim()),
                roots,
            ));
        }
        let user = user
            .or_else(|| std::env::var("GATEHOUSE_USER").ok())
            .ok_or_else(|| anyhow!("no identity: set GATEHOUSE_TOKEN (see `gatehouse login`), or pass --user or set GATEHOUSE_USER"))?;
        let key = std::env::var("GATEHOUSE_KEY").map_err(|_| {
            anyhow!(
                "set GATEHOUSE_KEY to your access key, or GATEHOUSE_TOKEN to a token from `gatehouse login`"
            )
        })?;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{key}"));
        Ok(Self::with_auth_and_ca(&url, format!("Basic {basic}"), roots))
    }

    fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let response = match (method, body) {
            ("POST", Some(b)) => self
                .agent
                .post(&url)
                .header("Authorization", &self.auth)
                .send_json(&b),
            _ => self.agent.get(&url).header("Authorization", &self.auth).call(),
        }
        .with_context(|| format!("calling the admin API at {}", self.base))?;
        let status = response.status().as_u16();
        let value: serde_json::Value = response
            .into_body()
            .read_json()
            .with_context(|| format!("reading the admin API's answer (HTTP {status})"))?;
        if status != 200 {
            let message = value
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("(no message)");
            bail!("{message} (HTTP {status})");
        }
        Ok(value)
    }

    pub fn list(&self, state: &str) -> Result<Vec<ApprovalRequest>> {
        let v = self.call("GET", &format!("/v1/approvals?state={state}"), None)?;
        serde_json::from_value(v.get("requests").cloned().unwrap_or_default()).context("unexpected answer")
    }

    pub fn show(&self, id: &str) -> Result<ApprovalRequest> {
        let v = self.call("GET", &format!("/v1/approvals/{}", path_segment(id)?), None)?;
        serde_json::from_value(v.get("request").cloned().unwrap_or_default()).context("unexpected answer")
    }

    pub fn vote(&self, id: &str, approve: bool, comment: &str) -> Result<ApprovalRequest> {
        let verb = if approve { "approve" } else { "deny" };
        let body = serde_json::json!({ "comment": comment });
        let v = self.call(
            "POST",
            &format!("/v1/approvals/{}/{verb}", path_segment(id)?),
            Some(body),
        )?;
        serde_json::from_value(v.get("request").cloned().unwrap_or_default()).context("unexpected answer")
    }

    /// Ask for just-in-time access to `target` for `duration_secs`.
    pub fn request_access(&self, target: &str, duration_secs: u64, reason: &str) -> Result<ApprovalRequest> {
        let body = serde_json::json!({ "target": target, "duration_secs": duration_secs, "reason": reason });
        let v = self.call("POST", "/v1/access/requests", Some(body))?;
        serde_json::from_value(v.get("request").cloned().unwrap_or_default()).context("unexpected answer")
    }

    /// The caller's active grants (everyone's for admins and auditors).
    pub fn grants(&self) -> Result<Vec<gatehouse_approval::access::Grant>> {
        let v = self.call("GET", "/v1/access/grants", None)?;
        serde_json::from_value(v.get("grants").cloned().unwrap_or_default()).context("unexpected answer")
    }
}

/// Request ids are `ap-` and hex digits; anything else cannot name one.
fn path_segment(id: &str) -> Result<&str> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        bail!("`{id}` is not an approval request id");
    }
    Ok(id)
}

/// One line per request: id, state, age, requester, target, approvers, operation.
pub fn render_list(requests: &[ApprovalRequest]) -> String {
    if requests.is_empty() {
        return "no approval requests\n".to_string();
    }
    let mut out = String::new();
    for r in requests {
        let _ = writeln!(
            out,
            "{}  {:<9}  {}  {} on {}  approvers: {}  [{}] {}",
            r.id,
            r.state.as_str(),
            rfc3339_micros(r.created_us),
            r.requester,
            r.target,
            r.approvers.join(", "),
            r.kind,
            one_line(&r.operation, 80)
        );
    }
    out
}

/// Everything an approver needs to decide.
pub fn render_one(r: &ApprovalRequest) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "request    {}", r.id);
    let _ = writeln!(out, "state      {}", r.state.as_str());
    let _ = write!(out, "requester  {}", r.requester);
    if let Some(h) = &r.on_behalf_of {
        let _ = write!(out, " (on behalf of {h})");
    }
    out.push('\n');
    let _ = writeln!(out, "session    {} (op {})", r.session_id, r.op);
    let _ = writeln!(out, "target     {}", r.target);
    let _ = writeln!(out, "action     {} [{}]", r.action, r.kind);
    let _ = writeln!(out, "why        {}", r.reason);
    let _ = writeln!(
        out,
        "approvers  {} ({} approval{} needed)",
        r.approvers.join(", "),
        r.min_approvals,
        if r.min_approvals == 1 { "" } else { "s" }
    );
    let _ = writeln!(out, "opened     {}", rfc3339_micros(r.created_us));
    let _ = writeln!(out, "expires    {}", rfc3339_micros(r.expires_us));
    if let Some(d) = r.decided_us {
        let _ = writeln!(out, "ended      {}", rfc3339_micros(d));
    }
    if let Some(why) = &r.end_reason {
        let _ = writeln!(out, "end reason {why}");
    }
    for v in &r.votes {
        let _ = write!(
            out,
            "vote       {} by {} at {}",
            if v.approve { "approve" } else { "deny" },
            v.approver,
            rfc3339_micros(v.time_us)
        );
        if !v.comment.is_empty() {
            let _ = write!(out, ": {}", one_line(&v.comment, 200));
        }
        out.push('\n');
    }
    out.push_str("operation\n");
    for line in r.operation.lines() {
        let _ = writeln!(out, "    {}", escape_controls(line));
    }
    out
}

fn one_line(s: &str, max: usize) -> String {
    let flat = escape_controls(&s.split_whitespace().collect::<Vec<_>>().join(" "));
    if flat.chars().count() <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max).collect();
        format!("{cut}…")
    }
}
