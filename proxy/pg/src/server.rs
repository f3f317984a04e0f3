//! Accepting clients: startup packet, TLS, authentication, the `connect` decision and the
//! upstream handshake, then hand-over to the relay.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use gatehouse_core::config::PlaintextPolicy;
use gatehouse_core::guard::AuthFailure;
use gatehouse_core::{AuthInfo, Guard, SessionCtx, TargetRef, Verdict};
use gatehouse_identity::scram::{MECHANISM, ScramServer, ScramVerifier};
use gatehouse_identity::{AuthError, Credential, IdentityProvider};
use rand::RngCore;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::classify::ClassifyCache;
use crate::proto::{self, ProtoError, Severity, StartupPacket};
use crate::relay::{self, CancelSignal, RelayEnd};
use crate::stream::Stream;
use crate::upstream::{PgTarget, UpstreamError};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const PROTOCOL: &str = "postgres";

/// What a PostgreSQL listener needs.
pub struct PgFrontConfig {
    pub listener_name: String,
    pub targets: Vec<(Arc<PgTarget>, TargetRef)>,
    pub identities: Arc<dyn IdentityProvider>,
    pub guard: Arc<dyn Guard>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub plaintext: PlaintextPolicy,
}

struct CancelEntry {
    target: Arc<PgTarget>,
    pid: i32,
    secret: i32,
    /// Reaches a statement the session holds for approval (nothing runs upstream then).
    signal: Arc<CancelSignal>,
}

/// One PostgreSQL listener's shared state.
pub struct PgFront {
    cfg: PgFrontConfig,
    targets: HashMap<String, (Arc<PgTarget>, TargetRef)>,
    cancels: Mutex<HashMap<(i32, i32), CancelEntry>>,
    mock_secret: [u8; 32],
    cache: Arc<ClassifyCache>,
    active: AtomicUsize,
}

/// Why a connection ended before the relay started.
enum Refusal {
    /// Already answered (or nothing to answer); just close.
    Closed,
}

impl PgFront {
    pub fn new(cfg: PgFrontConfig) -> Arc<PgFront> {
        let targets = cfg
            .targets
            .iter()
            .map(|(t, r)| (r.name.clone(), (t.clone(), r.clone())))
            .collect();
        let mut mock_secret = [0u8; 32];
        rand::rng().fill_bytes(&mut mock_secret);
        Arc::new(PgFront {
            cfg,
            targets,
            cancels: Mutex::new(HashMap::new()),
            mock_secret,
            cache: Arc::new(ClassifyCache::new(10_000)),
            active: AtomicUsize::new(0),
        })
    }

