//! The configuration file (`gatehouse.toml`), validated at start.
//!
//! Every struct denies unknown fields, and every error names the file, the line and the field,
//! so `gatehouse check-config` can point an operator at the exact spot.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::principal::PrincipalKind;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub gateway: GatewayConfig,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    pub policy: PolicyConfig,
    pub recorder: RecorderConfig,
    #[serde(default, rename = "identity")]
    pub identities: Vec<IdentityConfig>,
    /// OpenID Connect issuers whose tokens identify users and agents (`[[oidc]]`).
    #[serde(default, rename = "oidc")]
    pub oidc: Vec<OidcConfig>,
    #[serde(default, rename = "target")]
    pub targets: Vec<TargetConfig>,
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<PluginConfig>,
    /// Settings for all plugins.
    #[serde(default)]
    pub plugin_host: PluginHostSettings,
    /// Column masking (Cedar `read_column` rules).
    #[serde(default)]
    pub masking: MaskingConfig,
    /// The Prometheus endpoint; no section, no endpoint.
    pub metrics: Option<MetricsConfig>,
    /// Approval holds (policies annotated `@approvers`, plugin `hold` verdicts).
    #[serde(default)]
    pub approvals: ApprovalsConfig,
    /// The admin API (approvals); no section, no API, and every hold is denied at once.
    pub admin: Option<AdminConfig>,
    /// Just-in-time access requests (`gatehouse access request`); needs `[admin]`.
    #[serde(default)]
    pub access: AccessConfig,
    /// Where approval requests and access grants are kept when several gateways share them
    /// (`[store]`); none: this gateway's memory and its log directory.
    pub store: Option<StoreConfig>,
}

/// `[store]`: a PostgreSQL database shared by the gateways behind one load balancer, so that
/// an approval given through one releases a statement held on another.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// libpq connection string or `postgresql://` URL (it holds a password: give it by
    /// reference, `{ env = "…" }` or `{ file = "…" }`). Off loopback it must say
    /// `sslmode=require`; the server's certificate and name are always verified.
    pub postgres: SecretOrString,
    /// CA bundle (PEM) for the server's certificate; default: the Web PKI roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Longest wait for one store operation before it counts as failed.
    #[serde(default = "default_store_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_store_timeout_ms() -> u64 {
    5000
}

/// `[access]`: who approves access requests and how long grants may last.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// Groups whose members approve access requests. Empty: nobody can, and requests are refused.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Approvals from distinct approvers a request needs.
    #[serde(default = "default_min_approvals")]
    pub min_approvals: u32,
    /// The longest grant anyone may ask for.
    #[serde(default = "default_max_grant")]
    pub max_duration_secs: u64,
    /// A request not decided within this many seconds is denied.
    #[serde(default = "default_access_request_timeout")]
    pub request_timeout_secs: u64,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            approvers: Vec::new(),
            min_approvals: default_min_approvals(),
            max_duration_secs: default_max_grant(),
            request_timeout_secs: default_access_request_timeout(),
        }
    }
}

fn default_max_grant() -> u64 {
    8 * 3600
}
fn default_access_request_timeout() -> u64 {
    3600
}

/// `[approvals]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// A held statement not approved within this many seconds is denied.
    #[serde(default = "default_approval_timeout")]
    pub timeout_secs: u64,
    /// Approvals from distinct approvers a request needs.
    #[serde(default = "default_min_approvals")]
    pub min_approvals: u32,
    /// Decided requests kept for `gatehouse approvals list|show` (the audit log keeps them all).
    #[serde(default = "default_approval_history")]
    pub history: usize,
    /// Webhooks told when a request opens and when it ends (`[[approvals.webhook]]`).
    #[serde(default, rename = "webhook")]
    pub webhooks: Vec<WebhookConfig>,
}

/// `[[approvals.webhook]]`: where approvers hear about requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL the message is POSTed to.
    pub url: Spanned<SecretOrString>,
    /// Approver groups whose requests it hears about; empty: every request.
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub format: WebhookFormat,
    /// Shared secret: messages carry `X-Gatehouse-Signature: sha256=HEX` (HMAC of the body).
    pub secret: Option<SecretRef>,
    /// Attempts per message before the failure is recorded (backoff 1 s, 2 s, 4 s, …).
    #[serde(default = "default_webhook_attempts")]
    pub max_attempts: u32,
}

/// A value given inline or, when it is itself a secret (a Slack webhook URL), by reference.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum SecretOrString {
    Inline(String),
    Ref(SecretRef),
}

impl SecretOrString {
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            SecretOrString::Inline(s) => Ok(s.clone()),
            SecretOrString::Ref(r) => r.resolve(),
        }
    }
}

/// Body of a webhook message.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// `{"event": …, "request": {…}}`.
    #[default]
    Json,
    /// `{"text": …}` (Slack-compatible incoming webhooks).
    Slack,
}

fn default_webhook_attempts() -> u32 {
    5
}

fn default_approval_timeout() -> u64 {
    600
}

fn default_min_approvals() -> u32 {
    1
}

