//! Telling approvers: a webhook per approver group, called when a request opens and when it
//! ends (approved, denied, timed out, withdrawn).
//!
//! Deliveries never block a hold: [`Notifier::notify`] only enqueues. One worker thread posts
//! each message (JSON, or a Slack-compatible `{"text": …}`), signed with an HMAC-SHA256 of the
//! body when the webhook has a secret (`X-Gatehouse-Signature: sha256=HEX`), and retries a
//! failed attempt (no answer, or a status other than 2xx) with exponential backoff (1 s, 2 s,
//! 4 s, … capped at 60 s) up to `max_attempts`. Every delivery's outcome goes to the `report`
//! callback, which records it in the request's session; a full queue is reported as a failure.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ApprovalRequest;

/// Messages waiting for delivery (first attempts and retries); more are reported as failed.
const QUEUE: usize = 1024;
/// Time one attempt may take, connection included.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How the message body looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{"event": "approval.requested" | "approval.ended", "request": {…}}`.
    Json,
    /// `{"text": "…"}`, as Slack (and Mattermost, Teams' Slack-compatible hooks) accept.
    Slack,
}

/// One configured webhook.
#[derive(Clone)]
pub struct Webhook {
    pub url: String,
    /// Approver groups whose requests it hears about; empty: every request.
    pub groups: Vec<String>,
    pub format: Format,
    pub secret: Option<String>,
    pub max_attempts: u32,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &redact_url(&self.url))
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

/// Which step of a request a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Requested,
    Ended,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Requested => "approval.requested",
            Step::Ended => "approval.ended",
        }
    }
}

/// The outcome of one message to one webhook, for the audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The webhook's URL without query or credentials (Slack puts its secret in the path:
    /// only scheme, host and port are kept).
    pub webhook: String,
    pub request: String,
    pub session_id: String,
    pub step: Step,
    pub attempts: u32,
    /// `None`: delivered.
    pub error: Option<String>,
}

/// Receives every delivery outcome; must not block.
pub type Report = Arc<dyn Fn(Delivery) + Send + Sync>;

struct Job {
    hook: usize,
    body: Vec<u8>,
    request: String,
    session_id: String,
    step: Step,
    attempts: u32,
}

/// Queues messages for the worker thread.
pub struct Notifier {
    tx: SyncSender<Job>,
    hooks: Arc<Vec<Webhook>>,
    report: Report,
}

/// `scheme://host:port` of a URL: what records and logs may show of a webhook.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    format!("{scheme}://{host}")
}

impl Notifier {
    /// Start the worker thread. `None` when there are no webhooks.
    pub fn start(hooks: Vec<Webhook>, report: Report) -> std::io::Result<Option<Notifier>> {
        if hooks.is_empty() {
            return Ok(None);
        }
        let hooks = Arc::new(hooks);
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let worker_hooks = hooks.clone();
        let worker_report = report.clone();
        std::thread::Builder::new()
            .name("gatehouse-notify".into())
            .spawn(move || worker(rx, worker_hooks, worker_report))?;
        Ok(Some(Notifier { tx, hooks, report }))
    }

    /// Queue a message about `req` to every webhook serving one of its approver groups.
    pub fn notify(&self, step: Step, req: &ApprovalRequest) {
        for (i, hook) in self.hooks.iter().enumerate() {
            if !hook.groups.is_empty() && !hook.groups.iter().any(|g| req.approvers.contains(g)) {
                continue;
            }
            let job = Job {
                hook: i,
                body: body(hook.format, step, req),
                request: req.id.clone(),
                session_id: req.session_id.clone(),
                step,
                attempts: 0,
            };
            match self.tx.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => (self.report)(Delivery {
                    webhook: redact_url(&hook.url),
                    request: job.request,
                    session_id: job.session_id,
                    step,
                    attempts: 0,
                    error: Some("the notification queue is full".into()),
                }),
            }
        }
    }
}

