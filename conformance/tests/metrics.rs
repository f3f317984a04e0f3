//! The operator's Prometheus endpoint (`[metrics]`), end to end: the real gateway binary with
//! the built plugins, real PostgreSQL clients, and a plain TCP client scraping `/metrics`.
//!
//! The gateway prints `{"event":"metrics","addr":"…"}` on stdout after its `listening` lines;
//! `spawn_gateway` collects it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use gatehouse::demo::{self, DemoSetup};
use gatehouse_conformance::{connect_dsn, db_message, plugin_dir, repo_policies, spawn_gateway, sqlstate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const METRICS: &str = "\n[metrics]\nlisten = \"127.0.0.1:0\"\n";

/// A gateway with the demo plugins and a metrics endpoint.
struct Gw {
    setup: DemoSetup,
    pg: SocketAddr,
    metrics: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Gw {
    fn start(extra: &str) -> Gw {
        let dir = tempfile::Builder::new()
            .prefix("gatehouse-test-")
            .tempdir()
            .unwrap();
        let plugins = plugin_dir().unwrap();
        let setup = demo::setup(&demo::SetupOptions {
            dir: dir.path(),
            policies: &repo_policies(),
            listen: "127.0.0.1:0",
            extra: &format!("{METRICS}{extra}"),
            durability: "sync",
            plugins: Some(&plugins),
        })
        .unwrap();
        let (child, addrs) = spawn_gateway(&setup.config_path).unwrap();
        let metrics = addrs.metrics.expect("the gateway reported no metrics endpoint");
        Gw {
            setup,
            pg: addrs.pg,
            metrics,
            child,
            _dir: dir,
        }
    }

    async fn connect(&self, user: &str, target: &str) -> tokio_postgres::Client {
        let key = match user {
            "alice" => &self.setup.human_key,
            "ai-agent" => &self.setup.agent_key,
            _ => &self.setup.user_key,
        };
        connect_dsn(&format!(
            "host=127.0.0.1 port={} user={user} dbname={target} password={key} sslmode=disable",
            self.pg.port()
        ))
        .await
        .unwrap()
    }

    async fn scrape(&self) -> Scrape {
        let r = http(self.metrics, b"GET /metrics HTTP/1.1\r\nHost: gatehouse\r\n\r\n").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        Scrape::parse(&r.body)
    }

    /// SIGTERM and wait.
    fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..150 {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        panic!("gateway did not stop within 15 s of SIGTERM");
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            for _ in 0..100 {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Debug)]
struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Send raw bytes, read until the server closes, split the response.
async fn http(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(request).await.unwrap();
    read_response(&mut c).await
}

async fn read_response(c: &mut TcpStream) -> HttpResponse {
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), c.read_to_end(&mut raw))
        .await
        .expect("the endpoint did not close the connection")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
    let status = status_line[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let r = HttpResponse {
        status,
        headers,
        body: body.to_string(),
    };
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    r
}

/// Samples of a scrape, with the families' `# TYPE` lines.
struct Scrape {
    text: String,
    types: BTreeMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut types = BTreeMap::new();
        let mut helps = HashSet::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    types.insert(name.to_string(), kind.to_string()).is_none(),
                    "{name}: TYPE twice"
                );
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(helps.insert(name.to_string()), "{name}: HELP twice");
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in `{line}`"));
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), BTreeMap::new()),
                Some((name, rest)) => (name.to_string(), parse_labels(rest.strip_suffix('}').unwrap())),
            };
            assert!(types.contains_key(&name), "{name} sampled before its TYPE line");
            samples.push((name, labels, value));
        }
        assert_eq!(helps.len(), types.len(), "every family has HELP and TYPE");
        Scrape {
            text: text.to_string(),
            types,
            samples,
        }
    }

    /// The value of the one sample of `name` whose labels include `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<_> = self
            .samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}\n{}", self.text);
        found[0].2
    }

    fn labels(&self, name: &str, labels: &[(&str, &str)]) -> BTreeMap<String, String> {
        self.samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, l, _)| l.clone())
            .unwrap_or_else(|| panic!("no {name}{labels:?}\n{}", self.text))
    }
}