fn default_approval_history() -> usize {
    10_000
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        ApprovalsConfig {
            timeout_secs: default_approval_timeout(),
            min_approvals: default_min_approvals(),
            history: default_approval_history(),
            webhooks: Vec::new(),
        }
    }
}

/// `[admin]`: the authenticated admin API (HTTP, JSON).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port`; port 0 picks a free port. Without `tls_cert`/`tls_key` only a loopback
    /// address is accepted (the API carries credentials).
    pub listen: Spanned<String>,
    /// Serve HTTPS with this certificate chain (PEM); needs `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Groups whose members see every approval request (besides the approvers named by each).
    #[serde(default)]
    pub admins: Vec<String>,
    /// Groups whose members may read approval requests without acting on them.
    #[serde(default)]
    pub auditors: Vec<String>,
}

impl AdminConfig {
    pub fn socket_addr(&self) -> Result<SocketAddr, String> {
        let addr: SocketAddr = self
            .listen
            .get_ref()
            .parse()
            .map_err(|e| format!("`{}` is not an address: {e}", self.listen.get_ref()))?;
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), Some(_)) => {}
            (None, None) if addr.ip().is_loopback() => {}
            (None, None) => {
                return Err(format!(
                    "`{addr}` is not a loopback address: the admin API carries credentials; set `tls_cert` and `tls_key` to serve it over TLS, or bind it to loopback"
                ));
            }
            _ => return Err("`tls_cert` and `tls_key` go together".to_string()),
        }
        Ok(addr)
    }
}

/// `[metrics]`: an HTTP endpoint serving `/metrics` (Prometheus text format) and `/healthz`.
/// It has no authentication: bind it to loopback or an operator-only network.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port`; port 0 picks a free port (printed at start).
    pub listen: Spanned<String>,
}

impl MetricsConfig {
    pub fn socket_addr(&self) -> Result<SocketAddr, String> {
        self.listen
            .get_ref()
            .parse()
            .map_err(|e| format!("`{}` is not an address: {e}", self.listen.get_ref()))
    }
}

/// `[masking]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MaskingConfig {
    /// Key of the `hash` strategy (`tok_…` tokens). Every gateway that must produce the same
    /// tokens needs the same key. Default: a random key generated once and kept in the
    /// recorder directory (`mask-hash.key`).
    pub hash_key: Option<SecretRef>,
}

/// How a plugin fault (trap, timeout, memory blow-up, malformed return, error) is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Deny the operation / mask the whole batch.
    #[default]
    Closed,
    /// Skip the plugin for this call (the fault is still recorded).
    Open,
}

/// A WebAssembly plugin (`[[plugin]]`); targets list the plugins they use, in order.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    pub name: Spanned<String>,
    /// The component (`.wasm`), built for `wasm32-wasip2`.
    pub path: PathBuf,
    #[serde(default)]
    pub fail: FailMode,
    /// Wall-clock limit per hook call.
    #[serde(default = "default_plugin_timeout")]
    pub timeout_ms: u64,
    /// Linear memory limit per instance.
    #[serde(default = "default_plugin_memory")]
    pub memory_mb: u64,
    /// Optional instruction budget per call (wasmtime fuel).
    pub fuel: Option<u64>,
    /// The plugin's own settings, handed to it as JSON by `host.config()`.
    #[serde(default)]
    pub config: toml::Table,
}

impl PluginConfig {
    /// The plugin's `config` table as a JSON document.
    pub fn config_json(&self) -> String {
        serde_json::to_string(&self.config).unwrap_or_else(|_| "{}".to_string())
    }
}

fn default_plugin_timeout() -> u64 {
    100
}
fn default_plugin_memory() -> u64 {
    64
}

/// `[plugin_host]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginHostSettings {
    /// How often plugin files are checked for changes (hot reload); 0 disables.
    #[serde(default = "default_plugin_reload")]
    pub reload_interval_ms: u64,
    /// A plugin that faults this many times within `quarantine_window_secs` is quarantined.
    #[serde(default = "default_quarantine_faults")]
    pub quarantine_faults: u32,
    #[serde(default = "default_quarantine_window")]
    pub quarantine_window_secs: u64,
    /// How long a quarantined plugin is skipped (with its fail mode applied).
    #[serde(default = "default_quarantine_secs")]
    pub quarantine_secs: u64,
}

impl Default for PluginHostSettings {
    fn default() -> Self {
        PluginHostSettings {
            reload_interval_ms: default_plugin_reload(),
            quarantine_faults: default_quarantine_faults(),
            quarantine_window_secs: default_quarantine_window(),
            quarantine_secs: default_quarantine_secs(),
        }
    }
}

fn default_plugin_reload() -> u64 {
    1000
}
fn default_quarantine_faults() -> u32 {
    5
}
fn default_quarantine_window() -> u64 {
    60
}
fn default_quarantine_secs() -> u64 {
    60
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Worker threads for each service; default: number of CPUs.
    pub threads: Option<usize>,
    /// Seconds to wait for sessions to finish on graceful shutdown.
    #[serde(default = "default_grace")]
    pub shutdown_grace_secs: u64,
}

