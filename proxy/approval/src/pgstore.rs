//! Approval requests and access grants in a PostgreSQL database that several gateways share
//! (`[store] postgres = "…"`).
//!
//! Behind a load balancer, the statement an approver releases may be held on any gateway, and
//! the approver may reach any other. Every gateway keeps requests and grants in the same
//! tables; the one whose client waits for a request hears of its end through `LISTEN`/`NOTIFY`
//! (channel `gatehouse_approvals`, payload: the request id) and, in case a notification was
//! lost with a connection, by re-reading the requests it waits for after every reconnect and
//! every [`RESYNC`].
//!
//! Changes are atomic without holding transactions open: a request row carries a `version`;
//! a change reads the row, applies the approver rules in Rust, and writes only if the version
//! is still the one it read (otherwise it reads again). Two approvers voting at once on two
//! gateways therefore both count, once each; a vote and a timeout racing end the request once.
//!
//! Grant expiries are claimed with one `UPDATE … RETURNING`, so exactly one gateway records
//! each.
//!
//! The connection: one per gateway, driven on a thread of its own, reconnected with backoff.
//! TLS (rustls) verifies the server's certificate and name against `ca_file` or the Web PKI
//! roots; without TLS only a loopback or Unix-socket server is accepted. While the database is
//! unreachable, nothing is assumed: a statement that needs approval is refused with the reason,
//! votes fail with 503, and sessions open without a grant (so a policy requiring one denies).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::{AsyncMessage, Client};

use crate::access::{Grant, GrantStore};
use crate::store::{ApprovalStore, Change};
use crate::{ApprovalRequest, State, StoreError, VoteError, Waiters, lock};

/// The notification channel for changed requests.
const CHANNEL: &str = "gatehouse_approvals";
/// How often the requests waited for here are re-read, whatever the notifications said.
pub const RESYNC: Duration = Duration::from_secs(10);
/// Decided requests and recorded-expired grants older than this are deleted (the audit logs
/// keep them).
const KEEP_DECIDED_US: i64 = 30 * 86_400 * 1_000_000;
const SCHEMA_VERSION: &str = "1";

/// Created once per database, under an advisory lock so gateways starting together do not
/// race each other.
const SCHEMA: &str = "
BEGIN;
SELECT pg_advisory_xact_lock(7310318432019482113);
CREATE TABLE IF NOT EXISTS gatehouse_store_meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO gatehouse_store_meta (key, value) VALUES ('schema', '1') ON CONFLICT (key) DO NOTHING;
CREATE TABLE IF NOT EXISTS gatehouse_approvals (
    id text PRIMARY KEY,
    state text NOT NULL,
    session_id text NOT NULL,
    created_us bigint NOT NULL,
    expires_us bigint NOT NULL,
    version bigint NOT NULL DEFAULT 0,
    body text NOT NULL
);
CREATE INDEX IF NOT EXISTS gatehouse_approvals_created ON gatehouse_approvals (created_us DESC, id);
CREATE INDEX IF NOT EXISTS gatehouse_approvals_pending ON gatehouse_approvals (session_id) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS gatehouse_grants (
    id text PRIMARY KEY,
    principal text NOT NULL,
    on_behalf_of text,
    target text NOT NULL,
    expires_us bigint NOT NULL,
    expiry_recorded boolean NOT NULL DEFAULT false,
    body text NOT NULL
);
CREATE INDEX IF NOT EXISTS gatehouse_grants_principal ON gatehouse_grants (principal, target, expires_us);
CREATE INDEX IF NOT EXISTS gatehouse_grants_unrecorded ON gatehouse_grants (expires_us) WHERE NOT expiry_recorded;
COMMIT;
";

/// `[store]` as the store needs it.
#[derive(Debug, Clone)]
pub struct PgStoreOptions {
    /// libpq-style connection string or `postgresql://` URL.
    pub dsn: String,
    /// CA bundle (PEM) the server's certificate must chain to; `None`: the Web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// Longest wait for one store operation.
    pub op_timeout: Duration,
    /// Requests `list` returns at most.
    pub history: usize,
}

/// The shared store. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    shared: Arc<Shared>,
}

