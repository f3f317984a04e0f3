//! Shipping the log off the host, end to end: the real gateway ships sealed segments to a
//! filesystem sink and to a real S3 API (moto's server) behind a switchable TCP hop; the
//! shipped copy is verified on its own with `gatehouse audit verify --shipped`, survives a sink
//! outage under load and a `kill -9`, and a replaced, edited or removed segment is caught.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gatehouse_conformance::{
    Harness, Options, S3Server, TcpSwitch, exit_code as code, http_get, metric, output_text as text,
};

fn verify_shipped(h: &Harness, extra: &[&str]) -> Output {
    let config = h.setup.config_path.display().to_string();
    let key = h.setup.audit_public_key.display().to_string();
    let mut args = vec!["audit", "verify", "--shipped", &config, "--key", &key];
    args.extend_from_slice(extra);
    h.gatehouse(&args).unwrap()
}

/// `gatehouse audit restore` of the harness's sink into `out`.
fn restore_shipped(h: &Harness, out: &Path) -> Output {
    let config = h.setup.config_path.display().to_string();
    let key = h.setup.audit_public_key.display().to_string();
    let out = out.display().to_string();
    h.gatehouse(&[
        "audit",
        "restore",
        "--shipped",
        &config,
        "--key",
        &key,
        "--out",
        &out,
    ])
    .unwrap()
}

/// `gatehouse audit search --log LOG --text TEXT --json`: whether it succeeded and found it.
fn finds_text(h: &Harness, log: &Path, needle: &str) -> bool {
    let log = log.display().to_string();
    let out = h
        .gatehouse(&["audit", "search", "--log", &log, "--text", needle, "--json"])
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).contains(needle)
}

/// `gatehouse audit export` of every event of `log` into `bundle`, signed with `sign_key`.
fn export_everything(h: &Harness, log: &Path, bundle: &Path, sign_key: Option<&Path>) -> Output {
    let (log, bundle) = (log.display().to_string(), bundle.display().to_string());
    let key = sign_key.map(|k| k.display().to_string());
    let mut args = vec![
        "audit",
        "export",
        "--log",
        &log,
        "--from",
        "2000-01-01T00:00:00Z",
        "--to",
        "2100-01-01T00:00:00Z",
        "--out",
        &bundle,
    ];
    if let Some(k) = &key {
        args.extend(["--sign-key", k.as_str()]);
    }
    h.gatehouse(&args).unwrap()
}