fn default_grace() -> u64 {
    10
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            threads: None,
            shutdown_grace_secs: default_grace(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    Postgres,
}

/// When a client may connect without TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PlaintextPolicy {
    /// Always require TLS.
    Never,
    /// Allow plaintext from loopback addresses only (default).
    #[default]
    Loopback,
    /// Allow plaintext from anywhere (not recommended).
    Always,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: Spanned<String>,
    pub protocol: ListenerProtocol,
    /// `host:port`; port 0 picks a free port (printed at start).
    pub address: Spanned<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    #[serde(default)]
    pub plaintext: PlaintextPolicy,
}

impl ListenerConfig {
    pub fn socket_addr(&self) -> Result<SocketAddr, String> {
        self.address
            .get_ref()
            .parse()
            .map_err(|e| format!("`{}` is not an address: {e}", self.address.get_ref()))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Directory with `schema.cedarschema` and `*.cedar` policy files.
    pub dir: PathBuf,
    /// How often the directory is checked for changes; 0 disables hot reload.
    #[serde(default = "default_reload_ms")]
    pub reload_interval_ms: u64,
}

fn default_reload_ms() -> u64 {
    1000
}

/// When is the decision record durable?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// WAL fsync (group-committed) before the operation is forwarded (default).
    #[default]
    Sync,
    /// Written to the WAL but not fsynced before forwarding: survives a gateway crash, not a
    /// host crash. For load tests and non-regulated targets only.
    Buffered,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecorderConfig {
    pub dir: PathBuf,
    #[serde(default)]
    pub durability: Durability,
    /// Largest number of events committed in one group.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Signed checkpoints of the chain head (off when absent).
    #[serde(default)]
    pub checkpoints: Option<CheckpointConfig>,
    /// Shipping sealed segments off the host (off when absent; needs checkpoints).
    #[serde(default)]
    pub shipping: Option<ShippingConfig>,
    /// What recorded statements keep of their constants.
    #[serde(default)]
    pub literals: LiteralsConfig,
    /// How much of each operation's result the record keeps.
    #[serde(default)]
    pub results: ResultsConfig,
}

/// `[recorder.results]`: result rows in the audit log, as the client received them (after
/// masking), so a reviewer sees what was read, not only that something was.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ResultsConfig {
    /// Bytes of cell values recorded per operation; rows past it are counted, not kept, and
    /// the record says it was truncated. 0: no rows are recorded.
    #[serde(default = "default_results_max_bytes")]
    pub max_bytes: usize,
}

impl Default for ResultsConfig {
    fn default() -> Self {
        ResultsConfig {
            max_bytes: default_results_max_bytes(),
        }
    }
}

fn default_results_max_bytes() -> usize {
    16 * 1024
}

/// `[recorder.literals]`: statement constants (and bound parameters) in the audit log. The
/// log must not become a second copy of the values masking protects.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LiteralsConfig {
    #[serde(default)]
    pub mode: LiteralMode,
    /// Column names (the last part, any case) whose statements are classified.
    #[serde(default = "default_classified_columns")]
    pub classified_columns: Vec<String>,
}

impl Default for LiteralsConfig {
    fn default() -> Self {
        LiteralsConfig {
            mode: LiteralMode::default(),
            classified_columns: default_classified_columns(),
        }
    }
}

/// What happens to a recorded statement's constants and bound parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LiteralMode {
    /// Recorded as sent.
    Keep,
    /// Replaced by `?` in every statement.
    Redact,
    /// Replaced by a keyed token (`tok_…`, the masking `hash` key): equal values give equal
    /// tokens, so an investigation can still follow one value without reading it.
    Hash,
    /// Replaced by `?` in statements that name a classified column; others kept (default).
    #[default]
    RedactClassified,
}