struct Shared {
    client: Mutex<Option<Arc<Client>>>,
    /// Why there is no connection (user-facing).
    down: Mutex<String>,
    waiters: Mutex<Vec<Arc<Waiters>>>,
    op_timeout: Duration,
    history: i64,
}

/// Whether a connection string (`key=value …` or a URL's query) sets `key`.
fn dsn_mentions(dsn: &str, key: &str) -> bool {
    dsn.split(|c: char| c.is_whitespace() || c == '&' || c == '?')
        .any(|part| part.split_once('=').is_some_and(|(k, _)| k == key))
}

fn is_loopback(host: &Host) -> bool {
    match host {
        Host::Tcp(h) => h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()),
        Host::Unix(_) => true,
    }
}

impl PgStore {
    /// Check the options and start connecting. Waits up to `wait_first` for the first
    /// connection; the store keeps trying in the background when it does not come (operations
    /// fail with the reason meanwhile).
    pub fn start(opts: PgStoreOptions, wait_first: Duration) -> Result<PgStore, String> {
        let mut cfg: tokio_postgres::Config = opts
            .dsn
            .parse()
            .map_err(|e| format!("store connection string: {e}"))?;
        if cfg.get_hosts().is_empty() {
            return Err("store connection string: no host".into());
        }
        let plain_ok =
            cfg.get_hosts().iter().all(is_loopback) && cfg.get_hostaddrs().iter().all(|ip| ip.is_loopback());
        if cfg.get_ssl_mode() != SslMode::Require && !plain_ok {
            return Err(
                "store connection string: a server off this host needs `sslmode=require` \
                 (its certificate is verified against `ca_file` or the Web PKI)"
                    .into(),
            );
        }
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(Duration::from_secs(10));
        }
        // A connection whose peer vanished (a half-open TCP connection) must not linger: the
        // kernel gives up on unacknowledged writes after this, and idle connections are
        // probed (besides the liveness query every RESYNC).
        // (What the connection string sets wins.)
        let given = |k: &str| dsn_mentions(&opts.dsn, k);
        if !given("keepalives") {
            cfg.keepalives(true);
        }
        if !given("keepalives_idle") {
            cfg.keepalives_idle(Duration::from_secs(30));
        }
        if cfg.get_tcp_user_timeout().is_none() {
            cfg.tcp_user_timeout(Duration::from_secs(30));
        }
        cfg.application_name("gatehouse-store");
        let tls = RustlsConnect(Arc::new(client_config(opts.ca_file.as_deref())?));
        let shared = Arc::new(Shared {
            client: Mutex::new(None),
            down: Mutex::new("not connected yet".into()),
            waiters: Mutex::new(Vec::new()),
            op_timeout: opts.op_timeout,
            history: i64::try_from(opts.history).unwrap_or(i64::MAX),
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let s = shared.clone();
        std::thread::Builder::new()
            .name("approval-store".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
                match rt {
                    Ok(rt) => rt.block_on(run(s, cfg, tls, ready_tx)),
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot start the store's runtime: {e}")));
                    }
                }
            })
            .map_err(|e| format!("cannot start the store's thread: {e}"))?;
        match ready_rx.recv_timeout(wait_first) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("approval store not reachable yet (retrying): {e}"),
            Err(_) => tracing::warn!("approval store not reachable yet (retrying)"),
        }
        Ok(PgStore { shared })
    }

    /// Whether a connection is up (for health).
    pub fn connected(&self) -> bool {
        lock(&self.shared.client).is_some()
    }

    fn client(&self) -> Result<Arc<Client>, StoreError> {
        self.shared.client()
    }

    /// Run one operation with the store's timeout.
    async fn timed<T>(
        &self,
        f: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.shared.op_timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError(db_error(&e))),
            Err(_) => Err(StoreError(format!(
                "no answer within {} ms",
                self.shared.op_timeout.as_millis()
            ))),
        }
    }
}

impl Shared {
    fn client(&self) -> Result<Arc<Client>, StoreError> {
        match lock(&self.client).as_ref() {
            Some(c) if !c.is_closed() => Ok(c.clone()),
            _ => Err(StoreError(lock(&self.down).clone())),
        }
    }

