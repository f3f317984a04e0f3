//! Building a running gateway from a validated [`Config`].

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use gatehouse_core::TargetRef;
use gatehouse_core::config::{Config, ListenerProtocol, TargetKind};
use gatehouse_identity::{ChainProvider, IdentityProvider, OidcProvider, StaticKeys};
use gatehouse_pg::upstream::PgTarget;
use gatehouse_pg::{PgFront, PgFrontConfig};
use gatehouse_policy::PolicyEngine;
use gatehouse_recorder::Recorder;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{ListenFds, RunArgs, Server, ShutdownWatch};
use pingora_core::services::Service;

use crate::admin::AdminApi;
use crate::endpoint::Endpoint;
use crate::guard::GatehouseGuard;
use crate::metrics::GatewayMetrics;

/// Everything a gateway process runs, built but not yet serving.
pub struct Gateway {
    pub config: Config,
    pub recorder: Recorder,
    pub policy: Arc<PolicyEngine>,
    pub listeners: Vec<BoundListener>,
    /// The Prometheus endpoint, bound, when `[metrics]` is configured.
    pub metrics: Option<Endpoint>,
    /// The admin API, bound, when `[admin]` is configured.
    pub admin: Option<Endpoint>,
    /// Shipping off the host, when `[recorder.shipping]` is configured.
    pub shipper: Option<Arc<gatehouse_recorder::Shipper>>,
}

pub struct BoundListener {
    pub name: String,
    pub addr: std::net::SocketAddr,
    socket: Option<std::net::TcpListener>,
    front: Arc<PgFront>,
}