fn default_classified_columns() -> Vec<String> {
    [
        "ssn",
        "social_security_number",
        "card_number",
        "credit_card",
        "cvv",
        "iban",
        "account_number",
        "password",
        "password_hash",
        "secret",
        "api_key",
        "token",
        "email",
        "phone",
        "phone_number",
        "date_of_birth",
        "dob",
        "passport_number",
        "tax_id",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `[recorder.shipping]`: sealed segments of the log (each ending at a signed checkpoint) are
/// copied to an object store, at least once, in order, named by their seq range so a re-send
/// replaces an object with the same content.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShippingConfig {
    /// `file:///absolute/path` or `s3://bucket[/prefix]`.
    pub sink: String,
    /// S3: the endpoint of an S3-compatible service (default: AWS's for `region`).
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    /// S3 credentials (default: none, for endpoints that need none).
    #[serde(default)]
    pub access_key_id: Option<SecretRef>,
    #[serde(default)]
    pub secret_access_key: Option<SecretRef>,
    /// Allow an `http://` endpoint (a sink on a private network, tests).
    #[serde(default)]
    pub allow_http: bool,
    /// How often to look for newly sealed segments (also the retry interval after a failure,
    /// doubled up to 30 s).
    #[serde(default = "default_ship_interval")]
    pub interval_secs: u64,
    /// Events not yet acknowledged by the sink above which shipping reports itself lagging
    /// (`/healthz`, metrics, a warning and a notice in the log).
    #[serde(default = "default_backlog_alert")]
    pub backlog_alert_events: u64,
    /// Encrypt segments before they leave the host: an AES-256-GCM key, 64 hex digits.
    #[serde(default)]
    pub encryption_key: Option<SecretRef>,
    /// Local retention: delete events from the local log once the sink holds them (checked by
    /// listing it) and they are older than this many seconds (e.g. 2592000 for 30 days).
    /// Absent: the local log keeps everything. Deletion stops at a signed checkpoint, which
    /// stays as the log's floor so what is left still verifies.
    #[serde(default)]
    pub keep_local_secs: Option<u64>,
    /// How often retention runs (it also checks the sink still holds what it acknowledged).
    #[serde(default = "default_retention_interval")]
    pub retention_interval_secs: u64,
    /// How often a retention pass lists the whole sink, below the local log's floor too.
    /// Events local retention deleted are held by the sink alone: one it loses can no longer
    /// be sent again, so the loss is reported (a notice, `/healthz`, metrics) and local
    /// retention deletes nothing more until the sink holds them again. The other passes list
    /// only from the floor on.
    #[serde(default = "default_sink_check_interval")]
    pub sink_check_interval_secs: u64,
    /// The sink deletes its oldest segments on its own (an S3 lifecycle rule, say): segments
    /// missing at its start are not a loss, only holes after the first segment it holds are.
    /// The gateway then cannot tell expiry from a deletion of the oldest segments (Object
    /// Lock can). `audit verify --shipped` and `audit restore` start at the first segment it
    /// holds.
    #[serde(default)]
    pub sink_expires: bool,
    /// Event ranges (`[[first, last], …]`) the operator accepts as lost from the sink, below
    /// the local floor (no copy left): they no longer hold local retention back. Recorded in
    /// the log as accepted when found missing.
    #[serde(default)]
    pub sink_lost_accepted: Vec<[u64; 2]>,
}

fn default_retention_interval() -> u64 {
    300
}

fn default_sink_check_interval() -> u64 {
    3600
}

fn default_region() -> String {
    "us-east-1".to_string()
}

fn default_ship_interval() -> u64 {
    2
}

fn default_backlog_alert() -> u64 {
    100_000
}

fn default_max_batch() -> usize {
    4096
}

/// `[recorder.checkpoints]`: the writer signs the chain head with an Ed25519 key every
/// `every_events` events or `every_secs` seconds (whichever comes first, only when events were
/// added), and once more when the log closes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// The PKCS#8 PEM private key (`gatehouse audit keygen`, or
    /// `openssl genpkey -algorithm ed25519`).
    pub key: SecretRef,
    #[serde(default = "default_checkpoint_events")]
    pub every_events: u64,
    #[serde(default = "default_checkpoint_secs")]
    pub every_secs: u64,
}

fn default_checkpoint_events() -> u64 {
    10_000
}

fn default_checkpoint_secs() -> u64 {
    10
}

/// Where a secret comes from. Secrets never appear in the config file itself.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum SecretRef {
    /// Read from this environment variable at start.
    Env(String),
    /// Read from this file (trailing newline trimmed).
    File(PathBuf),
}

impl SecretRef {
    /// Resolve the secret. The error names the reference, never the value.
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            SecretRef::Env(var) => {
                std::env::var(var).map_err(|_| format!("environment variable `{var}` is not set"))
            }
            SecretRef::File(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| format!("cannot read secret file `{}`: {e}", path.display())),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// The name clients give as their user (`psql -U name`).
    pub name: Spanned<String>,
    pub kind: PrincipalKind,
    #[serde(default)]
    pub groups: Vec<String>,
    /// SCRAM-SHA-256 verifier of the access key, as printed by `gatehouse identity hash-key`
    /// (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`).
    pub key_verifier: Spanned<String>,
    /// For agents acting for a human: the human's identity name.
    pub on_behalf_of: Option<String>,
    #[serde(default)]
    pub attrs: BTreeMap<String, String>,
}

/// `[[oidc]]`: an OpenID Provider whose signed tokens (ID tokens or JWT access tokens) are
/// accepted as the password (PostgreSQL) or bearer token (admin API).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer URL, exactly as the tokens' `iss` claim says it. Discovery is read from
    /// `<issuer>/.well-known/openid-configuration`.
    pub issuer: Spanned<String>,
    /// A token must name this in its `aud` claim.
    pub audience: String,
    /// The claim holding the principal's group names (an array or a space-separated string).
    /// A token without it has no groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// The claim naming a human (`User`); the name given as the PostgreSQL user must equal it.
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// Prepended to every principal name from this issuer (keeps two issuers' names apart).
    #[serde(default)]
    pub name_prefix: String,
    /// Seconds of clock difference tolerated on `exp`, `nbf` and `iat`.
    #[serde(default = "default_clock_skew")]
    pub clock_skew_secs: u64,
    /// Seconds a session may go on after its token expired (0: none). Past it, the session
    /// ends at its next operation.
    #[serde(default)]
    pub expiry_grace_secs: u64,
    /// At most one key-set fetch per this many seconds when a token names an unknown key.
    #[serde(default = "default_jwks_min_refresh")]
    pub jwks_min_refresh_secs: u64,
    /// The key set is fetched again when older than this (removed keys stop verifying).
    #[serde(default = "default_jwks_max_age")]
    pub jwks_max_age_secs: u64,
    /// Accept an `http://` issuer (only for an issuer on this host, e.g. in tests).
    #[serde(default)]
    pub allow_http: bool,
    /// A CA bundle for the issuer's TLS certificate; default: the system's roots.
    pub ca_file: Option<PathBuf>,
}

