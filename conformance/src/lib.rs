//! Harness for end-to-end suites: a throwaway PostgreSQL (SCRAM, TLS), the real `gatehouse`
//! binary in front of it on `127.0.0.1:0`, and helpers to drive real clients through it.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gatehouse::demo::{self, DemoSetup};

/// The repository's `policies/` directory.
pub fn repo_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// A copy of the repository's policies plus `extra` as file `name`, in directory `policies`
/// (created).
pub fn repo_policies_with(policies: &Path, name: &str, extra: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(policies)?;
    for entry in std::fs::read_dir(repo_policies())? {
        let p = entry?.path();
        if let (true, Some(file)) = (p.is_file(), p.file_name()) {
            std::fs::copy(&p, policies.join(file))?;
        }
    }
    std::fs::write(policies.join(name), extra)?;
    Ok(policies.to_path_buf())
}

/// The built plugins: `$GATEHOUSE_PLUGIN_DIR`, else `~/.cache/gatehouse/plugins` (where
/// `deploy/build-plugins.sh` puts them; `deploy/test.sh` runs it first).
pub fn plugin_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("GATEHOUSE_PLUGIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            Path::new(&std::env::var_os("HOME").context("HOME is not set")?).join(".cache/gatehouse/plugins")
        }
    };
    for p in ["pii-mask", "sql-guard", "test-hostile"] {
        if !dir.join(format!("{p}.wasm")).is_file() {
            bail!(
                "{}/{p}.wasm is missing: run ./deploy/build-plugins.sh",
                dir.display()
            );
        }
    }
    Ok(dir)
}

/// The `gatehouse` binary built alongside the tests (`$GATEHOUSE_BIN` overrides).
pub fn gatehouse_bin() -> PathBuf {
    if let Ok(p) = std::env::var("GATEHOUSE_BIN") {
        return PathBuf::from(p);
    }
    let mut p = std::env::current_exe().unwrap_or_default();
    p.pop();
    if p.ends_with("deps") {
        p.pop();
    }
    p.join("gatehouse")
}

pub struct Harness {
    pub setup: DemoSetup,
    pub addr: SocketAddr,
    /// The admin API (the demo config always has one).
    pub admin: Option<SocketAddr>,
    /// The metrics endpoint, when the config has `[metrics]`.
    pub metrics: Option<SocketAddr>,
    gateway: Child,
    pub dir: tempfile::TempDir,
}

/// A hook run between setup and gateway start.
pub type BeforeStart = dyn Fn(&DemoSetup) -> Result<()>;

pub struct Options<'a> {
    pub policies: PathBuf,
    pub extra_config: &'a str,
    pub durability: &'a str,
    /// Runs after the cluster and config exist and before the gateway starts (e.g. to put the
    /// log directory on a small filesystem).
    pub before_start: Option<&'a BeforeStart>,
    /// Plugin directory: target `app` gets `sql-guard` and `pii-mask` (see `demo::setup`).
    pub plugins: Option<PathBuf>,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            policies: repo_policies(),
            extra_config: "",
            durability: "sync",
            before_start: None,
            plugins: None,
        }
    }
}

impl Harness {
    pub fn start() -> Result<Harness> {
        Self::start_with(Options::default())
    }

    pub fn start_with(o: Options<'_>) -> Result<Harness> {
        let dir = tempfile::Builder::new().prefix("gatehouse-test-").tempdir()?;
        let setup = demo::setup(&demo::SetupOptions {
            dir: dir.path(),
            policies: &o.policies,
            listen: "127.0.0.1:0",
            extra: o.extra_config,
            durability: o.durability,
            plugins: o.plugins.as_deref(),
        })?;
        if let Some(f) = o.before_start {
            f(&setup)?;
        }
        let (gateway, addrs) = spawn_gateway(&setup.config_path)?;
        Ok(Harness {
            setup,
            addr: addrs.pg,
            admin: addrs.admin,
            metrics: addrs.metrics,
            gateway,
            dir,
        })
    }

    pub fn key(&self, user: &str) -> &str {
        match user {
            "ai-agent" => &self.setup.agent_key,
            "alice" => &self.setup.human_key,
            "dana" => &self.setup.approver_key,
            _ => &self.setup.user_key,
        }
    }