impl Gateway {
    /// Load policies, open the recorder, resolve target credentials and bind every listener.
    pub fn build(config: Config) -> Result<Gateway> {
        let policy = Arc::new(
            PolicyEngine::load(&config.policy.dir)
                .with_context(|| format!("loading policies from `{}`", config.policy.dir.display()))?,
        );
        let recorder = Recorder::open(&config.recorder)
            .with_context(|| format!("opening the audit log in `{}`", config.recorder.dir.display()))?;
        let shipper =
            gatehouse_recorder::Shipper::from_config(&config.recorder, recorder.clone())?.map(Arc::new);
        let keys = Arc::new(StaticKeys::from_config(&config.identities).map_err(anyhow::Error::msg)?);
        let oidc = Arc::new(OidcProvider::from_config(&config.oidc).map_err(anyhow::Error::msg)?);
        if !oidc.is_empty() {
            // Fetch the issuers' keys before the first connection needs them.
            let o = oidc.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
                if let Ok(rt) = rt {
                    for e in rt.block_on(o.warm()) {
                        tracing::warn!(
                            "OIDC issuer not reachable at start (tokens from it are refused until it is): {e}"
                        );
                    }
                }
            });
        }
        // Named identities first: a token cannot claim a name that has an access key.
        let identities: Arc<dyn IdentityProvider> = Arc::new(ChainProvider::new(vec![
            keys.clone() as Arc<dyn IdentityProvider>,
            oidc.clone() as Arc<dyn IdentityProvider>,
        ]));
        let plugins = crate::plugins::Plugins::load(&config)?.map(Arc::new);
        let plugin_set = plugins.as_ref().map(|p| p.set().clone());
        let hash = crate::masking::hash_masker(&config.masking, &config.recorder.dir)?;
        // Approvals and grants shared with other gateways, when configured.
        let store = match (&config.store, &config.admin) {
            (Some(st), Some(_)) => {
                let dsn = st
                    .postgres
                    .resolve()
                    .map_err(|e| anyhow::anyhow!("store.postgres: {e}"))?;
                let opts = gatehouse_approval::pgstore::PgStoreOptions {
                    dsn,
                    ca_file: st.ca_file.clone(),
                    op_timeout: std::time::Duration::from_millis(st.timeout_ms),
                    history: config.approvals.history,
                };
                let store =
                    gatehouse_approval::pgstore::PgStore::start(opts, std::time::Duration::from_secs(10))
                        .map_err(|e| anyhow::anyhow!("store: {e}"))?;
                Some(store)
            }
            _ => None,
        };
        // Holds exist only where someone can approve them (the admin API).
        let approvals = config.admin.as_ref().map(|_| {
            Arc::new(match &store {
                Some(s) => gatehouse_approval::Approvals::with_store(Arc::new(s.clone())),
                None => gatehouse_approval::Approvals::new(config.approvals.history),
            })
        });
        // Access grants need approvers, hence the admin API.
        let grants = match &approvals {
            Some(_) => {
                let grants = match &store {
                    Some(s) => gatehouse_approval::access::Grants::shared(Arc::new(s.clone())),
                    None => {
                        let path = config.recorder.dir.join("access").join("grants.json");
                        gatehouse_approval::access::Grants::open(&path)
                            .map_err(|e| anyhow::anyhow!("access grants: {e}"))?
                    }
                };
                // Expiries are recorded as they come (those missed while down, at once).
                let (g, r) = (grants.clone(), recorder.clone());
                std::thread::Builder::new()
                    .name("grant-expiry".into())
                    .spawn(move || {
                        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
                        if let Ok(rt) = rt {
                            rt.block_on(crate::admin::record_expiries(g, r));
                        }
                    })
                    .context("starting the grant expiry thread")?;
                Some(Arc::new(grants))
            }
            None => None,
        };
        let notifier = match &approvals {
            Some(_) => notifier(&config, &recorder)?.map(Arc::new),
            None => None,
        };
        let guard = Arc::new(
            GatehouseGuard::new(
                policy.clone(),
                recorder.clone(),
                plugins,
                hash,
                approvals.clone(),
                config.approvals.clone(),
                notifier,
                &config.recorder.literals,
            )
            .with_grants(grants.clone())
            .with_results(config.recorder.results.max_bytes),
        );
        let mut targets = Vec::new();
        for t in &config.targets {
            match t.kind {
                TargetKind::Postgres => {
                    let Some(pg) = &t.postgres else { continue };
                    let target = PgTarget::new(t.name.get_ref(), pg).map_err(anyhow::Error::msg)?;
                    let tref = TargetRef {
                        name: t.name.get_ref().clone(),
                        kind: "postgres".into(),
                        tags: t.tags.clone(),
                    };
                    targets.push((Arc::new(target), tref));
                }
            }
        }
        let mut listeners = Vec::new();
        for l in &config.listeners {
            match l.protocol {
                ListenerProtocol::Postgres => {
                    let tls = match (&l.tls_cert, &l.tls_key) {
                        (Some(c), Some(k)) => {
                            Some(gatehouse_pg::tls::server_config(c, k).map_err(anyhow::Error::msg)?)
                        }
                        _ => None,
                    };
                    let addr = l.socket_addr().map_err(anyhow::Error::msg)?;
                    let socket = std::net::TcpListener::bind(addr)
                        .with_context(|| format!("listener `{}`: cannot bind {addr}", l.name.get_ref()))?;
                    socket.set_nonblocking(true)?;
                    let front = PgFront::new(PgFrontConfig {
                        listener_name: l.name.get_ref().clone(),
                        targets: targets.clone(),
                        identities: identities.clone(),
                        guard: guard.clone(),
                        tls,
                        plaintext: l.plaintext,
                    });
                    listeners.push(BoundListener {
                        name: l.name.get_ref().clone(),
                        addr: socket.local_addr()?,
                        socket: Some(socket),
                        front,
                    });
                }
            }
        }
        let metrics = match &config.metrics {
            None => None,
            Some(m) => {
                let addr = m.socket_addr().map_err(anyhow::Error::msg)?;
                let source = GatewayMetrics {
                    recorder: recorder.clone(),
                    policy: policy.clone(),
                    listeners: listeners
                        .iter()
                        .map(|l| (l.name.clone(), l.front.clone()))
                        .collect(),
                    targets: targets.iter().map(|(t, r)| (r.name.clone(), t.clone())).collect(),
                    plugins: plugin_set,
                    shipping: shipper.clone(),
                    approvals: approvals.clone(),
                    store: store.clone(),
                };
                Some(
                    crate::metrics::endpoint(addr, Arc::new(source))
                        .with_context(|| format!("metrics: cannot bind {addr}"))?,
                )
            }
        };
        let admin = match (&config.admin, approvals) {
            (Some(a), Some(approvals)) => {
                let addr = a.socket_addr().map_err(anyhow::Error::msg)?;
                let api = AdminApi::new(
                    a,
                    approvals,
                    recorder.clone(),
                    keys.clone(),
                    (!oidc.is_empty()).then(|| oidc.clone()),
                    config.recorder.dir.clone(),
                )
                .with_access(grants.clone(), config.access.clone());
                let tls = match (&a.tls_cert, &a.tls_key) {
                    (Some(c), Some(k)) => Some(
                        gatehouse_pg::tls::server_config(c, k)
                            .map_err(|e| anyhow::anyhow!("admin API TLS: {e}"))?,
                    ),
                    _ => None,
                };
                Some(
                    crate::admin::endpoint(addr, Arc::new(api), tls)
                        .with_context(|| format!("admin API: cannot bind {addr}"))?,
                )
            }
            _ => None,
        };
        Ok(Gateway {
            config,
            recorder,
            policy,
            listeners,
            metrics,
            admin,
            shipper,
        })
    }

    /// Serve until SIGTERM (graceful) / SIGINT (fast); returns after the services stopped.
    pub fn run(self) -> Result<()> {
        if self.config.policy.reload_interval_ms > 0 {
            self.policy
                .watch(Duration::from_millis(self.config.policy.reload_interval_ms))
                .context("starting the policy reload thread")?;
        }
        let threads = self
            .config
            .gateway
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
        let conf = ServerConf {
            threads,
            grace_period_seconds: Some(0),
            graceful_shutdown_timeout_seconds: Some(self.config.gateway.shutdown_grace_secs),
            ..ServerConf::default()
        };
        let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
        server.bootstrap();
        let grace = Duration::from_secs(self.config.gateway.shutdown_grace_secs);
        for l in self.listeners {
            server.add_service(PgService {
                name: format!("pg:{}", l.name),
                socket: l.socket,
                front: l.front,
                grace,
            });
        }
        if let Some(m) = self.metrics {
            // After the listeners' lines (printed by the caller between build and run).
            m.report();
            server.add_service(m);
        }
        if let Some(a) = self.admin {
            a.report();
            server.add_service(a);
        }
        if let Some(s) = &self.shipper {
            server.add_service(ShipService { shipper: s.clone() });
        }
        // Every address is out: scripts waiting for the lines above can stop reading.
        {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", serde_json::json!({"event": "ready"}));
            let _ = out.flush();
        }
        server.run(RunArgs::default());
        // The recorder signs its last events as it closes; ship them while we are here (what
        // does not make it in time goes at the next start).
        self.recorder.shutdown();
        if let Some(s) = &self.shipper {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            match rt.map(|rt| rt.block_on(s.drain(Duration::from_secs(10)))) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(sink = %s.sink_url(), error = %e, "final shipping incomplete"),
                Err(e) => tracing::warn!(error = %e, "no runtime for the final shipping"),
            }
        }
        Ok(())
    }
}

