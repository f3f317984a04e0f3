//! WebAssembly plugins on the PostgreSQL path, end to end: the real gateway binary loading the
//! built-in plugins (compiled from source by `deploy/build-plugins.sh`), real clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::time::Duration;

use gatehouse_conformance::{Harness, Options, db_message, plugin_dir, sqlstate};

fn harness(extra: &str) -> Harness {
    Harness::start_with(Options {
        plugins: Some(plugin_dir().unwrap()),
        extra_config: extra,
        ..Default::default()
    })
    .unwrap()
}

/// The transcripts of every recorded session on `target`, concatenated.
fn transcripts(h: &Harness, target: &str) -> String {
    let sessions = h.audit_sessions().unwrap();
    let ids: Vec<&str> = sessions
        .iter()
        .filter(|s| s["target"] == target)
        .filter_map(|s| s["session_id"].as_str())
        .collect();
    assert!(!ids.is_empty(), "no session for {target}: {sessions:?}");
    ids.iter().map(|id| h.audit_show(id).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn results_are_masked_for_every_client() {
    let h = harness("");
    // Extended protocol (tokio-postgres asks for binary results: text columns still masked).
    let c = h.connect("alice", "app").await.unwrap();
    let row = c
        .query_one(
            "SELECT id, name, email, phone, card_number, ssn FROM customers WHERE id = $1",
            &[&1i64],
        )
        .await
        .unwrap();
    let id: i64 = row.get(0);
    assert_eq!(id, 1, "non-PII columns pass untouched");
    let name: String = row.get(1);
    assert_eq!(name, "Customer 1");
    let email: String = row.get(2);
    assert!(!email.contains("customer1@"), "email not masked: {email}");
    let card: String = row.get(4);
    assert!(!card.starts_with("4"), "card not masked: {card}");
    let raw = h
        .setup
        .cluster
        .psql(
            "app",
            "SELECT card_number, ssn, phone FROM customers WHERE id = 1",
        )
        .unwrap();
    let raw: Vec<&str> = raw.trim().split('|').collect();
    let last4 = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
    assert!(
        last4(&card).ends_with(&last4(raw[0])[12..]),
        "partial masking keeps the last 4: {card} vs {}",
        raw[0]
    );
    let ssn: String = row.get(5);
    assert_ne!(ssn, raw[1], "ssn not masked");
    let phone: String = row.get(3);
    assert_ne!(phone, raw[2], "phone not masked");

    // The keyed hash is deterministic: the same address gives the same token in another
    // query shape (a join), so results can still be matched up.
    let joined: String = c
        .query_one(
            "SELECT c.email FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.customer_id = 1 LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(joined, email);
    let other: String = c
        .query_one("SELECT email FROM customers WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(other, email, "different addresses give different tokens");

    // Simple protocol (psql, text results, TLS) sees the same masked values.
    let out = h
        .psql(
            "alice",
            "app",
            &[
                "-At",
                "-c",
                "SELECT email, card_number FROM customers WHERE id = 1",
            ],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.trim(), format!("{email}|{card}"));

    // Many rows stream through in batches, all masked.
    let rows = c.query("SELECT email FROM customers", &[]).await.unwrap();
    assert_eq!(rows.len(), 200);
    for r in &rows {
        let e: String = r.get(0);
        assert!(!e.contains("@example.com"), "unmasked: {e}");
    }

    // COPY TO would bypass masking: refused on a masked target.
    let out = h
        .psql("alice", "app", &["-c", "\\copy customers TO STDOUT"])
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("masked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A target without plugins shows the data as stored.
    let s = h.connect("alice", "app_staging").await.unwrap();
    let plain: String = s
        .query_one("SELECT email FROM customers WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(plain, "customer1@example.com");
    drop(c);
    drop(s);

    // The record says what was masked (entity, column, count), never the value.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = transcripts(&h, "app");
    assert!(t.contains("masked email x1 in `email` (by pii-mask)"), "{t}");
    assert!(t.contains("masked credit-card"), "{t}");
    assert!(
        !t.contains("customer1@example.com"),
        "a masked value leaked into the record"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_guard_plugin_denies_and_is_recorded() {
    let h = harness("");
    let c = h.connect("alice", "app").await.unwrap();
    let e = c.batch_execute("DELETE FROM orders").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"));
    assert!(
        db_message(&e).contains("plugin `sql-guard`"),
        "{}",
        db_message(&e)
    );
    // The session goes on; a DELETE with WHERE (allowed by Cedar for a DBA) runs.
    c.batch_execute("DELETE FROM orders WHERE id = 1").await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 999);
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = transcripts(&h, "app");
    assert!(t.contains("plugin sql-guard (sha256 "), "{t}");
    assert!(t.contains("on-statement: deny"), "{t}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_plugins_cost_one_operation_and_nothing_else() {
    let mut extra = String::from(
        r#"
[plugin_host]
quarantine_faults = 3
quarantine_window_secs = 60
quarantine_secs = 600
"#,
    );
    let cases = [
        ("loop", "timeout"),
        ("memory-bomb", "memory"),
        ("panic", "trap"),
        ("bad-edit", "malformed"),
        // Over the output cap; on a slow machine building it may hit the deadline first.
        ("huge-output", ""),
    ];
    for (mode, _) in cases {
        extra.push_str(&format!(
            r#"
[[plugin]]
name = "rows-{mode}"
path = "@PLUGINS@/test-hostile.wasm"
timeout_ms = 200
memory_mb = 128
config = {{ mode = "{mode}", hooks = ["rows"] }}
"#
        ));
        extra.push_str(&gatehouse_conformance::plugin_target(
            &format!("h_{}", mode.replace('-', "_")),
            &format!("\"rows-{mode}\""),
        ));
    }
    extra.push_str(
        r#"
[[plugin]]
name = "stmt-loop"
path = "@PLUGINS@/test-hostile.wasm"
timeout_ms = 200
config = { mode = "loop", hooks = ["statement"] }
"#,
    );
    extra.push_str(&gatehouse_conformance::plugin_target("h_stmt", "\"stmt-loop\""));
    let mut h = harness(&extra);

    for (mode, kind) in cases {
        let t = format!("h_{}", mode.replace('-', "_"));
        let c = h.connect("alice", &t).await.unwrap();
        // A concurrent session elsewhere is not held up by the faulting plugin.
        let other = h.connect("bob", "app_staging").await.unwrap();
        let (faulty, fine) = tokio::join!(
            c.query("SELECT id, email FROM customers WHERE id <= 3 ORDER BY id", &[]),
            other.query_one("SELECT count(*) FROM orders", &[])
        );
        fine.unwrap();
        let rows = faulty.unwrap_or_else(|e| panic!("{mode}: {}", db_message(&e)));
        assert_eq!(rows.len(), 3, "{mode}");
        for r in &rows {
            // Fail closed: every value masked (text → ****, other types → NULL).
            let id: Option<i64> = r.get(0);
            let email: Option<String> = r.get(1);
            assert_eq!(id, None, "{mode}");
            assert_eq!(email.as_deref(), Some("****"), "{mode}");
        }
        // The session keeps working.
        c.query("SELECT 1", &[]).await.unwrap();
        drop(c);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let tr = transcripts(&h, &t);
        assert!(
            tr.contains(&format!("MASKER FAULT rows-{mode} ({kind}")),
            "{mode}: {tr}"
        );
    }

    // A looping statement hook denies the statement, each time, until the plugin is
    // quarantined; then it is skipped (still failing closed) without running.
    let c = h.connect("alice", "h_stmt").await.unwrap();
    let mut messages = Vec::new();
    for _ in 0..5 {
        let e = c.batch_execute("SELECT 1").await.unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("42501"));
        messages.push(db_message(&e));
    }
    assert!(
        messages[0].contains("plugin `stmt-loop` failed (timeout)"),
        "{messages:?}"
    );
    assert!(messages.last().unwrap().contains("(quarantined)"), "{messages:?}");
    assert!(h.gateway_alive());
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_hot_reload_while_a_session_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.wasm");
    let src = plugin_dir().unwrap();
    std::fs::copy(src.join("template.wasm"), &path).unwrap();
    let extra = format!(
        r#"
[plugin_host]
reload_interval_ms = 100

[[plugin]]
name = "live"
path = "{}"
"#,
        path.display()
    ) + &gatehouse_conformance::plugin_target("live", "\"live\"");
    let h = harness(&extra);
    let c = h.connect("alice", "live").await.unwrap();
    let q = "SELECT email FROM customers WHERE id = 1";
    let e: String = c.query_one(q, &[]).await.unwrap().get(0);
    assert_eq!(e, "customer1@example.com", "the template plugin masks nothing");

    // Swap in the masker (atomically, as a deploy would), while the session is open.
    let tmp = dir.path().join(".live.wasm.tmp");
    std::fs::copy(src.join("pii-mask.wasm"), &tmp).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let mut masked = None;
    for _ in 0..100 {
        let e: String = c.query_one(q, &[]).await.unwrap().get(0);
        if e != "customer1@example.com" {
            masked = Some(e);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let masked = masked.expect("the running session never picked up the new plugin");

    // An invalid file is rejected; the last good version stays.
    std::fs::write(&tmp, b"\0asm not really a component").unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let e: String = c.query_one(q, &[]).await.unwrap().get(0);
    assert_eq!(e, masked);
    let fresh = h.connect("alice", "live").await.unwrap();
    let e: String = fresh.query_one(q, &[]).await.unwrap().get(0);
    assert_eq!(e, masked);
}

/// Not a test: the masking cost measured with pgbench, direct vs through Gatehouse without
/// plugins (`app_staging`) vs with `sql-guard` + `pii-mask` (`app`) vs column rules only (the
/// agent on `app_staging`: `policies/masking.cedar` masks 4 of the 10 columns and, as the
/// others are computed from masked ones, those too), interleaved rounds in one run. Run by hand against a release gateway:
/// `GATEHOUSE_BIN=$CARGO_TARGET_DIR/release/gatehouse cargo test --workspace --test pg_plugins -- --ignored --nocapture measure_masking`
#[test]
#[ignore = "measurement, run by hand with a release gateway"]
fn measure_masking_overhead() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let secs = std::env::var("SECONDS").unwrap_or_else(|_| "8".into());
    let h = Harness::start_with(Options {
        plugins: Some(plugin_dir().unwrap()),
        durability: "buffered",
        ..Default::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("select100.sql");
    // 100 rows x 10 text columns, most of them PII the masker rewrites.
    std::fs::write(
        &script,
        "SELECT id::text, name, email, phone, card_number, ssn, name || ' x', email || ' y', \
         phone || ' z', card_number || ' w' FROM customers ORDER BY id LIMIT 100;\n",
    )
    .unwrap();
    let pgbench = h.setup.cluster.bindir.join("pgbench");
    let run = |conn: &str, password: &str| -> f64 {
        let out = std::process::Command::new(&pgbench)
            .args(["-n", "-M", "prepared", "-c", "4", "-j", "2", "-T", &secs, "-f"])
            .arg(&script)
            .arg(conn)
            .env("PGPASSWORD", password)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text.lines()
            .find(|l| l.starts_with("tps = "))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no tps in {text}"))
    };
    let direct = format!(
        "host=127.0.0.1 port={} user=postgres dbname=app sslmode=require",
        h.setup.cluster.port
    );
    let through = |user: &str, target: &str| {
        format!(
            "host=127.0.0.1 port={} user={user} dbname={target} sslmode=require",
            h.addr.port()
        )
    };
    let (mut d, mut off, mut on, mut cols) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        d.push(run(&direct, &h.setup.cluster.password));
        off.push(run(&through("alice", "app_staging"), h.key("alice")));
        on.push(run(&through("alice", "app"), h.key("alice")));
        cols.push(run(&through("ai-agent", "app_staging"), h.key("ai-agent")));
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (md, moff, mon, mcols) = (med(&mut d), med(&mut off), med(&mut on), med(&mut cols));
    let mb = |tps: f64| tps * 100.0 * 10.0 * 20.0 / 1e6; // ~20 bytes per cell
    eprintln!(
        "SELECT 100 rows x 10 text columns, pgbench -M prepared -c 4 -j 2, {rounds} rounds of {secs}s (median TPS):\n\
         direct                 {md:8.1} tps\n\
         gatehouse, no plugins  {moff:8.1} tps  ({:.2} of direct)\n\
         gatehouse, masking     {mon:8.1} tps  ({:.2} of direct, {:.2} of no plugins; ~{:.1} MB/s of cells masked)\n\
         gatehouse, column rules{mcols:8.1} tps  ({:.2} of direct, {:.2} of no plugins; ~{:.1} MB/s of cells masked)\n\
         rounds: direct {d:?} / no plugins {off:?} / masking {on:?} / column rules {cols:?}",
        moff / md,
        mon / md,
        mon / moff,
        mb(mon),
        mcols / md,
        mcols / moff,
        mb(mcols)
    );
}