fn default_groups_claim() -> String {
    "groups".into()
}
fn default_username_claim() -> String {
    "sub".into()
}
fn default_clock_skew() -> u64 {
    30
}
fn default_jwks_min_refresh() -> u64 {
    10
}
fn default_jwks_max_age() -> u64 {
    600
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Postgres,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// The name clients give as their database (`psql -d name`).
    pub name: Spanned<String>,
    pub kind: TargetKind,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Plugins (by `[[plugin]]` name) that see this target's operations, in order.
    #[serde(default)]
    pub plugins: Vec<Spanned<String>>,
    pub postgres: Option<PgTargetConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    /// Plain TCP.
    Disable,
    /// TLS without certificate verification (encryption only).
    Require,
    /// TLS, certificate chain verified against `ca_file`, host name not checked.
    VerifyCa,
    /// TLS, chain and host name verified (default).
    #[default]
    VerifyFull,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgTargetConfig {
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    pub database: String,
    pub user: String,
    /// The upstream password; absent for trust or certificate authentication.
    pub password: Option<SecretRef>,
    #[serde(default)]
    pub tls: UpstreamTls,
    /// CA bundle for `verify-ca`/`verify-full`; default: the Web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// Name checked against the certificate for `verify-full`; default: `host`.
    pub server_name: Option<String>,
    /// Idle authenticated connections kept for this target in all (the least recently used
    /// goes first when full). Connections are reused only by clients with the same startup
    /// parameters.
    #[serde(default = "default_pool_idle")]
    pub pool_max_idle: usize,
    #[serde(default = "default_pool_idle_secs")]
    pub pool_idle_timeout_secs: u64,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
}

fn default_pg_port() -> u16 {
    5432
}
fn default_pool_idle() -> usize {
    16
}
fn default_pool_idle_secs() -> u64 {
    300
}
fn default_connect_timeout() -> u64 {
    5000
}

/// A configuration error pointing at a file position.
#[derive(Debug, thiserror::Error)]
#[error("{path}:{line}:{column}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.display().to_string(),
            line: 0,
            column: 0,
            message: format!("cannot read config: {e}"),
        })?;
        let mut cfg = Config::parse(&text, &path.display().to_string())?;
        // Relative paths in the file are relative to the file's directory.
        if let Some(base) = path.parent() {
            cfg.rebase_paths(base);
        }
        Ok(cfg)
    }

    /// Parse and validate config text; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let at = |span: Option<std::ops::Range<usize>>, message: String| {
            let (line, column) = span.map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            ConfigError {
                path: origin.to_string(),
                line,
                column,
                message,
            }
        };
        let cfg: Config = toml::from_str(text).map_err(|e| at(e.span(), e.message().trim().to_string()))?;

        let mut seen = HashSet::new();
        for (i, l) in cfg.listeners.iter().enumerate() {
            if !seen.insert(l.name.get_ref().clone()) {
                return Err(at(
                    Some(l.name.span()),
                    format!("listener[{i}].name: duplicate listener `{}`", l.name.get_ref()),
                ));
            }
            if let Err(m) = l.socket_addr() {
                return Err(at(Some(l.address.span()), format!("listener[{i}].address: {m}")));
            }
            if l.tls_cert.is_some() != l.tls_key.is_some() {
                return Err(at(
                    Some(l.name.span()),
                    format!("listener[{i}]: `tls_cert` and `tls_key` go together"),
                ));
            }
            if l.plaintext == PlaintextPolicy::Never && l.tls_cert.is_none() {
                return Err(at(
                    Some(l.name.span()),
                    format!("listener[{i}]: `plaintext = \"never\"` needs `tls_cert` and `tls_key`"),
                ));
            }
        }
        if let Some(m) = &cfg.metrics {
            let addr = m
                .socket_addr()
                .map_err(|e| at(Some(m.listen.span()), format!("metrics.listen: {e}")))?;
            let clash = cfg
                .listeners
                .iter()
                .find(|l| addr.port() != 0 && l.socket_addr().is_ok_and(|a| a == addr));
            if let Some(l) = clash {
                return Err(at(
                    Some(m.listen.span()),
                    format!(
                        "metrics.listen: `{addr}` is already the address of listener `{}`",
                        l.name.get_ref()
                    ),
                ));
            }
        }
        if let Some(a) = &cfg.admin {
            let addr = a
                .socket_addr()
                .map_err(|e| at(Some(a.listen.span()), format!("admin.listen: {e}")))?;
            let taken = cfg
                .listeners
                .iter()
                .any(|l| l.socket_addr().is_ok_and(|l| l == addr))
                || cfg
                    .metrics
                    .as_ref()
                    .is_some_and(|m| m.socket_addr().is_ok_and(|m| m == addr));
            if addr.port() != 0 && taken {
                return Err(at(
                    Some(a.listen.span()),
                    format!("admin.listen: `{addr}` is already used by a listener or the metrics endpoint"),
                ));
            }
        }
        for (i, w) in cfg.approvals.webhooks.iter().enumerate() {
            if let SecretOrString::Inline(url) = w.url.get_ref()
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(at(
                    Some(w.url.span()),
                    format!("approvals.webhook[{i}].url: expected an http:// or https:// URL"),
                ));
            }
            if w.max_attempts == 0 {
                return Err(at(
                    Some(w.url.span()),
                    format!("approvals.webhook[{i}].max_attempts must be positive"),
                ));
            }
        }
        if cfg.access.min_approvals == 0
            || cfg.access.max_duration_secs == 0
            || cfg.access.request_timeout_secs == 0
        {
            return Err(at(
                None,
                "access: `min_approvals`, `max_duration_secs` and `request_timeout_secs` must be positive"
                    .to_string(),
            ));
        }
        if cfg.approvals.timeout_secs == 0 || cfg.approvals.min_approvals == 0 {
            return Err(at(
                None,
                "approvals: `timeout_secs` and `min_approvals` must be positive".to_string(),
            ));
        }
        let mut seen = HashSet::new();
        for (i, id) in cfg.identities.iter().enumerate() {
            if !seen.insert(id.name.get_ref().clone()) {
                return Err(at(
                    Some(id.name.span()),
                    format!("identity[{i}].name: duplicate identity `{}`", id.name.get_ref()),
                ));
            }
            if !id.key_verifier.get_ref().starts_with("SCRAM-SHA-256$") {
                return Err(at(
                    Some(id.key_verifier.span()),
                    format!(
                        "identity[{i}].key_verifier: expected a SCRAM-SHA-256 verifier (see `gatehouse identity hash-key`)"
                    ),
                ));
            }
            if id.on_behalf_of.is_some() && id.kind != PrincipalKind::Agent {
                return Err(at(
                    Some(id.name.span()),
                    format!("identity[{i}].on_behalf_of: only agents act on behalf of someone"),
                ));
            }
        }
        let mut issuers = HashSet::new();
        for (i, o) in cfg.oidc.iter().enumerate() {
            let issuer = o.issuer.get_ref();
            if !issuers.insert(issuer.clone()) {
                return Err(at(
                    Some(o.issuer.span()),
                    format!("oidc[{i}].issuer: duplicate issuer `{issuer}`"),
                ));
            }
            let loopback_http = issuer
                .strip_prefix("http://")
                .map(|rest| {
                    let host = rest.split(['/', ':']).next().unwrap_or("");
                    host == "127.0.0.1" || host == "localhost" || rest.starts_with("[::1]")
                })
                .unwrap_or(false);
            if !(issuer.starts_with("https://") || (o.allow_http && loopback_http)) {
                return Err(at(
                    Some(o.issuer.span()),
                    format!(
                        "oidc[{i}].issuer: expected an https:// URL (http:// only on this host, with `allow_http = true`)"
                    ),
                ));
            }
            if o.audience.is_empty() || o.groups_claim.is_empty() || o.username_claim.is_empty() {
                return Err(at(
                    Some(o.issuer.span()),
                    format!("oidc[{i}]: `audience`, `groups_claim` and `username_claim` must not be empty"),
                ));
            }
            if o.jwks_min_refresh_secs == 0
                || o.jwks_max_age_secs < o.jwks_min_refresh_secs
                || o.jwks_max_age_secs > 7 * 86_400
            {
                return Err(at(
                    Some(o.issuer.span()),
                    format!("oidc[{i}]: need 0 < jwks_min_refresh_secs <= jwks_max_age_secs <= 604800"),
                ));
            }
            if o.clock_skew_secs > 3600 || o.expiry_grace_secs > 86_400 {
                return Err(at(
                    Some(o.issuer.span()),
                    format!("oidc[{i}]: clock_skew_secs is at most 3600 and expiry_grace_secs at most 86400"),
                ));
            }
            // Two issuers naming principals the same way would make one's `alice` the other's.
            if cfg.oidc[..i].iter().any(|p| p.name_prefix == o.name_prefix) {
                return Err(at(
                    Some(o.issuer.span()),
                    format!(
                        "oidc[{i}].name_prefix: `{}` is already another issuer's; give each issuer its own prefix",
                        o.name_prefix
                    ),
                ));
            }
        }
        let mut plugins = HashSet::new();
        for (i, p) in cfg.plugins.iter().enumerate() {
            if !plugins.insert(p.name.get_ref().clone()) {
                return Err(at(
                    Some(p.name.span()),
                    format!("plugin[{i}].name: duplicate plugin `{}`", p.name.get_ref()),
                ));
            }
            if p.timeout_ms == 0 || p.memory_mb == 0 {
                return Err(at(
                    Some(p.name.span()),
                    format!("plugin[{i}]: `timeout_ms` and `memory_mb` must be positive"),
                ));
            }
        }
        let mut seen = HashSet::new();
        for (i, t) in cfg.targets.iter().enumerate() {
            for p in &t.plugins {
                if !plugins.contains(p.get_ref()) {
                    return Err(at(
                        Some(p.span()),
                        format!("target[{i}].plugins: no `[[plugin]]` named `{}`", p.get_ref()),
                    ));
                }
            }
            if !seen.insert(t.name.get_ref().clone()) {
                return Err(at(
                    Some(t.name.span()),
                    format!("target[{i}].name: duplicate target `{}`", t.name.get_ref()),
                ));
            }
            match t.kind {
                TargetKind::Postgres => {
                    let Some(pg) = &t.postgres else {
                        return Err(at(
                            Some(t.name.span()),
                            format!(
                                "target[{i}].postgres: a postgres target needs a `[target.postgres]` section"
                            ),
                        ));
                    };
                    if pg.tls == UpstreamTls::VerifyCa && pg.ca_file.is_none() {
                        return Err(at(
                            Some(t.name.span()),
                            format!("target[{i}].postgres.ca_file: `tls = \"verify-ca\"` needs `ca_file`"),
                        ));
                    }
                }
            }
        }
        if let Some(st) = &cfg.store {
            if cfg.admin.is_none() {
                return Err(at(
                    None,
                    "store: a shared store holds approvals and grants, which need `[admin]`".into(),
                ));
            }
            if st.timeout_ms == 0 {
                return Err(at(None, "store.timeout_ms: must be positive".into()));
            }
        }
        Ok(cfg)
    }

    fn rebase_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.policy.dir);
        fix(&mut self.recorder.dir);
        for w in &mut self.approvals.webhooks {
            if let Some(SecretRef::File(p)) = &mut w.secret {
                fix(p);
            }
        }
        for p in &mut self.plugins {
            fix(&mut p.path);
        }
        if let Some(a) = &mut self.admin {
            for p in [&mut a.tls_cert, &mut a.tls_key].into_iter().flatten() {
                fix(p);
            }
        }
        for o in &mut self.oidc {
            if let Some(p) = &mut o.ca_file {
                fix(p);
            }
        }
        if let Some(st) = &mut self.store {
            if let Some(p) = &mut st.ca_file {
                fix(p);
            }
            if let SecretOrString::Ref(SecretRef::File(p)) = &mut st.postgres {
                fix(p);
            }
        }
        for l in &mut self.listeners {
            if let Some(p) = &mut l.tls_cert {
                fix(p);
            }
            if let Some(p) = &mut l.tls_key {
                fix(p);
            }
        }
        for t in &mut self.targets {
            if let Some(pg) = &mut t.postgres {
                if let Some(p) = &mut pg.ca_file {
                    fix(p);
                }
                if let Some(SecretRef::File(p)) = &mut pg.password {
                    fix(p);
                }
            }
        }
    }

    pub fn target(&self, name: &str) -> Option<&TargetConfig> {
        self.targets.iter().find(|t| t.name.get_ref() == name)
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, column)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;

    const BASE: &str = r#"