/// The approvers' webhooks; each delivery's outcome is recorded in the request's session.
fn notifier(config: &Config, recorder: &Recorder) -> Result<Option<gatehouse_approval::notify::Notifier>> {
    use gatehouse_approval::notify::{Delivery, Format, Notifier, Webhook};
    use gatehouse_core::config::WebhookFormat;
    let mut hooks = Vec::new();
    for (i, w) in config.approvals.webhooks.iter().enumerate() {
        let url = w
            .url
            .get_ref()
            .resolve()
            .map_err(|e| anyhow::anyhow!("approvals.webhook[{i}].url: {e}"))?;
        let secret = match &w.secret {
            Some(s) => Some(
                s.resolve()
                    .map_err(|e| anyhow::anyhow!("approvals.webhook[{i}].secret: {e}"))?,
            ),
            None => None,
        };
        hooks.push(Webhook {
            url,
            groups: w.groups.clone(),
            format: match w.format {
                WebhookFormat::Json => Format::Json,
                WebhookFormat::Slack => Format::Slack,
            },
            secret,
            max_attempts: w.max_attempts,
        });
    }
    let recorder = recorder.clone();
    let report = Arc::new(move |d: Delivery| {
        let (level, message) = match &d.error {
            None => (
                "info",
                format!(
                    "approval notification {} for request {} delivered to {} (attempt {})",
                    d.step.as_str(),
                    d.request,
                    d.webhook,
                    d.attempts
                ),
            ),
            Some(e) => (
                "warn",
                format!(
                    "approval notification {} for request {} to {} failed after {} attempts: {e}",
                    d.step.as_str(),
                    d.request,
                    d.webhook,
                    d.attempts
                ),
            ),
        };
        recorder.append_nowait(gatehouse_recorder::NewEvent::now(
            d.session_id,
            None,
            gatehouse_recorder::EventBody::Notice {
                level: level.to_string(),
                message,
            },
        ));
    });
    Notifier::start(hooks, report).context("starting the approval notifier")
}

/// Shipping as a pingora background service: it stops with the server.
struct ShipService {
    shipper: Arc<gatehouse_recorder::Shipper>,
}

#[async_trait]
impl Service for ShipService {
    async fn start_service(
        &mut self,
        _fds: Option<ListenFds>,
        mut shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        self.shipper.run(stop).await;
    }

    fn name(&self) -> &str {
        "shipping"
    }
}

/// A PostgreSQL listener as a pingora service: pingora owns runtimes, signals and shutdown; the
/// listening socket is bound by us before start so `127.0.0.1:0` works and is reported.
struct PgService {
    name: String,
    socket: Option<std::net::TcpListener>,
    front: Arc<PgFront>,
    grace: Duration,
}

#[async_trait]
impl Service for PgService {
    async fn start_service(
        &mut self,
        _fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let Some(socket) = self.socket.take() else { return };
        let listener = match tokio::net::TcpListener::from_std(socket) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(service = %self.name, "cannot register listener: {e}");
                return;
            }
        };
        self.front.clone().serve(listener, shutdown, self.grace).await;
    }

    fn name(&self) -> &str {
        &self.name
    }
}