    /// Run `gatehouse approvals ARGS` against the admin API as `user` (key in GATEHOUSE_KEY).
    pub fn approvals(&self, user: &str, args: &[&str]) -> Result<Output> {
        let admin = self.admin.context("the gateway reported no admin API")?;
        Ok(Command::new(gatehouse_bin())
            .arg("approvals")
            .args(args)
            .args(["--url", &format!("http://{admin}"), "--user", user])
            .env("GATEHOUSE_KEY", self.key(user))
            .stdin(Stdio::null())
            .output()?)
    }

    /// Run `gatehouse CMD ARGS` (`approvals`, `access`) as `user` against the admin API at
    /// `admin` (key in GATEHOUSE_KEY).
    pub fn cli_at(&self, admin: SocketAddr, cmd: &str, user: &str, args: &[&str]) -> Result<Output> {
        Ok(Command::new(gatehouse_bin())
            .arg(cmd)
            .args(args)
            .args(["--url", &format!("http://{admin}"), "--user", user])
            .env("GATEHOUSE_KEY", self.key(user))
            .stdin(Stdio::null())
            .output()?)
    }

    /// `psql -c SQL` as ai-agent over TLS through the gateway listening at `pg`, running in
    /// the background (for statements held for approval).
    pub fn agent_psql_bg(&self, pg: SocketAddr, sql: &str) -> Result<Child> {
        let conn = format!(
            "host=127.0.0.1 port={} user=ai-agent dbname=app sslmode=require",
            pg.port()
        );
        Ok(Command::new(self.setup.cluster.bindir.join("psql"))
            .args(["-X", "-v", "ON_ERROR_STOP=1", &conn, "-c", sql])
            .env("PGPASSWORD", self.key("ai-agent"))
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?)
    }

    /// libpq connection string through Gatehouse.
    pub fn dsn(&self, user: &str, target: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} dbname={target} password={} sslmode=disable",
            self.addr.port(),
            self.key(user)
        )
    }

    /// tokio-postgres client through Gatehouse (plaintext on loopback).
    pub async fn connect(&self, user: &str, target: &str) -> Result<tokio_postgres::Client> {
        connect_dsn(&self.dsn(user, target)).await
    }

    /// Run `psql` through Gatehouse with TLS required.
    pub fn psql(&self, user: &str, target: &str, args: &[&str]) -> Result<Output> {
        let conn = format!(
            "host=127.0.0.1 port={} user={user} dbname={target} sslmode=require",
            self.addr.port()
        );
        Ok(Command::new(self.setup.cluster.bindir.join("psql"))
            .arg("-X")
            .arg(conn)
            .args(args)
            .env("PGPASSWORD", self.key(user))
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()?)
    }

    /// Run a `gatehouse` subcommand (e.g. `audit sessions --log …`).
    pub fn gatehouse(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new(gatehouse_bin()).args(args).output()?)
    }

    /// Recorded sessions as JSON, newest first.
    pub fn audit_sessions(&self) -> Result<Vec<serde_json::Value>> {
        let log = self.setup.log_dir.display().to_string();
        let out = self.gatehouse(&["audit", "sessions", "--log", &log])?;
        if !out.status.success() {
            bail!("audit sessions: {}", String::from_utf8_lossy(&out.stderr));
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).context("session line"))
            .collect()
    }

    /// `gatehouse audit show SESSION`.
    pub fn audit_show(&self, session: &str) -> Result<String> {
        let log = self.setup.log_dir.display().to_string();
        let out = self.gatehouse(&["audit", "show", session, "--log", &log])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Is the gateway process still running?
    pub fn gateway_alive(&mut self) -> bool {
        matches!(self.gateway.try_wait(), Ok(None))
    }

    /// Kill the gateway with SIGKILL, as a crash would, and wait for it.
    pub fn kill_gateway(&mut self) -> Result<()> {
        self.gateway.kill()?;
        self.gateway.wait()?;
        Ok(())
    }

    /// Start the gateway again on the same config and log (it listens on new ports).
    pub fn restart_gateway(&mut self) -> Result<()> {
        let (gateway, addrs) = spawn_gateway(&self.setup.config_path)?;
        self.gateway = gateway;
        self.addr = addrs.pg;
        self.admin = addrs.admin;
        self.metrics = addrs.metrics;
        Ok(())
    }

    /// `gatehouse audit verify --log … --key …` with the deployment's public key, plus `args`.
    pub fn audit_verify(&self, args: &[&str]) -> Result<Output> {
        let log = self.setup.log_dir.display().to_string();
        let key = self.setup.audit_public_key.display().to_string();
        let mut all = vec!["audit", "verify", "--log", &log, "--key", &key];
        all.extend_from_slice(args);
        self.gatehouse(&all)
    }

    /// Stop the gateway gracefully (SIGTERM) and wait for it.
    pub fn stop_gateway(&mut self) -> Result<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.gateway.id().to_string())
            .status();
        for _ in 0..100 {
            if let Some(s) = self.gateway.try_wait()? {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.gateway.kill()?;
        Ok(self.gateway.wait()?)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if matches!(self.gateway.try_wait(), Ok(None)) {
            let _ = self.stop_gateway();
        }
    }
}