    /// Deliver to this gateway's waiters the end of request `id`, if it ended.
    async fn wake(&self, id: &str) {
        let waiters: Vec<Arc<Waiters>> = lock(&self.waiters)
            .iter()
            .filter(|w| w.waits_for(id))
            .cloned()
            .collect();
        if waiters.is_empty() {
            return;
        }
        let Ok(client) = self.client() else { return };
        let row = client
            .query_opt("SELECT body FROM gatehouse_approvals WHERE id = $1", &[&id])
            .await;
        if let Ok(Some(row)) = row
            && let Ok(req) = request_from(&row)
        {
            for w in waiters {
                w.deliver(&req);
            }
        }
    }

    /// Re-read every request waited for here (notifications may have been lost).
    async fn resync(&self) {
        let ids: Vec<String> = lock(&self.waiters).iter().flat_map(|w| w.ids()).collect();
        for id in ids {
            self.wake(&id).await;
        }
    }
}

fn db_error(e: &tokio_postgres::Error) -> String {
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(db), _) => format!("{}: {}", db.code().code(), db.message()),
        (None, Some(cause)) => format!("{e}: {cause}"),
        (None, None) => e.to_string(),
    }
}

/// The JSON `body` (first column) of a row, as a `what` (for the error).
fn body_of<T: serde::de::DeserializeOwned>(row: &tokio_postgres::Row, what: &str) -> Result<T, StoreError> {
    let body: String = row.try_get(0).map_err(|e| StoreError(e.to_string()))?;
    serde_json::from_str(&body).map_err(|e| StoreError(format!("unreadable {what} in the store: {e}")))
}

fn request_from(row: &tokio_postgres::Row) -> Result<ApprovalRequest, StoreError> {
    body_of(row, "request")
}

fn grant_from(row: &tokio_postgres::Row) -> Result<Grant, StoreError> {
    body_of(row, "grant")
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError(e.to_string()))
}

/// Connect, keep connected, resync; forever.
async fn run(
    shared: Arc<Shared>,
    cfg: tokio_postgres::Config,
    tls: RustlsConnect,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(250);
    loop {
        match connect(&shared, &cfg, &tls).await {
            Ok(mut closed) => {
                backoff = Duration::from_millis(250);
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(()));
                }
                tracing::info!("approval store connected");
                shared.resync().await;
                let mut ticks: u32 = 0;
                let why = loop {
                    tokio::select! {
                        why = &mut closed => break why.unwrap_or_else(|_| "connection closed".into()),
                        _ = tokio::time::sleep(RESYNC) => {
                            // A liveness probe: a connection that stopped answering is
                            // replaced now, not when the kernel notices.
                            if let Err(e) = probe(&shared).await {
                                break e;
                            }
                            shared.resync().await;
                            ticks = ticks.wrapping_add(1);
                            if ticks % 360 == 1 {
                                prune(&shared).await;
                            }
                        }
                    }
                };
                *lock(&shared.client) = None;
                *lock(&shared.down) = format!("connection lost: {why}");
                tracing::warn!("approval store connection lost (reconnecting): {why}");
            }
            Err(e) => {
                *lock(&shared.down) = e.clone();
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(e.clone()));
                }
                tracing::debug!("approval store: {e}");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// `SELECT 1` within the store's operation timeout.
async fn probe(shared: &Shared) -> Result<(), String> {
    let client = shared.client().map_err(|e| e.0)?;
    match tokio::time::timeout(shared.op_timeout, client.simple_query("SELECT 1")).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("liveness probe failed: {}", db_error(&e))),
        Err(_) => Err(format!(
            "no answer to a liveness probe within {} ms",
            shared.op_timeout.as_millis()
        )),
    }
}