    /// Sessions currently open.
    pub fn active_sessions(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn target(&self, name: &str) -> Option<&Arc<PgTarget>> {
        self.targets.get(name).map(|(t, _)| t)
    }

    /// Accept until `shutdown` turns true, then wait up to `grace` for sessions to end.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) {
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((tcp, peer)) => {
                        let this = self.clone();
                        tokio::spawn(async move { this.handle(tcp, peer).await });
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(listener = %self.cfg.listener_name, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = shutdown.changed() => if *shutdown.borrow() { break },
            }
        }
        drop(listener);
        let deadline = tokio::time::Instant::now() + grace;
        while self.active_sessions() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn handle(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        self.active.fetch_add(1, Ordering::Relaxed);
        let _ = self.session(Stream::Tcp(tcp), peer).await;
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    fn failed(&self, peer: SocketAddr, user: &str, target: &str, reason: impl Into<String>) {
        self.cfg.guard.connection_failed(AuthFailure {
            protocol: PROTOCOL,
            source: peer,
            user: user.to_string(),
            target: target.to_string(),
            reason: reason.into(),
        });
    }

    async fn fatal(stream: &mut Stream, code: &str, message: &str) {
        let mut out = BytesMut::new();
        proto::error_msg(&mut out, Severity::Fatal, code, message, None);
        let _ = stream.write_all(&out).await;
        let _ = stream.flush().await;
        let _ = stream.shutdown().await;
    }

    async fn session(self: &Arc<Self>, mut stream: Stream, peer: SocketAddr) -> Result<(), Refusal> {
        // ---- startup packet(s) ----
        let (version, params) = loop {
            let pkt = match tokio::time::timeout(STARTUP_TIMEOUT, proto::read_startup(&mut stream)).await {
                Err(_) => {
                    self.failed(peer, "", "", "startup packet timeout");
                    return Err(Refusal::Closed);
                }
                // A connection closed before sending anything (health checks, scanners).
                Ok(Err(ProtoError::Eof)) => return Err(Refusal::Closed),
                Ok(Err(e)) => {
                    self.failed(peer, "", "", format!("invalid startup packet: {e}"));
                    Self::fatal(&mut stream, "08P01", "invalid startup packet layout").await;
                    return Err(Refusal::Closed);
                }
                Ok(Ok(p)) => p,
            };
            match pkt {
                StartupPacket::Ssl => {
                    if stream.is_tls() {
                        self.failed(peer, "", "", "SSLRequest inside TLS");
                        Self::fatal(
                            &mut stream,
                            "08P01",
                            "unexpected SSLRequest inside an encrypted connection",
                        )
                        .await;
                        return Err(Refusal::Closed);
                    }
                    let Some(tls) = self.cfg.tls.clone() else {
                        if stream.write_all(b"N").await.is_err() {
                            return Err(Refusal::Closed);
                        }
                        continue;
                    };
                    let Stream::Tcp(tcp) = stream else {
                        return Err(Refusal::Closed);
                    };
                    let mut tcp = tcp;
                    if tcp.write_all(b"S").await.is_err() {
                        return Err(Refusal::Closed);
                    }
                    let accepted = tokio::time::timeout(
                        STARTUP_TIMEOUT,
                        tokio_rustls::TlsAcceptor::from(tls).accept(tcp),
                    )
                    .await;
                    match accepted {
                        Ok(Ok(s)) => stream = Stream::ServerTls(Box::new(s)),
                        Ok(Err(e)) => {
                            self.failed(peer, "", "", format!("TLS handshake failed: {e}"));
                            return Err(Refusal::Closed);
                        }
                        Err(_) => {
                            self.failed(peer, "", "", "TLS handshake timeout");
                            return Err(Refusal::Closed);
                        }
                    }
                }
                StartupPacket::GssEnc => {
                    if stream.is_tls() || stream.write_all(b"N").await.is_err() {
                        return Err(Refusal::Closed);
                    }
                }
                StartupPacket::Cancel { pid, key } => {
                    self.cancel(pid, key).await;
                    return Err(Refusal::Closed);
                }
                StartupPacket::Unsupported(v) => {
                    self.failed(
                        peer,
                        "",
                        "",
                        format!("unsupported protocol {}.{}", v >> 16, v & 0xffff),
                    );
                    let msg = format!(
                        "unsupported frontend protocol {}.{}: server supports 3.0 to 3.0",
                        v >> 16,
                        v & 0xffff
                    );
                    Self::fatal(&mut stream, "0A000", &msg).await;
                    return Err(Refusal::Closed);
                }
                StartupPacket::Startup { version, params } => break (version, params),
            }
        };

        // ---- parameters ----
        let mut user = String::new();
        let mut database = None;
        let mut forwarded = Vec::new();
        let mut unrecognized = Vec::new();
        let mut replication = false;
        for (k, v) in params {
            match k.as_str() {
                "user" => user = v,
                "database" => database = Some(v),
                "replication" => replication = !matches!(v.as_str(), "false" | "off" | "no" | "0"),
                _ if k.starts_with("_pq_.") => unrecognized.push(k),
                _ => forwarded.push((k, v)),
            }
        }
        let target_name = database.filter(|d| !d.is_empty()).unwrap_or_else(|| user.clone());
        if user.is_empty() {
            self.failed(peer, "", &target_name, "no user name in startup packet");
            Self::fatal(
                &mut stream,
                "28000",
                "no PostgreSQL user name specified in startup packet",
            )
            .await;
            return Err(Refusal::Closed);
        }
        if replication {
            self.failed(peer, &user, &target_name, "replication connection refused");
            Self::fatal(
                &mut stream,
                "28000",
                "replication connections are not supported through Gatehouse",
            )
            .await;
            return Err(Refusal::Closed);
        }
        if version & 0xffff != 0 || !unrecognized.is_empty() {
            let mut out = BytesMut::new();
            proto::negotiate_protocol_version(&mut out, 0, &unrecognized);
            if stream.write_all(&out).await.is_err() {
                return Err(Refusal::Closed);
            }
        }
        let tls = stream.is_tls();
        let plaintext_ok = match self.cfg.plaintext {
            PlaintextPolicy::Always => true,
            PlaintextPolicy::Loopback => peer.ip().is_loopback(),
            PlaintextPolicy::Never => false,
        };
        if !tls && !plaintext_ok {
            self.failed(peer, &user, &target_name, "plaintext connection refused");
            Self::fatal(
                &mut stream,
                "28000",
                "Gatehouse requires TLS for this connection (sslmode=require)",
            )
            .await;
            return Err(Refusal::Closed);
        }

        // ---- authentication ----
        let mut buf = BytesMut::with_capacity(1024);
        let auth = match self
            .authenticate(&mut stream, &mut buf, &user, tls || peer.ip().is_loopback())
            .await
        {
            Ok(a) => a,
            Err((reason, told)) => {
                self.failed(peer, &user, &target_name, reason);
                let message = match told {
                    // A token's owner may learn why it was refused (expired, wrong audience,
                    // issuer unreachable): nothing here says whether a name exists.
                    Some(why) => format!("password authentication failed for user \"{user}\": {why}"),
                    None => format!("password authentication failed for user \"{user}\""),
                };
                Self::fatal(&mut stream, "28P01", &message).await;
                return Err(Refusal::Closed);
            }
        };
        let mut out = BytesMut::new();
        proto::auth_request(&mut out, 0, &[]);

        // ---- target and connect decision ----
        let Some((target, target_ref)) = self.targets.get(&target_name).cloned() else {
            self.failed(peer, &user, &target_name, "unknown target");
            let _ = stream.write_all(&out).await;
            Self::fatal(
                &mut stream,
                "3D000",
                &format!("target \"{target_name}\" does not exist"),
            )
            .await;
            return Err(Refusal::Closed);
        };
        let application = forwarded
            .iter()
            .find(|(k, _)| k == "application_name")
            .map(|(_, v)| v.clone());
        let ctx = SessionCtx {
            session_id: new_session_id(),
            principal: auth.principal,
            target: target_ref,
            source_ip: peer.ip(),
            auth: auth.auth,
            client_app: application,
            grant: None,
        };
        let (sg, verdict) = match self.cfg.guard.open(ctx).await {
            Ok(v) => v,
            Err(e) => {
                let _ = stream.write_all(&out).await;
                Self::fatal(
                    &mut stream,
                    "58000",
                    &format!("gatehouse: {e}; connection refused"),
                )
                .await;
                return Err(Refusal::Closed);
            }
        };
        if let Verdict::Deny { reason, .. } = &verdict {
            let _ = stream.write_all(&out).await;
            Self::fatal(&mut stream, "42501", &format!("gatehouse: connection {reason}")).await;
            sg.close("connect denied");
            return Err(Refusal::Closed);
        }

        // ---- upstream ----
        let up = match target.acquire(&forwarded).await {
            Ok(up) => up,
            Err(UpstreamError::Startup(raw)) => {
                // The server's own startup error, exactly as it raised it.
                let fields = proto::error_fields(proto::body(&raw));
                sg.notice(
                    "error",
                    format!(
                        "upstream refused startup: {}",
                        proto::error_field(&fields, b'M').unwrap_or("")
                    ),
                );
                out.extend_from_slice(&raw);
                let _ = stream.write_all(&out).await;
                let _ = stream.shutdown().await;
                sg.close("upstream refused startup");
                return Err(Refusal::Closed);
            }
            Err(e) => {
                sg.notice("error", format!("upstream connection failed: {e}"));
                let _ = stream.write_all(&out).await;
                Self::fatal(
                    &mut stream,
                    "08006",
                    &format!("gatehouse: could not connect to target \"{target_name}\""),
                )
                .await;
                sg.close("upstream unavailable");
                return Err(Refusal::Closed);
            }
        };
        for (k, v) in &up.params {
            proto::parameter_status(&mut out, k, v);
        }
        for n in &up.startup_notices {
            out.extend_from_slice(n);
        }
        let cancel = Arc::new(CancelSignal::default());
        let key = self.register_cancel(&target, up.pid, up.secret, cancel.clone());
        proto::backend_key_data(&mut out, up.pid, key);
        proto::ready_for_query(&mut out, b'I');
        if stream.write_all(&out).await.is_err() {
            self.unregister_cancel(up.pid, key);
            sg.close("client disconnected during startup");
            return Err(Refusal::Closed);
        }

        // ---- relay ----
        let pid = up.pid;
        let RelayEnd { upstream, reason } = relay::run(
            stream,
            buf,
            up,
            sg.clone(),
            self.cache.clone(),
            target.clone(),
            cancel,
        )
        .await;
        self.unregister_cancel(pid, key);
        if let Some(up) = upstream {
            target.release(up);
        }
        sg.close(&reason);
        Ok(())
    }

    async fn authenticate(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        user: &str,
        secure_channel: bool,
    ) -> Result<gatehouse_identity::Authenticated, (String, Option<String>)> {
        match self.cfg.identities.lookup(user) {
            Some(Credential::Scram { verifier, principal }) => {
                self.scram(stream, buf, verifier, true)
                    .await
                    .map_err(|e| (e, None))?;
                Ok(gatehouse_identity::Authenticated {
                    principal: *principal,
                    auth: AuthInfo {
                        method: "scram-sha-256".into(),
                        token_age_secs: 0,
                        mfa: false,
                        expires_at: None,
                        issuer: None,
                    },
                })
            }
            Some(Credential::Bearer) => {
                if !secure_channel {
                    let why = "a token is accepted only over TLS";
                    return Err((why.into(), Some(why.into())));
                }
                let mut out = BytesMut::new();
                proto::auth_request(&mut out, 3, &[]);
                stream.write_all(&out).await.map_err(|e| (e.to_string(), None))?;
                let (tag, msg) = read_auth(stream, buf).await.map_err(|e| (e, None))?;
                if tag != b'p' {
                    return Err(("expected a password message".into(), None));
                }
                let mut b = proto::body(&msg);
                let secret =
                    proto::read_cstr(&mut b).ok_or(("malformed password message".to_string(), None))?;
                self.cfg
                    .identities
                    .verify_bearer(user, &secret)
                    .await
                    .map_err(|e| {
                        // The record keeps the details; the client learns what is about its
                        // own token, and only that the IdP could not be reached otherwise.
                        let told = match &e {
                            AuthError::Unavailable(_) => {
                                "identity provider unavailable; try again later".to_string()
                            }
                            other => other.to_string(),
                        };
                        (e.to_string(), Some(told))
                    })
            }
            None => {
                // Same exchange as for a known user, so user names cannot be probed.
                let mock = ScramVerifier::mock(user, &self.mock_secret);
                self.scram(stream, buf, mock, false)
                    .await
                    .map_err(|e| (e, None))?;
                Err(("unknown identity".into(), None))
            }
        }
    }

    async fn scram(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        verifier: ScramVerifier,
        real: bool,
    ) -> Result<(), String> {
        let mut out = BytesMut::new();
        let mut mechs = MECHANISM.as_bytes().to_vec();
        mechs.extend_from_slice(&[0, 0]);
        proto::auth_request(&mut out, 10, &mechs);
        stream.write_all(&out).await.map_err(|e| e.to_string())?;
        let (tag, msg) = read_auth(stream, buf).await?;
        if tag != b'p' {
            return Err("expected SASLInitialResponse".into());
        }
        let mut b = proto::body(&msg);
        let mech = proto::read_cstr(&mut b).ok_or("malformed SASLInitialResponse")?;
        if mech != MECHANISM {
            return Err(format!("unsupported SASL mechanism `{mech}`"));
        }
        let len = b
            .get(..4)
            .map(|l| i32::from_be_bytes([l[0], l[1], l[2], l[3]]))
            .ok_or("malformed SASLInitialResponse")?;
        let data = b.get(4..).unwrap_or(&[]);
        if len < 0 || data.len() != len as usize {
            return Err("malformed SASLInitialResponse".into());
        }
        let mut server = ScramServer::new(verifier, real);
        let first = server
            .client_first(&String::from_utf8_lossy(data))
            .map_err(|e| e.to_string())?;
        out.clear();
        proto::auth_request(&mut out, 11, first.as_bytes());
        stream.write_all(&out).await.map_err(|e| e.to_string())?;
        let (tag, msg) = read_auth(stream, buf).await?;
        if tag != b'p' {
            return Err("expected SASLResponse".into());
        }
        let fin = server
            .client_final(&String::from_utf8_lossy(proto::body(&msg)))
            .map_err(|e| format!("scram: {e}"))?;
        out.clear();
        proto::auth_request(&mut out, 12, fin.as_bytes());
        stream.write_all(&out).await.map_err(|e| e.to_string())?;
        Ok(())
    }

    fn register_cancel(
        &self,
        target: &Arc<PgTarget>,
        pid: i32,
        secret: i32,
        signal: Arc<CancelSignal>,
    ) -> i32 {
        let mut map = match self.cancels.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        loop {
            let key = rand::rng().next_u32() as i32;
            if let std::collections::hash_map::Entry::Vacant(e) = map.entry((pid, key)) {
                e.insert(CancelEntry {
                    target: target.clone(),
                    pid,
                    secret,
                    signal,
                });
                return key;
            }
        }
    }

    fn unregister_cancel(&self, pid: i32, key: i32) {
        let mut map = match self.cancels.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.remove(&(pid, key));
    }

    /// Forward a cancel for a live (pid, key) pair; anything else is dropped silently.
    async fn cancel(&self, pid: i32, key: i32) {
        let entry = {
            let map = match self.cancels.lock() {
                Ok(m) => m,
                Err(p) => p.into_inner(),
            };
            map.get(&(pid, key))
                .map(|e| (e.target.clone(), e.pid, e.secret, e.signal.clone()))
        };
        let Some((target, pid, secret, signal)) = entry else {
            return;
        };
        if signal.fire() {
            return;
        }
        if let Err(e) = target.cancel(pid, secret).await {
            tracing::warn!(target = %target.name, "forwarding cancel request failed: {e}");
        }
    }
}

async fn read_auth(stream: &mut Stream, buf: &mut BytesMut) -> Result<(u8, bytes::Bytes), String> {
    match tokio::time::timeout(
        STARTUP_TIMEOUT,
        proto::read_message(stream, buf, proto::MAX_STARTUP_LEN),
    )
    .await
    {
        Ok(Ok(m)) => Ok(m),
        Ok(Err(ProtoError::Eof)) => Err("client closed the connection during authentication".into()),
        Ok(Err(e)) => Err(format!("authentication message: {e}")),
        Err(_) => Err("authentication timeout".into()),
    }
}

fn new_session_id() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}