pub async fn connect_dsn(dsn: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Where a started gateway serves.
#[derive(Debug, Clone, Copy)]
pub struct GatewayAddrs {
    /// The first PostgreSQL listener.
    pub pg: SocketAddr,
    pub metrics: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// Start `gatehouse serve` and wait until it reported its addresses.
pub fn spawn_gateway(config: &Path) -> Result<(Child, GatewayAddrs)> {
    let filter = std::env::var("GATEHOUSE_LOG").unwrap_or_else(|_| "warn".into());
    spawn_gateway_bin(&gatehouse_bin(), config, &filter)
}

/// Start `BIN serve --config CONFIG` with `GATEHOUSE_LOG=log_filter` and read its stdout up to
/// the `ready` line, collecting the `listening`, `metrics` and `admin` addresses; the child is
/// killed if it never gets there.
pub fn spawn_gateway_bin(bin: &Path, config: &Path, log_filter: &str) -> Result<(Child, GatewayAddrs)> {
    let mut child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(config)
        .env("GATEHOUSE_LOG", log_filter)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("gateway stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // Keep draining after the receiver is gone so the gateway never blocks on a pipe.
            let _ = tx.send(line);
        }
    });
    let parsed = read_addrs(&rx);
    match parsed {
        Ok(addrs) => Ok((child, addrs)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

fn read_addrs(rx: &std::sync::mpsc::Receiver<String>) -> Result<GatewayAddrs> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (mut pg, mut metrics, mut admin) = (None, None, None);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .map_err(|_| anyhow::anyhow!("gateway did not report ready (listening on {pg:?})"))?;
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("bad gateway line `{line}`"))?;
        let addr = || -> Result<SocketAddr> { Ok(v["addr"].as_str().context("no addr")?.parse()?) };
        match v["event"].as_str() {
            Some("listening") if pg.is_none() => pg = Some(addr()?),
            Some("metrics") => metrics = Some(addr()?),
            Some("admin") => admin = Some(addr()?),
            Some("ready") => break,
            _ => {}
        }
    }
    Ok(GatewayAddrs {
        pg: pg.context("gateway reported no listener")?,
        metrics,
        admin,
    })
}

/// SQLSTATE of a tokio-postgres error, if the server sent one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_string())
}

/// Message of a tokio-postgres error.
pub fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

/// A `[[target]]` on the demo database (`app`, env `prod`) using the given plugins (e.g.
/// `"\"pii-mask\""`), for [`Options::extra_config`]: the placeholders are filled in by
/// `demo::setup`.
pub fn plugin_target(name: &str, plugins: &str) -> String {
    format!(
        r#"
[[target]]
name = "{name}"
kind = "postgres"
tags = {{ env = "prod" }}
plugins = [{plugins}]
[target.postgres]
host = "127.0.0.1"
port = @PORT@
database = "app"
user = "gatehouse_app"
password = {{ file = "@PASSWORD_FILE@" }}
tls = "verify-full"
ca_file = "@CA_FILE@"
"#
    )
}

/// `GET path` over plain HTTP/1.1 (the gateway's metrics endpoint): (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    http_request(addr, "GET", path, &[], "")
}