/// Segment files of a filesystem sink, in name order.
fn segment_files(sink: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(sink.join("segments"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn last_local_seq(h: &Harness) -> u64 {
    gatehouse_recorder::LogReader::open(&h.setup.log_dir)
        .unwrap()
        .last_seq()
        .unwrap()
}

#[test]
fn shipped_segments_verify_on_their_own_and_tampering_in_the_sink_is_named() {
    let sink_dir = tempfile::tempdir().unwrap();
    let sink = sink_dir.path().join("audit");
    let extra = format!(
        "\n[recorder.shipping]\nsink = \"file://{}\"\ninterval_secs = 1\n",
        sink.display()
    );
    let mut h = Harness::start_with(Options {
        extra_config: &extra,
        ..Options::default()
    })
    .unwrap();
    for i in 0..3 {
        let out = h
            .psql(
                "alice",
                "app",
                &["-c", &format!("SELECT {i} AS n"), "-c", "SELECT 1"],
            )
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    // A clean stop signs the last events and ships them before the process exits.
    h.stop_gateway().unwrap();
    let segs = segment_files(&sink);
    assert!(segs.len() >= 2, "{segs:?}");
    let out = verify_shipped(&h, &["--strict", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let last = last_local_seq(&h);
    assert_eq!(v["report"]["events_checked"], last, "{v}");
    assert_eq!(v["report"]["last_signed_seq"], last, "{v}");
    // Names are contiguous seq ranges.
    let mut next = 1u64;
    for s in &segs {
        let name = s.file_name().unwrap().to_str().unwrap();
        let (a, b) = name.trim_end_matches(".seg").split_once('-').unwrap();
        assert_eq!(a.parse::<u64>().unwrap(), next, "{segs:?}");
        next = b.parse::<u64>().unwrap() + 1;
    }
    assert_eq!(next, last + 1);

    let check = |what: &str, kind: &str| {
        let out = verify_shipped(&h, &[]);
        assert_eq!(code(&out), 1, "{what}: {}", text(&out));
        assert!(text(&out).contains(kind), "{what}: {}", text(&out));
    };
    // One byte of an event edited.
    let original = std::fs::read(&segs[0]).unwrap();
    let edited = String::from_utf8(original.clone())
        .unwrap()
        .replacen("\"alice\"", "\"mallory\"", 1);
    assert_ne!(edited.as_bytes(), &original[..]);
    std::fs::write(&segs[0], edited).unwrap();
    check("edited", "altered");
    // Nothing is restored from a sink that does not verify.
    let restored = h.dir.path().join("restored");
    let out = restore_shipped(&h, &restored);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(text(&out).contains("nothing restored"), "{}", text(&out));
    assert!(!restored.exists());
    std::fs::write(&segs[0], &original).unwrap();
    // A segment replaced by another one's content.
    let second = std::fs::read(&segs[1]).unwrap();
    std::fs::write(&segs[0], &second).unwrap();
    check("replaced", "altered");
    std::fs::write(&segs[0], &original).unwrap();
    // A segment removed from the middle.
    if segs.len() >= 3 {
        let mid = std::fs::read(&segs[1]).unwrap();
        std::fs::remove_file(&segs[1]).unwrap();
        check("removed", "missing");
        std::fs::write(&segs[1], mid).unwrap();
    }
    let out = verify_shipped(&h, &["--strict"]);
    assert_eq!(code(&out), 0, "restored: {}", text(&out));
}

/// Poll `f` every 200 ms until it returns true or `limit` passes.
fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipping_to_s3_rides_out_an_outage_and_a_kill_without_loss_or_duplicates() {
    let s3 = S3Server::start("audit").unwrap();
    let hop = TcpSwitch::start(s3.addr).unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let write = |name: &str, value: &str| {
        let p = secrets.path().join(name);
        std::fs::write(&p, value).unwrap();
        p.display().to_string()
    };
    let id = write("id", "AKIDGATEHOUSETEST");
    let secret = write("secret", "gatehouse-test-secret");
    let enc = write("enc", &"5a".repeat(32));
    let extra = format!(
        "\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n[recorder.shipping]\nsink = \"s3://audit/gw1\"\n\
         endpoint = \"http://{}\"\nallow_http = true\naccess_key_id = {{ file = \"{id}\" }}\n\
         secret_access_key = {{ file = \"{secret}\" }}\nencryption_key = {{ file = \"{enc}\" }}\n\
         interval_secs = 1\nbacklog_alert_events = 200\n",
        hop.addr
    );
    let mut h = Harness::start_with(Options {
        extra_config: &extra,
        ..Options::default()
    })
    .unwrap();

    // Steady load from two sessions for the whole test (until stopped).
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let load = |h: &Harness| {
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let dsn = h.dsn("alice", "app");
            let (stop, answered) = (stop.clone(), answered.clone());
            tasks.push(tokio::spawn(async move {
                let Ok(c) = gatehouse_conformance::connect_dsn(&dsn).await else {
                    return;
                };
                while !stop.load(Ordering::Relaxed) {
                    if c.simple_query("SELECT 1").await.is_err() {
                        return;
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        tasks
    };
    let tasks = load(&h);
    let scrape = |h: &Harness, name: &str| -> f64 {
        let (_, body) = http_get(h.metrics.unwrap(), "/metrics").unwrap();
        metric(&body, name).unwrap_or(-1.0)
    };
    let health = |h: &Harness| http_get(h.metrics.unwrap(), "/healthz").unwrap().1;

    // Shipping works.
    let hh = &h;
    tokio::task::block_in_place(|| {
        wait_for(Duration::from_secs(30), "a first acknowledged segment", || {
            scrape(hh, "gatehouse_shipping_acked_seq") > 0.0
        })
    });
    // The sink goes away: recording and statements go on, the operator is told.
    hop.set_up(false);
    let before_outage = answered.load(Ordering::Relaxed);
    tokio::task::block_in_place(|| {
        wait_for(Duration::from_secs(60), "shipping to report failure", || {
            scrape(hh, "gatehouse_shipping_failing") == 1.0 && health(hh).starts_with("degraded")
        });
        wait_for(Duration::from_secs(60), "the backlog to grow", || {
            scrape(hh, "gatehouse_shipping_backlog_events") > 200.0
        });
        // A while: several attempts, backing off (1 s, 2 s, 4 s).
        wait_for(Duration::from_secs(60), "retries", || {
            scrape(hh, "gatehouse_shipping_errors_total") >= 3.0
        });
    });
    assert!(
        answered.load(Ordering::Relaxed) > before_outage,
        "statements stalled during the outage"
    );
    // The sink is back: the backlog drains.
    hop.set_up(true);
    tokio::task::block_in_place(|| {
        // (Under this load the unsealed tail alone can exceed the low alert level, so health may
        // still say "lags"; it must no longer say "failing".)
        wait_for(Duration::from_secs(90), "shipping to recover", || {
            scrape(hh, "gatehouse_shipping_failing") == 0.0 && !health(hh).contains("failing")
        })
    });
    // A crash under load, then a restart on the same log.
    h.kill_gateway().unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    h.restart_gateway().unwrap();
    let out = h.psql("alice", "app", &["-c", "SELECT 'after restart'"]).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    h.stop_gateway().unwrap();

    // The sink's final state: every local event exactly once, in order, signed, and the local
    // log verifies too.
    let out = verify_shipped(&h, &["--strict", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let last = last_local_seq(&h);
    assert_eq!(v["report"]["events_checked"], last, "{v}");
    assert_eq!(v["report"]["findings"], serde_json::json!([]), "{v}");
    let local = h.audit_verify(&["--strict"]).unwrap();
    assert_eq!(code(&local), 0, "{}", text(&local));
    // The outage and the recovery are in the record.
    let r = gatehouse_recorder::LogReader::open(&h.setup.log_dir).unwrap();
    let notices: Vec<String> = r
        .events(1, usize::MAX)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.body {
            gatehouse_recorder::EventBody::Notice { message, .. } => Some(message),
            _ => None,
        })
        .collect();
    assert!(
        notices
            .iter()
            .any(|m| m.contains("shipping to s3://audit/gw1 failed")),
        "{notices:?}"
    );
    assert!(
        notices
            .iter()
            .any(|m| m.contains("shipping to s3://audit/gw1 recovered")),
        "{notices:?}"
    );
    // Without the encryption key the sink cannot be read: unreadable, not intact.
    drop(r);
    let cfg = std::fs::read_to_string(&h.setup.config_path).unwrap();
    let nokey = h.dir.path().join("nokey.toml");
    std::fs::write(
        &nokey,
        cfg.replace(&format!("encryption_key = {{ file = \"{enc}\" }}\n"), ""),
    )
    .unwrap();
    let key = h.setup.audit_public_key.display().to_string();
    let out = h
        .gatehouse(&[
            "audit",
            "verify",
            "--shipped",
            &nokey.display().to_string(),
            "--key",
            &key,
        ])
        .unwrap();
    assert_eq!(code(&out), 4, "{}", text(&out));
    assert!(text(&out).contains("encrypted"), "{}", text(&out));
}

/// The keys under `prefix/segments/` in an S3 bucket (moto takes unsigned listings).
fn s3_segments(s3: &S3Server, bucket: &str, prefix: &str) -> Vec<String> {
    let (status, xml) = http_get(
        s3.addr,
        &format!("/{bucket}?list-type=2&prefix={prefix}/segments/"),
    )
    .unwrap();
    assert_eq!(status, 200, "{xml}");
    xml.split("<Key>")
        .skip(1)
        .filter_map(|k| k.split_once("</Key>").map(|(k, _)| k.to_string()))
        .collect()
}

#[test]
fn local_retention_deletes_what_the_s3_sink_holds_and_both_copies_still_verify() {
    let s3 = S3Server::start("audit").unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let (id, secret) = (secrets.path().join("id"), secrets.path().join("secret"));
    std::fs::write(&id, "AKIDGATEHOUSETEST").unwrap();
    std::fs::write(&secret, "gatehouse-test-secret").unwrap();
    let extra = format!(
        "\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n[recorder.shipping]\nsink = \"s3://audit/gw1\"\n\
         endpoint = \"http://{}\"\nallow_http = true\ninterval_secs = 1\n\
         access_key_id = {{ file = \"{}\" }}\nsecret_access_key = {{ file = \"{}\" }}\n\
         keep_local_secs = 0\nretention_interval_secs = 1\nsink_check_interval_secs = 1\n",
        s3.addr,
        id.display(),
        secret.display()
    );
    let mut h = Harness::start_with(Options {
        extra_config: &extra,
        ..Options::default()
    })
    .unwrap();
    let out = h
        .psql("alice", "app", &["-c", "SELECT 'before retention' AS marker"])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let floor = |h: &Harness| {
        let (_, body) = http_get(h.metrics.unwrap(), "/metrics").unwrap();
        metric(&body, "gatehouse_audit_local_floor_seq").unwrap_or(-1.0)
    };
    // Sessions keep coming while retention deletes what the sink acknowledged.
    let mut first_floor = 0.0;
    for i in 0..20 {
        let out = h
            .psql("alice", "app", &["-c", &format!("SELECT {i} AS n")])
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        if first_floor == 0.0 {
            first_floor = floor(&h).max(0.0);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_for(Duration::from_secs(30), "retention to move the floor", || {
        floor(&h) > first_floor.max(1.0)
    });
    let (_, health) = http_get(h.metrics.unwrap(), "/healthz").unwrap();
    assert_eq!(health, "ok\n");

    // The sink loses its first segment, which only it holds now: the gateway says so and
    // deletes nothing more; once the segment is back, it is healthy again.
    let oldest = s3_segments(&s3, "audit", "gw1")
        .into_iter()
        .find(|k| k.starts_with("gw1/segments/00000000000000000001-"))
        .unwrap();
    let body = s3.object("audit", &oldest, None, false).unwrap();
    assert!(!body.is_empty());
    s3.object("audit", &oldest, None, true).unwrap();
    assert!(!s3_segments(&s3, "audit", "gw1").contains(&oldest));
    let scrape_now = |h: &Harness, name: &str| {
        let (_, m) = http_get(h.metrics.unwrap(), "/metrics").unwrap();
        metric(&m, name).unwrap_or(-1.0)
    };
    let lost = |h: &Harness| scrape_now(h, "gatehouse_shipping_sink_lost_events");
    wait_for(Duration::from_secs(30), "the loss to be reported", || {
        lost(&h) > 0.0
    });
    let (_, health) = http_get(h.metrics.unwrap(), "/healthz").unwrap();
    assert!(
        health.starts_with("degraded")
            && health.contains("lost events 1")
            && health.contains("below the local floor"),
        "{health}"
    );
    // More is shipped meanwhile, and whole passes run after that: none deletes anything.
    let held = floor(&h);
    let acked = scrape_now(&h, "gatehouse_shipping_acked_seq");
    for i in 0..3 {
        let out = h
            .psql("alice", "app", &["-c", &format!("SELECT {i} AS while_lost")])
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    wait_for(Duration::from_secs(30), "more to be shipped", || {
        scrape_now(&h, "gatehouse_shipping_acked_seq") > acked
    });
    let checks = scrape_now(&h, "gatehouse_shipping_sink_checks_total");
    wait_for(Duration::from_secs(30), "two more whole-sink checks", || {
        scrape_now(&h, "gatehouse_shipping_sink_checks_total") >= checks + 2.0
    });
    assert_eq!(floor(&h), held, "retention deleted while the sink lacked events");
    s3.object("audit", &oldest, Some(&body), false).unwrap();
    wait_for(Duration::from_secs(30), "the sink to be whole again", || {
        lost(&h) == 0.0 && http_get(h.metrics.unwrap(), "/healthz").unwrap().1 == "ok\n"
    });
    h.stop_gateway().unwrap();

    // The local log starts after its floor and verifies from there, signed to its end.
    let local = h.audit_verify(&["--strict"]).unwrap();
    assert_eq!(code(&local), 0, "{}", text(&local));
    assert!(text(&local).contains("starts after event"), "{}", text(&local));
    // The early statement is gone from the local log and its search index …
    assert!(!finds_text(&h, &h.setup.log_dir, "before retention"));
    // … and a bundle cannot claim a window reaching back to it.
    let out = export_everything(&h, &h.setup.log_dir, &h.dir.path().join("bundle"), None);
    assert_ne!(code(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains("deleted from the local log"),
        "{}",
        text(&out)
    );
    // The sink holds everything from event 1, the early statement included.
    let out = verify_shipped(&h, &["--strict", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["report"]["first_seq"], 1, "{v}");
    assert_eq!(v["report"]["events_checked"], last_local_seq(&h), "{v}");

    // `audit restore` rebuilds a log from the sink that reaches back to it: the log verifies
    // on its own, finds the early statement, and exports a bundle of the whole window.
    let restored = h.dir.path().join("restored");
    let out = restore_shipped(&h, &restored);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).starts_with("INTACT"), "{}", text(&out));
    let building: Vec<_> = std::fs::read_dir(h.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("restoring"))
        .collect();
    assert!(building.is_empty(), "{building:?}");
    // Never over what is there.
    let again = restore_shipped(&h, &restored);
    assert_eq!(code(&again), 2, "{}", text(&again));
    let (log, key) = (
        restored.display().to_string(),
        h.setup.audit_public_key.display().to_string(),
    );
    let out = h
        .gatehouse(&["audit", "verify", "--log", &log, "--key", &key, "--strict"])
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(finds_text(&h, &restored, "before retention"));
    let bundle = h.dir.path().join("bundle-restored");
    let out = export_everything(&h, &restored, &bundle, Some(&h.setup.audit_private_key));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = h
        .gatehouse(&[
            "audit",
            "verify",
            "--bundle",
            &bundle.display().to_string(),
            "--key",
            &key,
            "--strict",
        ])
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));

    // A lifecycle rule expires the oldest segment. Declared so (`sink_expires`), the sink
    // verifies from the first segment it holds, and restores from there; the restored log
    // says where it starts and, nothing signed vouching for that, is incomplete (exit 3).
    s3.object("audit", &oldest, None, true).unwrap();
    let first_held = s3_segments(&s3, "audit", "gw1")
        .iter()
        .filter_map(|k| {
            k.strip_prefix("gw1/segments/")?
                .split_once('-')?
                .0
                .parse::<u64>()
                .ok()
        })
        .min()
        .unwrap();
    assert!(first_held > 1);
    let out = verify_shipped(&h, &["--strict"]);
    assert_eq!(
        code(&out),
        1,
        "without sink_expires the gap is a loss: {}",
        text(&out)
    );
    let config = std::fs::read_to_string(&h.setup.config_path).unwrap();
    assert_eq!(config.matches("[recorder.shipping]\n").count(), 1, "{config}");
    let expiring = h.dir.path().join("expiring.toml");
    std::fs::write(
        &expiring,
        config.replace(
            "[recorder.shipping]\n",
            "[recorder.shipping]\nsink_expires = true\n",
        ),
    )
    .unwrap();
    let expiring = expiring.display().to_string();
    let out = h
        .gatehouse(&[
            "audit",
            "verify",
            "--shipped",
            &expiring,
            "--key",
            &key,
            "--strict",
        ])
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "starts at event {first_held}: events 1 to {}",
            first_held - 1
        )),
        "{}",
        text(&out)
    );
    let partial = h.dir.path().join("restored-partial");
    let partial_s = partial.display().to_string();
    let out = h
        .gatehouse(&[
            "audit",
            "restore",
            "--shipped",
            &expiring,
            "--key",
            &key,
            "--out",
            &partial_s,
        ])
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains(&format!("restored events {first_held} to ")),
        "{}",
        text(&out)
    );
    let out = h
        .gatehouse(&["audit", "verify", "--log", &partial_s, "--key", &key, "--strict"])
        .unwrap();
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(
        text(&out).contains("unsigned_start") && text(&out).contains("s3://audit/gw1"),
        "{}",
        text(&out)
    );
    assert!(finds_text(&h, &partial, "while_lost"));
}