[policy]
dir = "policies"

[recorder]
dir = "/tmp/log"

[[listener]]
name = "pg"
protocol = "postgres"
address = "127.0.0.1:0"

[[target]]
name = "app"
kind = "postgres"
tags = { env = "prod" }
[target.postgres]
host = "127.0.0.1"
database = "app"
user = "svc"
password = { env = "APP_PW" }
tls = "disable"
"#;

    #[test]
    fn parses_example() {
        let cfg = Config::parse(BASE, "t.toml").unwrap();
        assert_eq!(cfg.targets[0].postgres.as_ref().unwrap().port, 5432);
        assert_eq!(
            cfg.targets[0].postgres.as_ref().unwrap().password,
            Some(SecretRef::Env("APP_PW".into()))
        );
        assert_eq!(cfg.listeners[0].plaintext, PlaintextPolicy::Loopback);
    }

    #[test]
    fn unknown_field_names_line_and_field() {
        let text = BASE.replace("user = \"svc\"", "user = \"svc\"\nusr = \"typo\"");
        let err = Config::parse(&text, "t.toml").unwrap_err();
        assert_eq!(err.line, 21, "{err}");
        assert!(err.message.contains("unknown field `usr`"), "{err}");
    }

    #[test]
    fn semantic_error_names_line() {
        let text = BASE.replace("address = \"127.0.0.1:0\"", "address = \"nonsense\"");
        let err = Config::parse(&text, "t.toml").unwrap_err();
        assert_eq!(err.line, 11, "{err}");
        assert!(err.message.starts_with("listener[0].address"), "{err}");
    }

    #[test]
    fn metrics_section_is_optional_and_validated() {
        assert!(Config::parse(BASE, "t.toml").unwrap().metrics.is_none());
        let text = format!("{BASE}\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
        let cfg = Config::parse(&text, "t.toml").unwrap();
        let m = cfg.metrics.unwrap();
        assert_eq!(m.socket_addr().unwrap(), "127.0.0.1:0".parse().unwrap());

        let text = format!("{BASE}\n[metrics]\nlisten = \"localhost\"\n");
        let err = Config::parse(&text, "t.toml").unwrap_err();
        assert_eq!(err.line, 25, "{err}");
        assert!(err.message.starts_with("metrics.listen: `localhost`"), "{err}");

        let text = format!("{BASE}\n[metrics]\nlisten = \"127.0.0.1:9464\"\npath = \"/m\"\n");
        let err = Config::parse(&text, "t.toml").unwrap_err();
        assert!(err.message.contains("unknown field `path`"), "{err}");

        let text =
            BASE.replace("127.0.0.1:0", "127.0.0.1:6432") + "\n[metrics]\nlisten = \"127.0.0.1:6432\"\n";
        let err = Config::parse(&text, "t.toml").unwrap_err();
        assert!(err.message.contains("listener `pg`"), "{err}");
    }

    #[test]
    fn admin_is_loopback_only_and_approvals_are_validated() {
        let cfg = Config::parse(BASE, "t.toml").unwrap();
        assert!(cfg.admin.is_none());
        assert_eq!(
            (cfg.approvals.timeout_secs, cfg.approvals.min_approvals),
            (600, 1)
        );
        let text = format!("{BASE}\n[admin]\nlisten = \"127.0.0.1:0\"\nadmins = [\"security\"]\n");
        let cfg = Config::parse(&text, "t.toml").unwrap();
        assert_eq!(cfg.admin.unwrap().admins, vec!["security".to_string()]);

        let text = format!("{BASE}\n[admin]\nlisten = \"0.0.0.0:9465\"\n");
        let err = Config::parse(&text, "t.toml").unwrap_err();
        assert_eq!(err.line, 25, "{err}");
        assert!(err.message.contains("not a loopback address"), "{err}");

        // Off loopback only over TLS; cert and key together.
        let tls = "tls_cert = \"a.pem\"\ntls_key = \"k.pem\"\n";
        let text = format!("{BASE}\n[admin]\nlisten = \"0.0.0.0:9465\"\n{tls}");
        assert!(Config::parse(&text, "t.toml").is_ok());
        let text = format!("{BASE}\n[admin]\nlisten = \"0.0.0.0:9465\"\ntls_cert = \"a.pem\"\n");
        let err = Config::parse(&text, "t.toml").unwrap_err();
        assert!(err.message.contains("go together"), "{err}");

        let text = format!("{BASE}\n[approvals]\nmin_approvals = 0\n");
        let err = Config::parse(&text, "t.toml").unwrap_err();
        assert!(err.message.contains("must be positive"), "{err}");

        let hooks = "\n[[approvals.webhook]]\nurl = \"https://h.example/x\"\ngroups = [\"dba\"]\nformat = \"slack\"\n[[approvals.webhook]]\nurl = { env = \"HOOK\" }\nsecret = { file = \"s\" }\n";
        let cfg = Config::parse(&format!("{BASE}{hooks}"), "t.toml").unwrap();
        let w = &cfg.approvals.webhooks;
        assert_eq!(w.len(), 2);
        assert_eq!((w[0].format, w[0].max_attempts), (WebhookFormat::Slack, 5));
        assert_eq!(
            *w[1].url.get_ref(),
            SecretOrString::Ref(SecretRef::Env("HOOK".into()))
        );
        let text = format!("{BASE}\n[[approvals.webhook]]\nurl = \"ftp://x\"\n");
        let err = Config::parse(&text, "t.toml").unwrap_err();
        assert!(err.message.contains("http:// or https://"), "{err}");
    }

    #[test]
    fn oidc_issuers_are_validated() {
        let one = "\n[[oidc]]\nissuer = \"https://idp.example.com\"\naudience = \"urn:gatehouse\"\n";
        let cfg = Config::parse(&format!("{BASE}{one}"), "t.toml").unwrap();
        let o = &cfg.oidc[0];
        assert_eq!(
            (
                o.groups_claim.as_str(),
                o.username_claim.as_str(),
                o.clock_skew_secs
            ),
            ("groups", "sub", 30)
        );
        // Two issuers need their own name prefixes.
        let two = one.replace("idp.example.com", "other.example.com");
        let err = Config::parse(&format!("{BASE}{one}{two}"), "t.toml").unwrap_err();
        assert!(err.message.contains("name_prefix"), "{err}");
        let prefixed = format!("{two}name_prefix = \"other:\"\n");
        assert!(Config::parse(&format!("{BASE}{one}{prefixed}"), "t.toml").is_ok());
        // http only for a loopback issuer, and only when allowed.
        let http = "\n[[oidc]]\nissuer = \"http://127.0.0.1:8080\"\naudience = \"a\"\n";
        assert!(Config::parse(&format!("{BASE}{http}"), "t.toml").is_err());
        assert!(Config::parse(&format!("{BASE}{http}allow_http = true\n"), "t.toml").is_ok());
        let remote = http.replace("127.0.0.1", "idp.example.com");
        assert!(Config::parse(&format!("{BASE}{remote}allow_http = true\n"), "t.toml").is_err());
        let huge = format!("{BASE}{one}jwks_max_age_secs = 99999999999\n");
        assert!(Config::parse(&huge, "t.toml").is_err());
    }

    #[test]
    fn missing_section_is_reported() {
        let text = BASE.split("[target.postgres]").next().unwrap();
        let err = Config::parse(text, "t.toml").unwrap_err();
        assert!(err.message.contains("[target.postgres]"), "{err}");
        assert_eq!(err.line, 14);
    }
}
