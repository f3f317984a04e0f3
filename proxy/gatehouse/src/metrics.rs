//! The operator's Prometheus endpoint (`[metrics] listen = "host:port"`).
//!
//! A small HTTP/1.1 server on an [`Endpoint`] (its own pingora service and thread):
//!
//! - `GET /metrics` (or `HEAD`): the text exposition format, version 0.0.4;
//! - `GET /healthz`: `ok`, or `degraded: …` with one line per problem (shipping failing or
//!   lagging behind); always 200, since the gateway keeps serving (the record stays local);
//! - other paths 404, other methods 405, a malformed request 400, a head over 8 KiB 431, a head
//!   not complete within 5 s 408; every response closes the connection.
//!
//! Metrics are read from the components' own counters at scrape time (the recorder's
//! [`RecorderStats`](gatehouse_recorder::RecorderStats), the policy generation, the listeners'
//! sessions, the backend pools and [`PluginStats`](gatehouse_plugin_host::PluginStats)); nothing
//! on the request path pays for them. Labels are bounded: names from the configuration, fault
//! kinds, short content hashes (DESIGN.md §8, rule 7).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_pg::PgFront;
use gatehouse_pg::upstream::PgTarget;
use gatehouse_plugin_host::PluginSet;
use gatehouse_policy::PolicyEngine;
use gatehouse_recorder::Recorder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::endpoint::{Endpoint, Handler};

/// Largest request head (request line and headers) read.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take the response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long, and how much, is drained after a response so that closing a socket with unread
/// input (which sends a reset) does not destroy the response before the client reads it.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;
/// Headers parsed in a request head; more is a 431.
const MAX_HEADERS: usize = 64;

/// `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

// ---------------------------------------------------------------------------------------------
// Text exposition format
// ---------------------------------------------------------------------------------------------

/// Metric type, as written on the `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A sample value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::Int(v)
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Value {
        Value::Int(v as u64)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(u64::from(v))
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) if v.is_nan() => f.write_str("NaN"),
            Value::Float(v) if v.is_infinite() => f.write_str(if v > 0.0 { "+Inf" } else { "-Inf" }),
            Value::Float(v) => write!(f, "{v}"),
        }
    }
}