/// One HTTP/1.1 request (`Connection: close`) with extra headers and a body: (status, body).
/// Understands `Content-Length` and chunked responses.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    c.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    c.read_to_end(&mut raw)?;
    let out = String::from_utf8_lossy(&raw).to_string();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let (head, rest) = out.split_once("\r\n\r\n").unwrap_or((out.as_str(), ""));
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked")
    });
    if !chunked {
        return Ok((status, rest.to_string()));
    }
    let mut body = String::new();
    let mut rest = rest;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).context("bad chunk size")?;
        if n == 0 || tail.len() < n {
            break;
        }
        body.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    Ok((status, body))
}

/// A real OpenID Provider: `conformance/oidc/op.mjs` (npm's `oidc-provider`, installed by
/// `deploy/setup.sh` under `$GATEHOUSE_NODE_DIR`, default `~/.cache/gatehouse/node`) run with
/// Node on `127.0.0.1:0`. Its clients and resources are described in the script.
pub struct OpenIdProvider {
    pub issuer: String,
    pub addr: SocketAddr,
    child: Child,
    script: PathBuf,
}

impl OpenIdProvider {
    pub fn start() -> Result<OpenIdProvider> {
        let dir = match std::env::var_os("GATEHOUSE_NODE_DIR") {
            Some(d) => PathBuf::from(d),
            None => {
                Path::new(&std::env::var_os("HOME").context("HOME is not set")?).join(".cache/gatehouse/node")
            }
        };
        if !dir.join("node_modules/oidc-provider").is_dir() {
            bail!(
                "{}/node_modules/oidc-provider is missing: run ./deploy/setup.sh",
                dir.display()
            );
        }
        // ES modules resolve packages from the script's own directory: put it beside them.
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let script = dir.join(format!("op-{}-{n}.mjs", std::process::id()));
        let tmp = dir.join(format!(".op-{}-{n}.mjs", std::process::id()));
        std::fs::write(&tmp, include_str!("../oidc/op.mjs"))?;
        std::fs::rename(&tmp, &script)?;
        let mut child = Command::new("node")
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting node (the OpenID Provider)")?;
        let stdout = child.stdout.take().context("node stdout")?;
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        // oidc-provider writes notices to stdout later on; keep reading so that they never
        // hit a closed pipe (EPIPE would end the provider).
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let issuer = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v["issuer"].as_str().map(str::to_string));
        let Some(issuer) = issuer else {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&script);
            bail!("the OpenID Provider did not start (printed `{}`)", line.trim());
        };
        let addr: SocketAddr = issuer.trim_start_matches("http://").parse()?;
        Ok(OpenIdProvider {
            issuer,
            addr,
            child,
            script,
        })
    }

    /// An access token for `client` (client credentials) for `resource` (default: the
    /// provider's default, `urn:gatehouse`).
    pub fn token(&self, client: &str, resource: Option<&str>) -> Result<String> {
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{client}:{client}-secret"));
        let mut form = "grant_type=client_credentials&scope=db".to_string();
        if let Some(r) = resource {
            form.push_str(&format!("&resource={}", r.replace(':', "%3A")));
        }
        let (status, body) = http_request(
            self.addr,
            "POST",
            "/token",
            &[
                ("Authorization", &format!("Basic {basic}")),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            &form,
        )?;
        let v: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("token response {status}: {body}"))?;
        v["access_token"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no access token ({status}): {body}"))
    }

    /// Replace the signing key (new kid; the old key is no longer published).
    pub fn rotate(&self) -> Result<()> {
        let (status, body) = http_request(self.addr, "POST", "/_rotate", &[], "")?;
        if status != 200 {
            bail!("rotate: {status} {body}");
        }
        Ok(())
    }

    /// Stop the provider (it becomes unreachable).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OpenIdProvider {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.script);
    }
}

/// The value of an unlabelled metric in exposition text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A real S3 API on `127.0.0.1:0`: moto's server (PyPI `moto[server]`, installed by
/// `deploy/setup.sh`), with `bucket` created. Stopped on drop.
pub struct S3Server {
    pub addr: SocketAddr,
    child: Child,
}

