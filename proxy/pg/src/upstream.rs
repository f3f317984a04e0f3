//! The back end: connecting and authenticating to an upstream PostgreSQL with the credential
//! Gatehouse holds, and a session pool of authenticated connections.
//!
//! Pooling rule: a connection is only reused by a client whose startup parameters are exactly
//! those the connection was opened with, because PostgreSQL makes startup parameters the
//! session defaults that `RESET ALL` returns to. After `DISCARD ALL` such a connection is in the
//! state a fresh one would be in, and the client is sent the current ParameterStatus values.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use gatehouse_core::config::PgTargetConfig;
use gatehouse_identity::scram::ScramClient;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::proto::{self, ProtoError};
use crate::stream::Stream;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("connect timed out")]
    Timeout,
    #[error("tls: {0}")]
    Tls(String),
    /// The server refused the startup; the raw ErrorResponse goes to the client as is.
    #[error("server refused the connection")]
    Startup(Bytes),
    #[error("authentication to the upstream failed: {0}")]
    Auth(String),
    #[error("protocol: {0}")]
    Protocol(#[from] ProtoError),
}

/// Identifies interchangeable pooled connections.
pub type PoolKey = Vec<(String, String)>;

/// An authenticated upstream connection.
pub struct Upstream {
    pub stream: Stream,
    /// Current value of every parameter the server reported (kept live while relaying).
    pub params: BTreeMap<String, String>,
    pub pid: i32,
    pub secret: i32,
    /// Notices the server sent during startup (forwarded to the first client only).
    pub startup_notices: Vec<Bytes>,
    pub key: PoolKey,
    pub reused: bool,
}

/// One configured PostgreSQL target with its credential, TLS settings and pool.
pub struct PgTarget {
    pub name: String,
    pub cfg: PgTargetConfig,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    password: Option<String>,
    pool: Mutex<HashMap<PoolKey, Vec<(Upstream, Instant)>>>,
    /// Names of the relations result columns come from (for column rules).
    pub(crate) catalog: crate::catalog::Catalog,
}

impl PgTarget {
    pub fn new(name: &str, cfg: &PgTargetConfig) -> Result<PgTarget, String> {
        let tls = crate::tls::client_config(cfg)?;
        let password = cfg
            .password
            .as_ref()
            .map(|p| p.resolve())
            .transpose()
            .map_err(|e| format!("target `{name}`: {e}"))?;
        Ok(PgTarget {
            name: name.to_string(),
            cfg: cfg.clone(),
            tls,
            password,
            pool: Mutex::new(HashMap::new()),
            catalog: crate::catalog::Catalog::default(),
        })
    }