/// `a="x",b="y\"z"` → map, unescaping `\\`, `\"` and `\n`.
fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if name.is_empty() {
            return out;
        }
        assert_eq!(chars.next(), Some('"'), "label {name} in `{s}`");
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => panic!("dangling escape in `{s}`"),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => panic!("unterminated label value in `{s}`"),
            }
        }
        out.insert(name.trim_start_matches(',').to_string(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_endpoint_reports_the_gateway_and_speaks_just_enough_http() {
    let mut gw = Gw::start("");
    let c = gw.connect("alice", "app").await;
    let rows = c
        .query("SELECT id, email FROM customers WHERE id <= 3 ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);

    let m = gw.scrape().await;
    assert!(m.get("gatehouse_recorder_events_appended_total", &[]) > 0.0);
    assert!(m.get("gatehouse_recorder_batches_total", &[]) > 0.0);
    assert!(m.get("gatehouse_recorder_last_seq", &[]) > 0.0);
    assert_eq!(m.get("gatehouse_recorder_events_failed_total", &[]), 0.0);
    m.get("gatehouse_recorder_events_pending", &[]);
    // The search indexes trail the log by a batch or so; what they lag is read, not lost.
    assert!(m.get("gatehouse_recorder_index_lag_events", &[]) >= 0.0);
    // Results are written without waiting; their fsync follows within 100 ms.
    assert!(m.get("gatehouse_recorder_unsynced_events", &[]) >= 0.0);
    assert!(m.get("gatehouse_policy_generation", &[]) >= 1.0);
    assert_eq!(m.get("gatehouse_pg_active_sessions", &[("listener", "pg")]), 1.0);
    for t in ["app", "app_staging"] {
        m.get("gatehouse_pg_pool_idle_connections", &[("target", t)]);
    }
    for (name, kind) in [
        ("gatehouse_recorder_events_appended_total", "counter"),
        ("gatehouse_recorder_events_pending", "gauge"),
        ("gatehouse_plugin_faults_total", "counter"),
        ("gatehouse_plugin_quarantined", "gauge"),
    ] {
        assert_eq!(m.types.get(name).map(String::as_str), Some(kind), "{name}");
    }
    for plugin in ["pii-mask", "sql-guard"] {
        let p = [("plugin", plugin)];
        assert!(m.get("gatehouse_plugin_calls_total", &p) > 0.0, "{plugin}");
        assert!(m.get("gatehouse_plugin_call_seconds_total", &p) > 0.0, "{plugin}");
        assert!(
            m.get("gatehouse_plugin_instantiations_total", &p) > 0.0,
            "{plugin}"
        );
        assert_eq!(m.get("gatehouse_plugin_quarantined", &p), 0.0, "{plugin}");
        assert_eq!(m.get("gatehouse_plugin_quarantines_total", &p), 0.0, "{plugin}");
        assert_eq!(
            m.get("gatehouse_plugin_quarantine_skips_total", &p),
            0.0,
            "{plugin}"
        );
        assert_eq!(m.get("gatehouse_plugin_reloads_total", &p), 0.0, "{plugin}");
        assert_eq!(
            m.get("gatehouse_plugin_reload_failures_total", &p),
            0.0,
            "{plugin}"
        );
        assert_eq!(m.get("gatehouse_plugin_generation", &p), 1.0, "{plugin}");
        let hash = &m.labels("gatehouse_plugin_generation", &p)["hash"];
        assert!(
            hash.len() == 12 && hash.chars().all(|c| c.is_ascii_hexdigit()),
            "{plugin}: hash label {hash:?}"
        );
        for kind in ["trap", "timeout", "memory", "malformed", "plugin-error"] {
            assert_eq!(
                m.get(
                    "gatehouse_plugin_faults_total",
                    &[("plugin", plugin), ("kind", kind)]
                ),
                0.0,
                "{plugin} {kind}"
            );
        }
    }

    // The session ends: its upstream goes back to the pool.
    drop(c);
    let mut settled = false;
    for _ in 0..50 {
        let m = gw.scrape().await;
        if m.get("gatehouse_pg_active_sessions", &[("listener", "pg")]) == 0.0
            && m.get("gatehouse_pg_pool_idle_connections", &[("target", "app")]) >= 1.0
        {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(settled, "sessions and pool gauges never settled");

    // HEAD: the headers of a GET, no body.
    let head = http(gw.metrics, b"HEAD /metrics HTTP/1.1\r\nHost: g\r\n\r\n").await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "{head:?}");
    let len: usize = head.header("content-length").unwrap().parse().unwrap();
    assert!(len > 1000, "{head:?}");
    let get = http(gw.metrics, b"GET /metrics HTTP/1.0\r\n\r\n").await;
    assert_eq!(
        get.header("content-length"),
        Some(get.body.len().to_string().as_str())
    );

    let health = http(gw.metrics, b"GET /healthz HTTP/1.1\r\nHost: g\r\n\r\n").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));

    let missing = http(gw.metrics, b"GET /nope HTTP/1.1\r\nHost: g\r\n\r\n").await;
    assert_eq!(missing.status, 404);
    for req in [
        &b"POST /metrics HTTP/1.1\r\nHost: g\r\nContent-Length: 5\r\n\r\nhello"[..],
        &b"DELETE /healthz HTTP/1.1\r\nHost: g\r\n\r\n"[..],
    ] {
        let r = http(gw.metrics, req).await;
        assert_eq!(r.status, 405, "{r:?}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    }

    // Garbage gets a 400; a client that sends nothing is cut off after the read timeout
    // without holding up anyone else.
    let mut idle = TcpStream::connect(gw.metrics).await.unwrap();
    let started = Instant::now();
    for garbage in [
        &b"hello there\r\n\r\n"[..],
        &b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n"[..],
        &b"GET /metrics HTTP/9.9\r\n\r\n"[..],
    ] {
        let r = http(gw.metrics, garbage).await;
        assert_eq!(r.status, 400, "{garbage:?}: {r:?}");
    }
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    big.resize(20_000, b'a');
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(http(gw.metrics, &big).await.status, 431);
    gw.scrape().await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the idle client held others up"
    );
    let cut = read_response(&mut idle).await;
    assert_eq!(cut.status, 408);
    assert!(started.elapsed() >= Duration::from_secs(4));

    // PostgreSQL is served throughout.
    let c = gw.connect("alice", "app").await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1000);
    drop(c);

    // Shutdown stops the endpoint with everything else.
    let metrics = gw.metrics;
    assert!(gw.stop().success());
    assert!(TcpStream::connect(metrics).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_faults_and_quarantine_show_in_metrics() {
    let extra = String::from(
        r#"
[plugin_host]
quarantine_faults = 3
quarantine_window_secs = 60
quarantine_secs = 600

[[plugin]]
name = "stmt-panic"
path = "@PLUGINS@/test-hostile.wasm"
timeout_ms = 1000
config = { mode = "panic", hooks = ["statement"] }
"#,
    ) + &gatehouse_conformance::plugin_target("h_panic", "\"stmt-panic\"");
    let gw = Gw::start(&extra);

    let before = gw.scrape().await;
    let p = [("plugin", "stmt-panic")];
    assert_eq!(before.get("gatehouse_plugin_quarantined", &p), 0.0);
    assert_eq!(before.get("gatehouse_plugin_calls_total", &p), 0.0);

    let c = gw.connect("alice", "h_panic").await;
    let mut messages = Vec::new();
    for _ in 0..5 {
        let e = c.batch_execute("SELECT 1").await.unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("42501"));
        messages.push(db_message(&e));
    }
    assert!(messages[0].contains("(trap)"), "{messages:?}");
    assert!(messages[4].contains("(quarantined)"), "{messages:?}");

    let m = gw.scrape().await;
    assert_eq!(m.get("gatehouse_plugin_quarantined", &p), 1.0);
    assert_eq!(m.get("gatehouse_plugin_quarantines_total", &p), 1.0);
    assert_eq!(m.get("gatehouse_plugin_calls_total", &p), 3.0);
    assert_eq!(m.get("gatehouse_plugin_quarantine_skips_total", &p), 2.0);
    assert_eq!(
        m.get(
            "gatehouse_plugin_faults_total",
            &[("plugin", "stmt-panic"), ("kind", "trap")]
        ),
        3.0
    );
    assert_eq!(
        m.get(
            "gatehouse_plugin_faults_total",
            &[("plugin", "stmt-panic"), ("kind", "timeout")]
        ),
        0.0
    );
    // The other plugins are untouched.
    for plugin in ["pii-mask", "sql-guard"] {
        assert_eq!(m.get("gatehouse_plugin_quarantined", &[("plugin", plugin)]), 0.0);
    }
    m.get("gatehouse_pg_pool_idle_connections", &[("target", "h_panic")]);
    // Refused statements are still recorded.
    assert!(
        m.get("gatehouse_recorder_events_appended_total", &[])
            > before.get("gatehouse_recorder_events_appended_total", &[])
    );
}