impl S3Server {
    pub fn start(bucket: &str) -> Result<S3Server> {
        const SCRIPT: &str = r#"
import logging, sys, urllib.request
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
s = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
s.start()
host, port = s.get_host_and_port()
urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/{sys.argv[1]}", method="PUT"))
print(port, flush=True)
sys.stdin.read()
"#;
        let mut child = Command::new("python3")
            .args(["-c", SCRIPT, bucket])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting moto (python3 -m pip install 'moto[server]')")?;
        let stdout = child.stdout.take().context("moto stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let port: u16 = match line.trim().parse() {
            Ok(p) => p,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("moto did not start (printed `{}`)", line.trim());
            }
        };
        Ok(S3Server {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
        })
    }
}

impl S3Server {
    /// Get (`body` `None`), put (`Some`) or, with `delete`, delete one object of `bucket`,
    /// signed with test credentials (moto refuses unsigned object requests) by boto3, which
    /// `moto[server]` installs. Returns what was read (empty for a put or delete).
    pub fn object(&self, bucket: &str, key: &str, body: Option<&[u8]>, delete: bool) -> Result<Vec<u8>> {
        const SCRIPT: &str = r#"
import sys, boto3
endpoint, bucket, key, op = sys.argv[1:5]
c = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id="test", aws_secret_access_key="test")
if op == "get":
    sys.stdout.buffer.write(c.get_object(Bucket=bucket, Key=key)["Body"].read())
elif op == "put":
    c.put_object(Bucket=bucket, Key=key, Body=sys.stdin.buffer.read())
else:
    c.delete_object(Bucket=bucket, Key=key)
"#;
        let op = match (body, delete) {
            (_, true) => "delete",
            (Some(_), false) => "put",
            (None, false) => "get",
        };
        let mut child = Command::new("python3")
            .args(["-c", SCRIPT, &format!("http://{}", self.addr), bucket, key, op])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("python3 with boto3")?;
        let mut stdin = child.stdin.take().context("boto3 stdin")?;
        if let Some(b) = body {
            stdin.write_all(b)?;
        }
        drop(stdin);
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("S3 {op} {bucket}/{key}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(out.stdout)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP forwarder on `127.0.0.1:0` to `target` that can be switched off, as a network outage
/// would: while off, open connections are cut and new ones are closed at once.
pub struct TcpSwitch {
    pub addr: SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl TcpSwitch {
    pub fn start(target: SocketAddr) -> Result<TcpSwitch> {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::<std::net::TcpStream>::new()));
        let (u, cs) = (up.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !u.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
                    client.try_clone(),
                    server.try_clone(),
                    client.try_clone(),
                    server.try_clone(),
                ) else {
                    continue;
                };
                if let Ok(mut g) = cs.lock() {
                    g.push(c3);
                    g.push(s3);
                }
                let pipe = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                };
                pipe(client, s2);
                pipe(server, c2);
            }
        });
        Ok(TcpSwitch { addr, up, conns })
    }

    /// Let connections through (`true`) or cut them all (`false`).
    pub fn set_up(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::SeqCst);
        if !up && let Ok(mut g) = self.conns.lock() {
            for c in g.drain(..) {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// Wait (at most a minute) for a background client to finish: (exit code, stdout, stderr).
pub fn wait_child(mut c: Child) -> Result<(i32, String, String)> {
    use std::io::Read as _;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = c.try_wait()? {
            let (mut out, mut err) = (String::new(), String::new());
            if let Some(mut o) = c.stdout.take() {
                o.read_to_string(&mut out)?;
            }
            if let Some(mut e) = c.stderr.take() {
                e.read_to_string(&mut err)?;
            }
            return Ok((status.code().unwrap_or(-1), out, err));
        }
        if std::time::Instant::now() >= deadline {
            let _ = c.kill();
            bail!("the client did not finish within a minute");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A policy admitting engineers to production only with a just-in-time grant (for
/// [`repo_policies_with`]).
pub const JIT_GRANT_POLICY: &str = r#"
// Engineers reach production only with a just-in-time grant.
@id("engineering-prod-needs-grant")
forbid (
  principal in Gatehouse::Group::"engineering",
  action == Gatehouse::Action::"connect",
  resource
)
when { resource.env == "prod" && !(context has grant) };
"#;

/// A finished command's stdout and stderr, for assertion messages.
pub fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A finished command's exit code (-1 when a signal ended it).
pub fn exit_code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}