    /// TCP (+TLS) to the upstream, without the startup packet.
    pub async fn open_stream(&self) -> Result<Stream, UpstreamError> {
        let timeout = Duration::from_millis(self.cfg.connect_timeout_ms);
        let addr = (self.cfg.host.as_str(), self.cfg.port);
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| UpstreamError::Timeout)?
            .map_err(UpstreamError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let Some((cfg, name)) = &self.tls else {
            return Ok(Stream::Tcp(tcp));
        };
        let mut tcp = tcp;
        let mut req = BytesMut::new();
        proto::ssl_request(&mut req);
        tcp.write_all(&req).await.map_err(UpstreamError::Connect)?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer)
            .await
            .map_err(UpstreamError::Connect)?;
        if answer[0] != b'S' {
            return Err(UpstreamError::Tls("the server does not accept TLS".into()));
        }
        let tls = tokio::time::timeout(
            timeout,
            tokio_rustls::TlsConnector::from(cfg.clone()).connect(name.clone(), tcp),
        )
        .await
        .map_err(|_| UpstreamError::Timeout)?
        .map_err(|e| UpstreamError::Tls(e.to_string()))?;
        Ok(Stream::ClientTls(Box::new(tls)))
    }

    /// A connection for a client with these startup parameters: pooled if one is available
    /// and alive, otherwise a new one.
    pub async fn acquire(&self, client_params: &[(String, String)]) -> Result<Upstream, UpstreamError> {
        let mut key: PoolKey = client_params.to_vec();
        key.sort();
        while let Some(mut up) = self.take_idle(&key) {
            if ping(&mut up).await.is_ok() {
                up.reused = true;
                up.startup_notices.clear();
                return Ok(up);
            }
        }
        let mut attempts = 0;
        loop {
            match self.connect(client_params, key.clone()).await {
                // Our own idle connections may be what fills the server: give their slots
                // back and try again, rather than refuse a client for connections nobody uses.
                Err(UpstreamError::Startup(msg)) if attempts < 20 && too_many_connections(&msg) => {
                    if attempts == 0 && self.close_idle() == 0 {
                        return Err(UpstreamError::Startup(msg));
                    }
                    attempts += 1;
                    // Backends exit asynchronously after their socket closes.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    /// Close every idle pooled connection; returns how many.
    fn close_idle(&self) -> usize {
        let Ok(mut pool) = self.pool.lock() else {
            return 0;
        };
        let n = pool.values().map(Vec::len).sum();
        pool.clear();
        n
    }

    fn take_idle(&self, key: &PoolKey) -> Option<Upstream> {
        let idle = Duration::from_secs(self.cfg.pool_idle_timeout_secs);
        let mut pool = self.pool.lock().ok()?;
        let list = pool.get_mut(key)?;
        while let Some((up, since)) = list.pop() {
            if since.elapsed() < idle {
                return Some(up);
            }
        }
        None
    }

    /// Reset a connection a client left idle and keep it for reuse. Runs in the background.
    pub fn release(self: &Arc<Self>, mut up: Upstream) {
        if self.cfg.pool_max_idle == 0 {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            if reset(&mut up).await.is_err() {
                return;
            }
            let idle = Duration::from_secs(this.cfg.pool_idle_timeout_secs);
            if let Ok(mut pool) = this.pool.lock() {
                pool.retain(|_, l| {
                    l.retain(|(_, since)| since.elapsed() < idle);
                    !l.is_empty()
                });
                // The cap is per target: evict the least recently used idle connection.
                let total: usize = pool.values().map(Vec::len).sum();
                if total >= this.cfg.pool_max_idle {
                    let oldest = pool
                        .iter()
                        .filter_map(|(k, l)| l.first().map(|(_, t)| (k.clone(), *t)))
                        .min_by_key(|(_, t)| *t)
                        .map(|(k, _)| k);
                    if let Some(k) = oldest
                        && let Some(l) = pool.get_mut(&k)
                    {
                        if !l.is_empty() {
                            l.remove(0);
                        }
                        if l.is_empty() {
                            pool.remove(&k);
                        }
                    }
                }
                pool.entry(up.key.clone()).or_default().push((up, Instant::now()));
            }
        });
    }

    /// Number of idle pooled connections (for tests and metrics).
    pub fn idle_count(&self) -> usize {
        self.pool
            .lock()
            .map(|p| p.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    async fn connect(
        &self,
        client_params: &[(String, String)],
        key: PoolKey,
    ) -> Result<Upstream, UpstreamError> {
        let mut stream = self.open_stream().await?;
        let mut params = vec![
            ("user".to_string(), self.cfg.user.clone()),
            ("database".to_string(), self.cfg.database.clone()),
        ];
        params.extend(client_params.iter().cloned());
        let mut out = BytesMut::new();
        proto::startup(&mut out, &params);
        stream.write_all(&out).await.map_err(UpstreamError::Connect)?;
        let mut buf = BytesMut::with_capacity(1024);
        let mut scram: Option<ScramClient> = None;
        // Authentication.
        loop {
            let (tag, msg) = proto::read_message(&mut stream, &mut buf, proto::MAX_MESSAGE_LEN).await?;
            let body = proto::body(&msg);
            match tag {
                b'E' => return Err(UpstreamError::Startup(msg)),
                b'v' | b'N' => continue,
                b'R' => {}
                _ => return Err(ProtoError::Malformed("authentication").into()),
            }
            let code = body
                .get(..4)
                .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .unwrap_or(-1);
            let data = body.get(4..).unwrap_or(&[]);
            let mut reply = BytesMut::new();
            match code {
                0 => break,
                3 => {
                    let pw = self.password()?;
                    let mut d = pw.as_bytes().to_vec();
                    d.push(0);
                    proto::password(&mut reply, &d);
                }
                5 => {
                    let pw = self.password()?;
                    let salt = data.get(..4).ok_or(ProtoError::Malformed("md5 salt"))?;
                    let inner =
                        hex::encode(md5::Md5::digest_bytes(&[pw.as_bytes(), self.cfg.user.as_bytes()]));
                    let outer = hex::encode(md5::Md5::digest_bytes(&[inner.as_bytes(), salt]));
                    let mut d = format!("md5{outer}").into_bytes();
                    d.push(0);
                    proto::password(&mut reply, &d);
                }
                10 => {
                    let mut b = data;
                    let mut offered = Vec::new();
                    while let Some(m) = proto::read_cstr(&mut b) {
                        if m.is_empty() {
                            break;
                        }
                        offered.push(m);
                    }
                    if !offered.iter().any(|m| m == gatehouse_identity::scram::MECHANISM) {
                        return Err(UpstreamError::Auth(format!(
                            "unsupported SASL mechanisms {offered:?}"
                        )));
                    }
                    let c = ScramClient::new(self.password()?);
                    proto::sasl_initial(
                        &mut reply,
                        gatehouse_identity::scram::MECHANISM,
                        c.client_first().as_bytes(),
                    );
                    scram = Some(c);
                }
                11 => {
                    let c = scram.as_mut().ok_or(ProtoError::Malformed("SASL"))?;
                    let fin = c
                        .server_first(&String::from_utf8_lossy(data))
                        .map_err(|e| UpstreamError::Auth(e.to_string()))?;
                    proto::password(&mut reply, fin.as_bytes());
                }
                12 => {
                    let c = scram.as_ref().ok_or(ProtoError::Malformed("SASL"))?;
                    c.server_final(&String::from_utf8_lossy(data))
                        .map_err(|e| UpstreamError::Auth(e.to_string()))?;
                    continue;
                }
                other => {
                    return Err(UpstreamError::Auth(format!(
                        "unsupported authentication request {other}"
                    )));
                }
            }
            stream.write_all(&reply).await.map_err(UpstreamError::Connect)?;
        }
        // Parameters, key data, notices until ReadyForQuery.
        let mut up = Upstream {
            stream,
            params: BTreeMap::new(),
            pid: 0,
            secret: 0,
            startup_notices: Vec::new(),
            key,
            reused: false,
        };
        loop {
            let (tag, msg) = proto::read_message(&mut up.stream, &mut buf, proto::MAX_MESSAGE_LEN).await?;
            let body = proto::body(&msg);
            match tag {
                b'S' => track_param(&mut up.params, body),
                b'K' => {
                    let b = body.get(..8).ok_or(ProtoError::Malformed("BackendKeyData"))?;
                    up.pid = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                    up.secret = i32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                }
                b'N' => up.startup_notices.push(msg),
                b'E' => return Err(UpstreamError::Startup(msg)),
                b'Z' => break,
                _ => return Err(ProtoError::Malformed("startup response").into()),
            }
        }
        if !buf.is_empty() {
            return Err(ProtoError::Malformed("data after ReadyForQuery").into());
        }
        Ok(up)
    }

    fn password(&self) -> Result<&str, UpstreamError> {
        self.password.as_deref().ok_or_else(|| {
            UpstreamError::Auth("the server asked for a password but the target has none".into())
        })
    }

    /// Forward a cancel request for `pid` with the real upstream key.
    pub async fn cancel(&self, pid: i32, secret: i32) -> Result<(), UpstreamError> {
        let mut s = self.open_stream().await?;
        let mut out = BytesMut::new();
        proto::cancel_request(&mut out, pid, secret);
        s.write_all(&out).await.map_err(UpstreamError::Connect)?;
        let _ = s.flush().await;
        // The server closes the connection once it has read the request.
        let mut sink = [0u8; 16];
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut sink)).await;
        Ok(())
    }
}

/// Apply a ParameterStatus body to the live map.
pub fn track_param(params: &mut BTreeMap<String, String>, body: &[u8]) {
    let mut b = body;
    if let (Some(k), Some(v)) = (proto::read_cstr(&mut b), proto::read_cstr(&mut b)) {
        params.insert(k, v);
    }
}

const RESET_TIMEOUT: Duration = Duration::from_secs(5);

/// Send `sql` as a simple query and read to ReadyForQuery; fails on any error or on a
/// transaction left open.
async fn roundtrip(up: &mut Upstream, msg: &[u8]) -> Result<(), UpstreamError> {
    roundtrip_value(up, msg).await.map(|_| ())
}

/// Send `msg`, wait for ReadyForQuery (idle); returns the first cell of the first DataRow.
async fn roundtrip_value(up: &mut Upstream, msg: &[u8]) -> Result<Option<Vec<u8>>, UpstreamError> {
    up.stream.write_all(msg).await.map_err(UpstreamError::Connect)?;
    let mut buf = BytesMut::with_capacity(512);
    let mut value = None;
    let fut = async {
        loop {
            let (tag, m) = proto::read_message(&mut up.stream, &mut buf, proto::MAX_MESSAGE_LEN).await?;
            match tag {
                b'S' => track_param(&mut up.params, proto::body(&m)),
                b'E' => return Err(UpstreamError::Startup(m)),
                b'D' if value.is_none() => {
                    value = proto::parse_data_row(proto::body(&m))
                        .ok()
                        .and_then(|cells| cells.first().copied().flatten().map(<[u8]>::to_vec));
                }
                b'Z' => {
                    return if proto::body(&m) == b"I" && buf.is_empty() {
                        Ok(value)
                    } else {
                        Err(ProtoError::Malformed("connection not idle").into())
                    };
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(RESET_TIMEOUT, fut)
        .await
        .map_err(|_| UpstreamError::Timeout)?
}

/// Return a connection to the state of a fresh one, or fail if that is impossible.
///
/// `DISCARD ALL` resets what a session can change, except one thing a client can observe: a
/// backend that has created its temporary schema keeps it, so e.g. `PREPARE TRANSACTION`
/// after `current_schema()` behaves differently than in a fresh session (found by running
/// PostgreSQL's own regression suite through Gatehouse). Such connections are not reused.
async fn reset(up: &mut Upstream) -> Result<(), UpstreamError> {
    let mut m = BytesMut::new();
    proto::query(&mut m, "SELECT pg_catalog.pg_my_temp_schema() <> 0");
    if roundtrip_value(up, &m).await?.as_deref() != Some(b"f") {
        return Err(ProtoError::Malformed("session has a temporary schema").into());
    }
    m.clear();
    proto::query(&mut m, "DISCARD ALL");
    roundtrip(up, &m).await
}

/// Whether a startup ErrorResponse is PostgreSQL's "too many clients" (SQLSTATE 53300).
fn too_many_connections(msg: &[u8]) -> bool {
    proto::error_field(&proto::error_fields(proto::body(msg)), b'C') == Some("53300")
}

/// Check a pooled connection is alive (one round trip).
async fn ping(up: &mut Upstream) -> Result<(), UpstreamError> {
    let mut m = BytesMut::new();
    proto::sync(&mut m);
    roundtrip(up, &m).await
}

/// Tiny md5 helper over the `md-5` crate.
mod md5 {
    use md5_crate::{Digest, Md5 as Inner};
    pub struct Md5;
    impl Md5 {
        pub fn digest_bytes(parts: &[&[u8]]) -> [u8; 16] {
            let mut h = Inner::new();
            for p in parts {
                h.update(p);
            }
            h.finalize().into()
        }
    }
}