/// The message body for `step` of `req`.
pub fn body(format: Format, step: Step, req: &ApprovalRequest) -> Vec<u8> {
    let value = match format {
        Format::Json => serde_json::json!({
            "event": step.as_str(),
            "request": req,
            "approve": format!("gatehouse approvals approve {}", req.id),
            "deny": format!("gatehouse approvals deny {}", req.id),
        }),
        Format::Slack => serde_json::json!({ "text": slack_text(step, req) }),
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

fn slack_text(step: Step, req: &ApprovalRequest) -> String {
    // Slack's mrkdwn escapes: &, <, > (a statement may contain them).
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let operation: String = req.operation.chars().take(1500).collect();
    match step {
        Step::Requested => format!(
            "*Approval requested* `{id}`: {who} on `{target}` ({reason}); approvers: {groups}\n```{op}```\nApprove: `gatehouse approvals approve {id}`  Deny: `gatehouse approvals deny {id}`",
            id = req.id,
            who = esc(&req.requester),
            target = esc(&req.target),
            reason = esc(&req.reason),
            groups = esc(&req.approvers.join(", ")),
            op = esc(&operation),
        ),
        Step::Ended => {
            let by: Vec<String> = req
                .votes
                .iter()
                .map(|v| {
                    let verb = if v.approve { "approved" } else { "denied" };
                    if v.comment.is_empty() {
                        format!("{verb} by {}", esc(&v.approver))
                    } else {
                        format!("{verb} by {}: {}", esc(&v.approver), esc(&v.comment))
                    }
                })
                .collect();
            let mut text = format!("*Approval request* `{}` *{}*", req.id, req.state.as_str());
            if let Some(r) = &req.end_reason {
                text.push_str(&format!(" ({})", esc(r)));
            }
            if !by.is_empty() {
                text.push_str(&format!(": {}", by.join("; ")));
            }
            text
        }
    }
}

/// `sha256=HEX` of HMAC-SHA256(secret, body).
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        // HMAC takes keys of any length.
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Wait before the attempt after `attempts` failed ones.
pub(crate) fn backoff(attempts: u32) -> Duration {
    let secs = 1u64 << attempts.saturating_sub(1).min(6);
    Duration::from_secs(secs).min(MAX_BACKOFF)
}

/// Deliver jobs as they come, retries when they are due; ends when every sender is gone and
/// nothing is left to retry.
fn worker(rx: Receiver<Job>, hooks: Arc<Vec<Webhook>>, report: Report) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(ATTEMPT_TIMEOUT))
        .build()
        .into();
    // Retries, soonest first. The sequence number keeps the heap's order total.
    let mut later: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut waiting: std::collections::HashMap<u64, Job> = std::collections::HashMap::new();
    let mut seq = 0u64;
    let mut open = true;
    while open || !later.is_empty() {
        let due = later.peek().map(|Reverse((at, _))| *at);
        let next = match due {
            Some(at) if at <= Instant::now() => later.pop().and_then(|Reverse((_, id))| waiting.remove(&id)),
            Some(at) if !open => {
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                continue;
            }
            Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    open = false;
                    continue;
                }
            },
            None => match rx.recv() {
                Ok(job) => Some(job),
                Err(_) => {
                    open = false;
                    continue;
                }
            },
        };
        let Some(mut job) = next else { continue };
        let Some(hook) = hooks.get(job.hook) else { continue };
        job.attempts += 1;
        let error = match attempt(&agent, hook, &job.body) {
            Ok(()) => None,
            Err(e) if job.attempts < hook.max_attempts => {
                tracing::debug!(webhook = %redact_url(&hook.url), request = %job.request, "notification attempt {} failed: {e}", job.attempts);
                seq += 1;
                later.push(Reverse((Instant::now() + backoff(job.attempts), seq)));
                waiting.insert(seq, job);
                continue;
            }
            Err(e) => Some(e),
        };
        report(Delivery {
            webhook: redact_url(&hook.url),
            request: job.request,
            session_id: job.session_id,
            step: job.step,
            attempts: job.attempts,
            error,
        });
    }
}

/// What went wrong, from the error's kind only: an error's text may carry the URL, and a
/// webhook URL can be a secret (Slack's are).
fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(e) => format!("io: {}", e.kind()),
        ureq::Error::Timeout(_) => "timed out".into(),
        ureq::Error::HostNotFound => "host not found".into(),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        ureq::Error::Tls(m) => format!("tls: {m}"),
        ureq::Error::Rustls(_) => "tls handshake failed".into(),
        _ => "request failed".into(),
    }
}

fn attempt(agent: &ureq::Agent, hook: &Webhook, body: &[u8]) -> Result<(), String> {
    let mut req = agent
        .post(&hook.url)
        .header("content-type", "application/json")
        .header("user-agent", concat!("gatehouse/", env!("CARGO_PKG_VERSION")));
    if let Some(secret) = &hook.secret {
        req = req.header("x-gatehouse-signature", signature(secret, body));
    }
    let response = req.send(body).map_err(|e| describe(&e))?;
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}