/// One connection: open it, drive it, create the schema, listen. The receiver says why it
/// closed.
async fn connect(
    shared: &Arc<Shared>,
    cfg: &tokio_postgres::Config,
    tls: &RustlsConnect,
) -> Result<tokio::sync::oneshot::Receiver<String>, String> {
    let (client, mut conn) = cfg
        .connect(tls.clone())
        .await
        .map_err(|e| format!("cannot connect: {}", db_error(&e)))?;
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    let s = shared.clone();
    tokio::spawn(async move {
        let why = loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == CHANNEL => {
                    let s = s.clone();
                    let id = n.payload().to_string();
                    tokio::spawn(async move { s.wake(&id).await });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break db_error(&e),
                None => break "connection closed".to_string(),
            }
        };
        let _ = closed_tx.send(why);
    });
    client
        .batch_execute(SCHEMA)
        .await
        .map_err(|e| format!("cannot create the store's tables: {}", db_error(&e)))?;
    let row = client
        .query_one("SELECT value FROM gatehouse_store_meta WHERE key = 'schema'", &[])
        .await
        .map_err(|e| format!("cannot read the store's schema version: {}", db_error(&e)))?;
    let version: String = row.try_get(0).map_err(|e| e.to_string())?;
    if version != SCHEMA_VERSION {
        return Err(format!(
            "the store's tables have schema version {version}; this Gatehouse knows {SCHEMA_VERSION}"
        ));
    }
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(|e| format!("cannot listen for changes: {}", db_error(&e)))?;
    *lock(&shared.client) = Some(Arc::new(client));
    Ok(closed_rx)
}

async fn prune(shared: &Shared) {
    let Ok(client) = shared.client() else { return };
    let before = gatehouse_core::time::now_micros().saturating_sub(KEEP_DECIDED_US);
    let r = client
        .execute(
            "DELETE FROM gatehouse_approvals WHERE state <> 'pending' AND created_us < $1",
            &[&before],
        )
        .await
        .and(
            client
                .execute(
                    "DELETE FROM gatehouse_grants WHERE expiry_recorded AND expires_us < $1",
                    &[&before],
                )
                .await,
        );
    if let Err(e) = r {
        tracing::warn!("approval store: cannot delete old requests: {}", db_error(&e));
    }
}

#[async_trait]
impl ApprovalStore for PgStore {
    async fn insert(&self, req: &ApprovalRequest) -> Result<bool, StoreError> {
        let client = self.client()?;
        let body = json(req)?;
        let n = self
            .timed(client.execute(
                "INSERT INTO gatehouse_approvals (id, state, session_id, created_us, expires_us, body) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
                &[
                    &req.id,
                    &req.state.as_str(),
                    &req.session_id,
                    &req.created_us,
                    &req.expires_us,
                    &body,
                ],
            ))
            .await?;
        Ok(n == 1)
    }

    async fn get(&self, id: &str) -> Result<Option<ApprovalRequest>, StoreError> {
        let client = self.client()?;
        let row = self
            .timed(client.query_opt("SELECT body FROM gatehouse_approvals WHERE id = $1", &[&id]))
            .await?;
        row.as_ref().map(request_from).transpose()
    }

    async fn update(&self, id: &str, change: &Change<'_>) -> Result<ApprovalRequest, VoteError> {
        let client = self.client()?;
        // Another gateway changing the same request in between makes the write miss; read
        // again. Bounded: each miss is somebody else's successful change.
        for _ in 0..32 {
            let Some(row) = self
                .timed(client.query_opt(
                    "SELECT body, version FROM gatehouse_approvals WHERE id = $1",
                    &[&id],
                ))
                .await?
            else {
                return Err(VoteError::NotFound(id.to_string()));
            };
            let req = request_from(&row)?;
            let version: i64 = row.try_get(1).map_err(|e| StoreError(e.to_string()))?;
            if req.state != State::Pending {
                return Err(VoteError::NotPending(id.to_string(), req.state.as_str()));
            }
            let after = change(&req)?;
            let body = json(&after)?;
            let written = self
                .timed(client.query(
                    "WITH u AS (UPDATE gatehouse_approvals SET state = $2, body = $3, version = version + 1 \
                     WHERE id = $1 AND version = $4 RETURNING id) \
                     SELECT pg_notify('gatehouse_approvals', id) FROM u",
                    &[&id, &after.state.as_str(), &body, &version],
                ))
                .await?;
            if written.len() == 1 {
                return Ok(after);
            }
        }
        Err(VoteError::Unavailable(
            "approval store unavailable: the request changed too often to update it".into(),
        ))
    }