/// One metric family: name, help, type and its samples. Label names are fixed by the code;
/// label values are escaped when written.
#[derive(Debug, Clone)]
pub struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    samples: Vec<(Vec<(&'static str, String)>, Value)>,
}

impl Family {
    pub fn new(name: &'static str, kind: Kind, help: &'static str) -> Family {
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    pub fn counter(name: &'static str, help: &'static str) -> Family {
        Family::new(name, Kind::Counter, help)
    }

    pub fn gauge(name: &'static str, help: &'static str) -> Family {
        Family::new(name, Kind::Gauge, help)
    }

    /// Add a sample with these labels.
    pub fn sample(&mut self, labels: &[(&'static str, &str)], value: impl Into<Value>) -> &mut Family {
        self.samples.push((
            labels.iter().map(|&(k, v)| (k, v.to_string())).collect(),
            value.into(),
        ));
        self
    }

    /// A family with one unlabelled sample.
    pub fn single(mut self, value: impl Into<Value>) -> Family {
        self.sample(&[], value);
        self
    }
}

/// Escape a label value: backslash, double quote and line feed.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escape `# HELP` text: backslash and line feed.
pub fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Write families in the text exposition format. Families sharing a name are merged so that
/// each has one `# HELP` and one `# TYPE` line (the first one's) followed by all its samples;
/// families without samples are left out.
pub fn render(families: &[Family]) -> String {
    let mut order: Vec<&'static str> = Vec::new();
    let mut merged: BTreeMap<&'static str, Vec<&Family>> = BTreeMap::new();
    for f in families {
        let parts = merged.entry(f.name).or_default();
        if parts.is_empty() {
            order.push(f.name);
        }
        parts.push(f);
    }
    let mut out = String::new();
    for name in order {
        let Some(parts) = merged.get(name) else { continue };
        let Some(first) = parts.first() else { continue };
        if parts.iter().all(|f| f.samples.is_empty()) {
            continue;
        }
        let _ = writeln!(out, "# HELP {name} {}", escape_help(first.help));
        let _ = writeln!(out, "# TYPE {name} {}", first.kind.as_str());
        for (labels, value) in parts.iter().flat_map(|f| &f.samples) {
            out.push_str(name);
            if !labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape_label_value(v));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {value}");
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The gateway's metrics
// ---------------------------------------------------------------------------------------------

/// What the endpoint reads at each scrape.
pub struct GatewayMetrics {
    pub recorder: Recorder,
    pub policy: Arc<PolicyEngine>,
    /// PostgreSQL listeners by name.
    pub listeners: Vec<(String, Arc<PgFront>)>,
    /// PostgreSQL targets by name (their pools are shared by every listener).
    pub targets: Vec<(String, Arc<PgTarget>)>,
    pub plugins: Option<Arc<PluginSet>>,
    /// Shipping off the host (when `[recorder.shipping]` is configured).
    pub shipping: Option<Arc<gatehouse_recorder::Shipper>>,
    /// Approval requests (when the admin API is configured).
    pub approvals: Option<Arc<gatehouse_approval::Approvals>>,
    /// The approval store shared with other gateways (when `[store]` is configured).
    pub store: Option<gatehouse_approval::pgstore::PgStore>,
}

/// First 12 hex digits of a content hash: enough to tell versions apart on a dashboard.
fn short_hash(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

impl GatewayMetrics {
    /// Every family, read now.
    pub fn families(&self) -> Vec<Family> {
        let mut out = Vec::new();
        let mut build = Family::gauge("gatehouse_build_info", "Gatehouse version (always 1).");
        build.sample(&[("version", env!("CARGO_PKG_VERSION"))], 1u64);
        out.push(build);

        let r = self.recorder.stats();
        out.extend([
            Family::counter(
                "gatehouse_recorder_events_appended_total",
                "Audit events written to the log since start.",
            )
            .single(r.appended),
            Family::counter(
                "gatehouse_recorder_events_failed_total",
                "Audit events that could not be written (write failures, appends after shutdown).",
            )
            .single(r.failed),
            Family::counter(
                "gatehouse_recorder_batches_total",
                "Group commits of the audit log since start.",
            )
            .single(r.batches),
            Family::gauge(
                "gatehouse_recorder_events_pending",
                "Audit events enqueued and not yet committed or failed.",
            )
            .single(r.pending),
            Family::gauge(
                "gatehouse_recorder_last_seq",
                "Sequence number of the last audit event written (0: empty log).",
            )
            .single(r.last_seq),
            Family::gauge(
                "gatehouse_recorder_unsynced_events",
                "Audit events written and not fsynced yet (sync durability; always 0 when buffered). Awaited appends among them wait for the fsync in flight.",
            )
            .single(r.last_seq.saturating_sub(r.durable_seq)),
            Family::gauge(
                "gatehouse_recorder_index_lag_events",
                "Durable audit events the search indexer has not indexed yet (searches read them one by one).",
            )
            .single(r.last_seq.saturating_sub(r.indexed_seq)),
            Family::counter(
                "gatehouse_recorder_index_dropped_batches_total",
                "Committed audit batches the search indexer's queue could not take (it read them back from the log).",
            )
            .single(r.index_dropped_batches),
            Family::gauge(
                "gatehouse_policy_generation",
                "Generation of the live Cedar policy set (1 at start, one more per reload that swapped a new set in).",
            )
            .single(self.policy.generation()),
        ]);

        let mut sessions = Family::gauge(
            "gatehouse_pg_active_sessions",
            "PostgreSQL client connections open on a listener.",
        );
        for (name, front) in &self.listeners {
            sessions.sample(&[("listener", name.as_str())], front.active_sessions());
        }
        out.push(sessions);
        let mut idle = Family::gauge(
            "gatehouse_pg_pool_idle_connections",
            "Idle authenticated upstream connections pooled for a PostgreSQL target.",
        );
        for (name, target) in &self.targets {
            idle.sample(&[("target", name.as_str())], target.idle_count());
        }
        out.push(idle);

        if let Some(a) = &self.approvals {
            out.push(
                Family::gauge(
                    "gatehouse_approvals_pending",
                    "Statements held and waiting for an approval decision.",
                )
                .single(a.pending()),
            );
        }
        if let Some(st) = &self.store {
            out.push(
                Family::gauge(
                    "gatehouse_store_connected",
                    "1 while the approval store shared with other gateways is connected.",
                )
                .single(u64::from(st.connected())),
            );
        }
        if let Some(set) = &self.plugins {
            out.extend(plugin_families(&set.stats()));
        }
        if let Some(s) = &self.shipping {
            use std::sync::atomic::Ordering::Relaxed;
            let st = s.status();
            out.extend([
                Family::gauge(
                    "gatehouse_shipping_acked_seq",
                    "Sequence number of the last audit event the sink acknowledged.",
                )
                .single(st.acked_seq.load(Relaxed)),
                Family::gauge(
                    "gatehouse_shipping_backlog_events",
                    "Audit events recorded and not yet acknowledged by the sink.",
                )
                .single(s.backlog()),
                Family::counter(
                    "gatehouse_shipping_segments_total",
                    "Sealed segments stored in the sink since start.",
                )
                .single(st.segments.load(Relaxed)),
                Family::counter(
                    "gatehouse_shipping_bytes_total",
                    "Bytes of segments stored in the sink since start.",
                )
                .single(st.bytes.load(Relaxed)),
                Family::counter(
                    "gatehouse_shipping_errors_total",
                    "Failed shipping attempts since start.",
                )
                .single(st.errors.load(Relaxed)),
                Family::gauge(
                    "gatehouse_shipping_failing",
                    "1 while shipping fails (the sink is unreachable or refuses), else 0.",
                )
                .single(u64::from(
                    st.failing_since_us.load(Relaxed) != 0 || st.halted.load(Relaxed),
                )),
                Family::gauge(
                    "gatehouse_audit_local_floor_seq",
                    "Local retention deleted the audit events up to this sequence number (0: none).",
                )
                .single(st.floor_seq.load(Relaxed)),
                Family::counter(
                    "gatehouse_shipping_resent_segments_total",
                    "Segments the sink had lost after acknowledging them, sent again since start.",
                )
                .single(st.resent_segments.load(Relaxed)),
                Family::gauge(
                    "gatehouse_shipping_sink_missing_events",
                    "Acknowledged audit events the sink no longer holds and that could not be sent again.",
                )
                .single(st.sink_missing_events.load(Relaxed)),
                Family::gauge(
                    "gatehouse_shipping_sink_lost_events",
                    "Audit events below the local floor the sink no longer holds (lost unless a copy of the sink has them), as of the last check.",
                )
                .single(st.sink_lost_events.load(Relaxed)),
                Family::gauge(
                    "gatehouse_shipping_sink_first_seq",
                    "First audit event the sink holds, as of the last whole-sink check (0: none or not checked yet).",
                )
                .single(st.sink_first_seq.load(Relaxed)),
                Family::gauge(
                    "gatehouse_shipping_sink_checked_timestamp_seconds",
                    "When the whole sink was last listed (Unix time; 0: not yet).",
                )
                .single(u64::try_from(st.sink_checked_us.load(Relaxed) / 1_000_000).unwrap_or(0)),
                Family::counter(
                    "gatehouse_shipping_sink_checks_total",
                    "Listings of the whole sink made since start.",
                )
                .single(st.sink_checks.load(Relaxed)),
                Family::gauge(
                    "gatehouse_audit_retention_failing",
                    "1 while the last local retention pass (and sink check) failed, else 0 (losses below the local floor show in gatehouse_shipping_sink_lost_events).",
                )
                .single(u64::from(st.retention_error().is_some())),
            ]);
        }
        out
    }

    /// `/healthz`: `ok`, or `degraded:` and what is wrong.
    pub fn health(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let mut problems = Vec::new();
        if let Some(s) = &self.shipping {
            let st = s.status();
            if st.halted.load(Relaxed) {
                problems.push(format!(
                    "shipping to {} stopped: {}",
                    s.sink_url(),
                    st.last_error().unwrap_or_default()
                ));
            } else if st.failing_since_us.load(Relaxed) != 0 {
                problems.push(format!(
                    "shipping to {} failing since {}: {} ({} events not shipped)",
                    s.sink_url(),
                    gatehouse_core::time::rfc3339_micros(st.failing_since_us.load(Relaxed)),
                    st.last_error().unwrap_or_default(),
                    s.backlog()
                ));
            } else if st.lagging.load(Relaxed) {
                problems.push(format!(
                    "shipping to {} lags: {} events not shipped",
                    s.sink_url(),
                    s.backlog()
                ));
            }
            let lost = st.sink_lost();
            if !lost.is_empty() {
                problems.push(format!(
                    "{} lost events {} below the local floor: only a copy of the sink can still hold them",
                    s.sink_url(),
                    gatehouse_recorder::describe_ranges(&lost)
                ));
            }
            if let Some(e) = st.retention_error() {
                problems.push(format!("retention and sink check for {}: {e}", s.sink_url()));
            }
        }
        if problems.is_empty() {
            "ok\n".to_string()
        } else {
            format!("degraded:\n{}\n", problems.join("\n"))
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        render(&self.families())
    }
}

/// The plugin families from a snapshot of [`PluginSet::stats`].
pub fn plugin_families(stats: &[gatehouse_plugin_host::PluginStats]) -> Vec<Family> {
    let mut generation = Family::gauge(
        "gatehouse_plugin_generation",
        "Generation of the live version of a plugin (1 at load, one more per hot reload), labelled with its content hash.",
    );
    let mut calls = Family::counter(
        "gatehouse_plugin_calls_total",
        "Plugin hook calls started (quarantine skips not included).",
    );
    let mut faults = Family::counter(
        "gatehouse_plugin_faults_total",
        "Plugin faults by kind (each failed the operation closed or, with fail = \"open\", skipped the plugin).",
    );
    let mut quarantined = Family::gauge(
        "gatehouse_plugin_quarantined",
        "Whether a plugin is quarantined now (1) after repeated faults.",
    );
    let mut quarantines = Family::counter(
        "gatehouse_plugin_quarantines_total",
        "Times a plugin was quarantined.",
    );
    let mut skips = Family::counter(
        "gatehouse_plugin_quarantine_skips_total",
        "Plugin calls skipped because the plugin was quarantined.",
    );
    let mut reloads = Family::counter(
        "gatehouse_plugin_reloads_total",
        "Hot reloads that swapped a new version of a plugin in.",
    );
    let mut reload_failures = Family::counter(
        "gatehouse_plugin_reload_failures_total",
        "Hot reloads rejected (the last good version stayed live).",
    );
    let mut call_seconds = Family::counter(
        "gatehouse_plugin_call_seconds_total",
        "Time spent in plugin hook calls, including argument and result copying.",
    );
    let mut instantiations = Family::counter(
        "gatehouse_plugin_instantiations_total",
        "Plugin instances created.",
    );
    let mut instantiation_seconds = Family::counter(
        "gatehouse_plugin_instantiation_seconds_total",
        "Time spent creating plugin instances.",
    );
    for s in stats {
        let plugin = [("plugin", s.name.as_str())];
        generation.sample(
            &[("plugin", s.name.as_str()), ("hash", short_hash(&s.hash))],
            s.generation,
        );
        calls.sample(&plugin, s.calls);
        for (kind, n) in s.faults.by_label() {
            faults.sample(&[("plugin", s.name.as_str()), ("kind", kind)], n);
        }
        quarantined.sample(&plugin, s.quarantined);
        quarantines.sample(&plugin, s.quarantines);
        skips.sample(&plugin, s.quarantine_skips);
        reloads.sample(&plugin, s.reloads);
        reload_failures.sample(&plugin, s.reload_failures);
        call_seconds.sample(&plugin, s.call_nanos as f64 / 1e9);
        instantiations.sample(&plugin, s.instantiations);
        instantiation_seconds.sample(&plugin, s.instantiation_nanos as f64 / 1e9);
    }
    vec![
        generation,
        calls,
        faults,
        quarantined,
        quarantines,
        skips,
        reloads,
        reload_failures,
        call_seconds,
        instantiations,
        instantiation_seconds,
    ]
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// Produces the exposition text at each scrape.
pub type RenderFn = Arc<dyn Fn() -> String + Send + Sync>;

/// The metrics endpoint for `metrics`, bound but not yet serving.
pub fn endpoint(addr: SocketAddr, metrics: Arc<GatewayMetrics>) -> std::io::Result<Endpoint> {
    let m = metrics.clone();
    endpoint_sources(
        addr,
        Sources {
            metrics: Arc::new(move || metrics.render()),
            health: Arc::new(move || m.health()),
        },
    )
}

/// The same with any source of exposition text (healthz always `ok`).
pub fn endpoint_with(addr: SocketAddr, render: RenderFn) -> std::io::Result<Endpoint> {
    endpoint_sources(
        addr,
        Sources {
            metrics: render,
            health: Arc::new(|| "ok\n".to_string()),
        },
    )
}

/// What the endpoint serves: the exposition text and the health text.
#[derive(Clone)]
pub struct Sources {
    pub metrics: RenderFn,
    pub health: RenderFn,
}

fn endpoint_sources(addr: SocketAddr, sources: Sources) -> std::io::Result<Endpoint> {
    let handler: Handler = Arc::new(move |tcp| {
        let sources = sources.clone();
        Box::pin(async move { connection(tcp, &sources).await })
    });
    Endpoint::bind("metrics", addr, handler)
}

/// Why no request could be read.
#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    /// Closed (or failed) before sending anything: nothing to answer.
    Gone,
    /// Not HTTP/1.x, or closed in the middle of the head.
    Malformed,
    /// Over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] headers.
    TooLarge,
}

/// The parts of a request the endpoint looks at.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
}

/// Parse a request head; `Ok(None)`: incomplete so far.
fn parse_head(buf: &[u8]) -> Result<Option<Request>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {
            let (Some(method), Some(path)) = (req.method, req.path) else {
                return Err(HeadError::Malformed);
            };
            Ok(Some(Request {
                method: method.to_string(),
                path: path.to_string(),
            }))
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(_) => Err(HeadError::Malformed),
    }
}

async fn read_head(tcp: &mut TcpStream) -> Result<Request, HeadError> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    loop {
        let n = match tcp.read(&mut buf[len..]).await {
            Ok(0) | Err(_) if len == 0 => return Err(HeadError::Gone),
            Ok(0) => return Err(HeadError::Malformed),
            Err(_) => return Err(HeadError::Gone),
            Ok(n) => n,
        };
        len += n;
        if let Some(req) = parse_head(&buf[..len])? {
            return Ok(req);
        }
    }
}

/// A response; always `Connection: close`.
#[derive(Debug)]
struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    allow: bool,
    /// HEAD: headers as for GET, no body.
    head_only: bool,
}

impl Response {
    fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
            allow: false,
            head_only: false,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            _ => "Error",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("Connection: close\r\n\r\n");
        let mut bytes = out.into_bytes();
        if !self.head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

fn route(req: &Request, sources: &Sources) -> Response {
    let path = req.path.split(['?', '#']).next().unwrap_or_default();
    let known = matches!(path, "/metrics" | "/healthz");
    if !known {
        return Response::text(404, "not found\n");
    }
    let head_only = match req.method.as_str() {
        "GET" => false,
        "HEAD" => true,
        _ => {
            let mut r = Response::text(405, "method not allowed\n");
            r.allow = true;
            return r;
        }
    };
    let mut r = if path == "/metrics" {
        Response {
            status: 200,
            content_type: CONTENT_TYPE,
            body: (sources.metrics)().into_bytes(),
            allow: false,
            head_only: false,
        }
    } else {
        Response::text(200, &(sources.health)())
    };
    r.head_only = head_only;
    r
}

async fn connection(mut tcp: TcpStream, sources: &Sources) {
    let response = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut tcp)).await {
        Err(_) => Response::text(408, "request timeout\n"),
        Ok(Err(HeadError::Gone)) => return,
        Ok(Err(HeadError::Malformed)) => Response::text(400, "bad request\n"),
        Ok(Err(HeadError::TooLarge)) => Response::text(431, "request head too large\n"),
        Ok(Ok(req)) => route(&req, sources),
    };
    let bytes = response.to_bytes();
    let sent = tokio::time::timeout(WRITE_TIMEOUT, async {
        tcp.write_all(&bytes).await?;
        tcp.shutdown().await
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    // Lingering close: take what the client still sends (a body, the rest of an oversized
    // head) until it closes, so the close does not reset the connection under the response.
    let _ = tokio::time::timeout(LINGER, async {
        let mut scratch = [0u8; 4096];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match tcp.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;

    #[test]
    fn help_and_type_once_per_family_and_values_escaped() {
        let mut a = Family::counter("x_total", "Things\\counted\nhere.");
        a.sample(&[("plugin", "a\"b\\c\nd")], 3u64);
        let mut b = Family::counter("x_total", "ignored: the first help wins");
        b.sample(&[("plugin", "plain"), ("kind", "trap")], 0u64);
        let empty = Family::gauge("nothing", "No samples, not written.");
        let g = Family::gauge("y", "A gauge.").single(1.5);
        let text = render(&[a, empty, g, b]);
        assert_eq!(
            text,
            "# HELP x_total Things\\\\counted\\nhere.\n\
             # TYPE x_total counter\n\
             x_total{plugin=\"a\\\"b\\\\c\\nd\"} 3\n\
             x_total{plugin=\"plain\",kind=\"trap\"} 0\n\
             # HELP y A gauge.\n\
             # TYPE y gauge\n\
             y 1.5\n"
        );
    }

    #[test]
    fn values_are_prometheus_numbers() {
        assert_eq!(Value::from(true).to_string(), "1");
        assert_eq!(Value::from(0.000_25).to_string(), "0.00025");
        assert_eq!(Value::from(f64::NAN).to_string(), "NaN");
        assert_eq!(Value::from(f64::INFINITY).to_string(), "+Inf");
        assert_eq!(Value::from(f64::NEG_INFINITY).to_string(), "-Inf");
        assert_eq!(Value::from(u64::MAX).to_string(), "18446744073709551615");
    }

    fn stats(name: &str) -> gatehouse_plugin_host::PluginStats {
        gatehouse_plugin_host::PluginStats {
            name: name.into(),
            hash: "0123456789abcdef0123456789abcdef".into(),
            version: "1.0.0".into(),
            generation: 2,
            fail: gatehouse_plugin_host::FailMode::Closed,
            calls: 10,
            faults: gatehouse_plugin_host::FaultCounts {
                trap: 3,
                ..Default::default()
            },
            quarantined: true,
            quarantines: 1,
            quarantine_skips: 4,
            instantiations: 5,
            instantiation_nanos: 1_500_000_000,
            call_nanos: 250_000_000,
            reloads: 1,
            reload_failures: 0,
        }
    }

    #[test]
    fn plugin_families_carry_name_kind_and_short_hash() {
        let text = render(&plugin_families(&[stats("p1"), stats("p2")]));
        for line in [
            "gatehouse_plugin_generation{plugin=\"p1\",hash=\"0123456789ab\"} 2",
            "gatehouse_plugin_calls_total{plugin=\"p2\"} 10",
            "gatehouse_plugin_faults_total{plugin=\"p1\",kind=\"trap\"} 3",
            "gatehouse_plugin_faults_total{plugin=\"p1\",kind=\"plugin-error\"} 0",
            "gatehouse_plugin_quarantined{plugin=\"p1\"} 1",
            "gatehouse_plugin_quarantines_total{plugin=\"p1\"} 1",
            "gatehouse_plugin_quarantine_skips_total{plugin=\"p1\"} 4",
            "gatehouse_plugin_reloads_total{plugin=\"p1\"} 1",
            "gatehouse_plugin_reload_failures_total{plugin=\"p1\"} 0",
            "gatehouse_plugin_call_seconds_total{plugin=\"p1\"} 0.25",
            "gatehouse_plugin_instantiations_total{plugin=\"p1\"} 5",
            "gatehouse_plugin_instantiation_seconds_total{plugin=\"p1\"} 1.5",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        // One HELP and one TYPE per family, before its samples.
        let mut types = std::collections::HashSet::new();
        let mut current = "";
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(types.insert(name.to_string()), "{name} typed twice");
                current = name;
            } else if !l.starts_with('#') {
                assert!(l.starts_with(current), "{l} outside its family");
            }
        }
        assert_eq!(text.matches("# HELP ").count(), types.len());
        assert_eq!(types.len(), 11);
    }

    #[test]
    fn request_heads_are_parsed_and_capped() {
        let get = parse_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(
            get,
            Some(Request {
                method: "GET".into(),
                path: "/metrics".into()
            })
        );
        assert_eq!(parse_head(b"GET /metrics HTTP/1.1\r\nHo").unwrap(), None);
        assert_eq!(
            parse_head(b"NOT A REQUEST\r\n\r\n").unwrap_err(),
            HeadError::Malformed
        );
        assert_eq!(
            parse_head(b"GET / HTTP/2.0\r\n\r\n").unwrap_err(),
            HeadError::Malformed
        );
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD, b'a');
        assert_eq!(parse_head(&big).unwrap_err(), HeadError::TooLarge);
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(MAX_HEADERS + 1));
        assert_eq!(parse_head(many.as_bytes()).unwrap_err(), HeadError::TooLarge);
    }

    #[test]
    fn routes() {
        let render = Sources {
            metrics: Arc::new(|| "m 1\n".to_string()),
            health: Arc::new(|| "ok\n".to_string()),
        };
        let req = |m: &str, p: &str| Request {
            method: m.into(),
            path: p.into(),
        };
        let r = route(&req("GET", "/metrics?x=1"), &render);
        assert_eq!(
            (r.status, r.content_type, r.body.as_slice()),
            (200, CONTENT_TYPE, &b"m 1\n"[..])
        );
        let head = String::from_utf8(route(&req("HEAD", "/metrics"), &render).to_bytes()).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("Content-Length: 4\r\n"), "{head}");
        assert!(head.ends_with("Connection: close\r\n\r\n"), "{head}");
        assert_eq!(route(&req("GET", "/healthz"), &render).body, b"ok\n");
        assert_eq!(route(&req("GET", "/"), &render).status, 404);
        assert_eq!(route(&req("POST", "/nope"), &render).status, 404);
        let post = String::from_utf8(route(&req("POST", "/metrics"), &render).to_bytes()).unwrap();
        assert!(post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{post}");
        assert!(post.contains("\r\nAllow: GET, HEAD\r\n"), "{post}");
    }

    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(request).await.unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn serves_until_shutdown() {
        let render: RenderFn = Arc::new(|| "m 1\n".to_string());
        let mut l = endpoint_with("127.0.0.1:0".parse().unwrap(), render).unwrap();
        let addr = l.addr;
        assert_ne!(addr.port(), 0);
        let (tx, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move { l.serve(rx).await });
        let ok = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nm 1\n"), "{ok}");
        let bad = exchange(addr, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n").await;
        assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
        // Closed half way through the head: 400 as well.
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /metr").await.unwrap();
        c.shutdown().await.unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        assert!(out.starts_with(b"HTTP/1.1 400 "));
        // An oversized head, sent in full: 431, and the response is not lost to a reset.
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.resize(3 * MAX_HEAD, b'a');
        big.extend_from_slice(b"\r\n\r\n");
        let r = exchange(addr, &big).await;
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");

        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
    }
}