    async fn list(&self, state: Option<State>) -> Result<Vec<ApprovalRequest>, StoreError> {
        let client = self.client()?;
        let state = state.map(State::as_str);
        let rows = self
            .timed(client.query(
                "SELECT body FROM gatehouse_approvals WHERE ($1::text IS NULL OR state = $1) \
                 ORDER BY created_us DESC, id LIMIT $2",
                &[&state, &self.shared.history],
            ))
            .await?;
        rows.iter().map(request_from).collect()
    }

    async fn pending_in_session(&self, session_id: &str) -> Result<Vec<String>, StoreError> {
        let client = self.client()?;
        let rows = self
            .timed(client.query(
                "SELECT id FROM gatehouse_approvals WHERE session_id = $1 AND state = 'pending'",
                &[&session_id],
            ))
            .await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(|e| StoreError(e.to_string())))
            .collect()
    }

    fn watch(&self, waiters: Arc<Waiters>) {
        lock(&self.shared.waiters).push(waiters);
    }
}

#[async_trait]
impl GrantStore for PgStore {
    async fn add(&self, grant: &Grant, _now_us: i64) -> Result<(), StoreError> {
        let client = self.client()?;
        let body = json(grant)?;
        self.timed(client.execute(
            "INSERT INTO gatehouse_grants (id, principal, on_behalf_of, target, expires_us, body) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
            &[
                &grant.id,
                &grant.principal,
                &grant.on_behalf_of,
                &grant.target,
                &grant.expires_us,
                &body,
            ],
        ))
        .await?;
        Ok(())
    }

    async fn active(
        &self,
        principal: &str,
        on_behalf_of: Option<&str>,
        target: &str,
        now_us: i64,
    ) -> Result<Option<Grant>, StoreError> {
        let client = self.client()?;
        let row = self
            .timed(client.query_opt(
                "SELECT body FROM gatehouse_grants WHERE principal = $1 AND target = $2 \
                 AND on_behalf_of IS NOT DISTINCT FROM $3 AND expires_us > $4 \
                 ORDER BY expires_us DESC LIMIT 1",
                &[&principal, &target, &on_behalf_of, &now_us],
            ))
            .await?;
        row.as_ref().map(grant_from).transpose()
    }

    async fn list(&self, principal: Option<&str>, now_us: i64) -> Result<Vec<Grant>, StoreError> {
        let client = self.client()?;
        let rows = self
            .timed(client.query(
                "SELECT body FROM gatehouse_grants WHERE expires_us > $1 \
                 AND ($2::text IS NULL OR principal = $2) ORDER BY expires_us, id",
                &[&now_us, &principal],
            ))
            .await?;
        rows.iter().map(grant_from).collect()
    }

    async fn claim_expired(&self, now_us: i64) -> Result<Vec<Grant>, StoreError> {
        let client = self.client()?;
        let rows = self
            .timed(client.query(
                "UPDATE gatehouse_grants SET expiry_recorded = true \
                 WHERE NOT expiry_recorded AND expires_us <= $1 RETURNING body",
                &[&now_us],
            ))
            .await?;
        let mut out: Vec<Grant> = rows.iter().map(grant_from).collect::<Result<_, _>>()?;
        out.sort_by(|a, b| a.expires_us.cmp(&b.expires_us).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }
}

fn client_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("store CA file `{}`: {e}", path.display()))?;
            let mut n = 0;
            for c in rustls_pemfile::certs(&mut &pem[..]) {
                let c = c.map_err(|e| format!("store CA file `{}`: {e}", path.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("store CA file `{}`: {e}", path.display()))?;
                n += 1;
            }
            if n == 0 {
                return Err(format!("store CA file `{}` holds no certificate", path.display()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// TLS for the store's connection: rustls, the server's certificate and name verified.
#[derive(Clone)]
struct RustlsConnect(Arc<rustls::ClientConfig>);

impl<S> MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnectOne;
    type Error = String;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnectOne, String> {
        let name = ServerName::try_from(domain.to_string())
            .map_err(|_| format!("`{domain}` is not a valid server name"))?;
        Ok(RustlsConnectOne {
            config: self.0.clone(),
            name,
        })
    }
}

struct RustlsConnectOne {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnectOne
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(tls))
        })
    }
}

struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    /// The certificate is verified (name and chain), so SCRAM's channel binding would add
    /// little; SCRAM-SHA-256 without it is used.
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}
