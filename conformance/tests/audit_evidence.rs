//! Evidence an auditor can check offline: a real gateway records real `psql` sessions with
//! signed checkpoints; `gatehouse audit verify` checks the log and an exported bundle with only
//! the public key, names each kind of tampering with its own exit code, and OpenSSL — not our
//! code — confirms a checkpoint signature. A gateway killed with SIGKILL under load leaves a
//! log that verifies, and continues it after a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use gatehouse_conformance::{Harness, Options, exit_code as code, output_text as text};

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_dir(&e.path(), &dst.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

/// The DOM of `page` as headless Chromium (Debian's; `deploy/setup.sh` installs it) renders it.
fn chromium_dom(page: &Path, scratch: &Path) -> String {
    let profile = scratch.join("chromium-profile");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .output()
        .expect("chromium (deploy/setup.sh installs it)");
    assert!(out.status.success(), "chromium: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn recorded_sessions_verify_export_and_expose_tampering() {
    let mut h = Harness::start().unwrap();
    let out = h
        .psql(
            "ai-agent",
            "app",
            &["-c", "SELECT count(*) FROM orders", "-c", "DELETE FROM orders"],
        )
        .unwrap();
    assert!(text(&out).contains("ERROR"), "{}", text(&out));
    let out = h.psql("alice", "app", &["-c", "SELECT 42 AS answer"]).unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // While the gateway runs, the log verifies; its newest events may not be signed yet.
    let live = h.audit_verify(&[]).unwrap();
    assert_eq!(code(&live), 0, "{}", text(&live));
    // A clean stop signs the head: the whole log is covered, even under --strict.
    h.stop_gateway().unwrap();
    let strict = h.audit_verify(&["--strict"]).unwrap();
    assert_eq!(code(&strict), 0, "{}", text(&strict));
    assert!(text(&strict).starts_with("INTACT"), "{}", text(&strict));
    // Without the public key nothing is vouched for: exit 3, not 0.
    let log = h.setup.log_dir.display().to_string();
    let nokey = h.gatehouse(&["audit", "verify", "--log", &log]).unwrap();
    assert_eq!(code(&nokey), 3, "{}", text(&nokey));
    assert!(text(&nokey).contains("no_key"), "{}", text(&nokey));

    // Export the last hour as a signed bundle and verify it on its own.
    let bundle = h.dir.path().join("evidence");
    let (bundle_s, key, pubkey) = (
        bundle.display().to_string(),
        h.setup.audit_private_key.display().to_string(),
        h.setup.audit_public_key.display().to_string(),
    );
    let out = h
        .gatehouse(&[
            "audit",
            "export",
            "--log",
            &log,
            "--from",
            "-1h",
            "--to",
            "now",
            "--out",
            &bundle_s,
            "--sign-key",
            &key,
        ])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["unsigned_events"], 0, "{summary}");
    assert!(summary["sessions"].as_u64().unwrap() >= 2, "{summary}");
    let verify_bundle = |dir: &Path, extra: &[&str]| {
        let d = dir.display().to_string();
        let mut args = vec!["audit", "verify", "--bundle", &d, "--key", &pubkey];
        args.extend_from_slice(extra);
        h.gatehouse(&args).unwrap()
    };
    let ok = verify_bundle(&bundle, &["--strict"]);
    assert_eq!(code(&ok), 0, "{}", text(&ok));
    // The transcripts are in the bundle, denial and all.
    let transcripts: String = std::fs::read_dir(bundle.join("transcripts"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(transcripts.contains("DELETE FROM orders"), "{transcripts}");

    // The report renders in a real browser, maps the controls, and links the transcripts.
    let dom = chromium_dom(&bundle.join("report.html"), h.dir.path());
    for needle in [
        "Gatehouse evidence bundle",
        "id=\"control-CC6-1\"",
        "id=\"control-A-8-11\"",
        "ISO/IEC 27001:2022",
        "href=\"transcripts/",
        "user:alice",
    ] {
        assert!(dom.contains(needle), "report lacks {needle}: {dom}");
    }
    assert!(!dom.contains("<script"), "{dom}");

    // Tampering with the bundle: one edited byte in the denied DELETE's record.
    let edited = h.dir.path().join("edited");
    copy_dir(&bundle, &edited);
    let events = std::fs::read_to_string(edited.join("events.jsonl")).unwrap();
    let line = events
        .lines()
        .position(|l| l.contains("DELETE FROM orders") && l.contains("\"deny\""))
        .expect("the denied DELETE is recorded");
    let seq = line as u64 + summary["first_seq"].as_u64().unwrap();
    let denied: serde_json::Value = serde_json::from_str(events.lines().nth(line).unwrap()).unwrap();
    let policy = denied["body"]["verdict"]["policy_ids"][0].as_str().unwrap();
    assert!(dom.contains(policy), "the report's denials lack {policy}");
    std::fs::write(
        edited.join("events.jsonl"),
        events.replacen("DELETE FROM orders", "DELETE FROM ordess", 1),
    )
    .unwrap();
    let out = verify_bundle(&edited, &[]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(text(&out).starts_with("TAMPERED"), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("altered (event {seq})")),
        "{}",
        text(&out)
    );
    let json = verify_bundle(&edited, &["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["outcome"], "tampered");
    assert_eq!(v["report"]["findings"][0]["kind"], "altered");

    // Tampering with the log itself after the fact is caught the same way (the gateway is
    // stopped, so the test can open the database for writing).
    {
        let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), &h.setup.log_dir).unwrap();
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &h.setup.log_dir, cfs).unwrap();
        let cf = db.cf_handle("events").unwrap();
        db.delete_cf(cf, seq.to_be_bytes()).unwrap();
    }
    let out = h.audit_verify(&[]).unwrap();
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        text(&out).contains(&format!("missing (event {seq})")),
        "{}",
        text(&out)
    );

    // A wrong key, an unreadable key and a missing log have their own codes.
    let other = h.dir.path().join("other");
    let out = h
        .gatehouse(&["audit", "keygen", "--out", &other.display().to_string()])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = h
        .gatehouse(&[
            "audit",
            "verify",
            "--bundle",
            &bundle_s,
            "--key",
            &format!("{}.pub.pem", other.display()),
        ])
        .unwrap();
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(text(&out).contains("unknown_key"), "{}", text(&out));
    let out = h
        .gatehouse(&[
            "audit",
            "verify",
            "--bundle",
            &bundle_s,
            "--key",
            "/nonexistent.pem",
        ])
        .unwrap();
    // A key that cannot be read is a usage error.
    assert_eq!(code(&out), 2, "{}", text(&out));
    let out = h
        .gatehouse(&["audit", "verify", "--log", "/nonexistent", "--key", &pubkey])
        .unwrap();
    assert_eq!(code(&out), 4, "{}", text(&out));
    // keygen never overwrites a key.
    let out = h
        .gatehouse(&["audit", "keygen", "--out", &other.display().to_string()])
        .unwrap();
    assert!(!out.status.success());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(format!("{}.pem", other.display()))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// The checkpoint format is documented well enough for OpenSSL to check a signature, and our
/// keys are ordinary PKCS#8/SPKI PEM.
#[test]
fn openssl_verifies_a_checkpoint_signature() {
    let mut h = Harness::start().unwrap();
    let out = h.psql("alice", "app", &["-c", "SELECT 1"]).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    h.stop_gateway().unwrap();
    let dir = h.dir.path();

    // OpenSSL derives the same public key from our private key.
    let out = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&h.setup.audit_private_key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        std::fs::read_to_string(&h.setup.audit_public_key).unwrap()
    );

    let r = gatehouse_recorder::LogReader::open(&h.setup.log_dir).unwrap();
    let cp = r.checkpoints().unwrap().pop().expect("a checkpoint at close");
    let msg = format!(
        "gatehouse-checkpoint-v1\nseq:{}\nhash:{}\ntime_us:{}\nkey_id:{}\n",
        cp.seq, cp.hash, cp.time_us, cp.key_id
    );
    assert_eq!(msg.as_bytes(), cp.message());
    let (msg_file, sig_file) = (dir.join("cp.msg"), dir.join("cp.sig"));
    std::fs::write(&msg_file, &msg).unwrap();
    std::fs::write(&sig_file, hex::decode(&cp.signature).unwrap()).unwrap();
    let verify = |m: &Path| {
        Command::new("openssl")
            .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
            .arg(&h.setup.audit_public_key)
            .arg("-in")
            .arg(m)
            .arg("-sigfile")
            .arg(&sig_file)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let ok = verify(&msg_file);
    assert!(
        ok.status.success() && text(&ok).contains("Signature Verified Successfully"),
        "{}",
        text(&ok)
    );
    // ...and refuses it for another head.
    let forged = dir.join("forged.msg");
    std::fs::write(
        &forged,
        msg.replace(&format!("seq:{}", cp.seq), &format!("seq:{}", cp.seq + 1)),
    )
    .unwrap();
    assert!(!verify(&forged).status.success());
}

/// Kill -9 under load: every statement that got an answer has its record, the chain verifies
/// (only the tail after the last checkpoint is unsigned), and a restarted gateway continues the
/// same chain, signed to the end when it stops cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_gateway_leaves_a_verifiable_log_and_continues_it() {
    let mut h = Harness::start().unwrap();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let c = h.connect("alice", "app").await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut answered = Vec::new();
            for n in 0..10_000u32 {
                let marker = format!("SELECT {n} AS n, '{i}-{n}' AS marker");
                match c.simple_query(&marker).await {
                    Ok(_) => answered.push(format!("{i}-{n}")),
                    Err(_) => break,
                }
            }
            answered
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    h.kill_gateway().unwrap();
    let mut answered = Vec::new();
    for t in tasks {
        answered.extend(t.await.unwrap());
    }
    assert!(answered.len() > 20, "only {} statements ran", answered.len());

    let out = h.audit_verify(&["--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        code(&out) == 0 && v["outcome"] == "intact",
        "after kill -9: {}",
        text(&out)
    );
    // Every answered statement was recorded before it ran.
    let r = gatehouse_recorder::LogReader::open(&h.setup.log_dir).unwrap();
    let mut recorded = std::collections::HashSet::new();
    r.events(1, usize::MAX)
        .unwrap()
        .iter()
        .filter_map(|e| match &e.body {
            gatehouse_recorder::EventBody::Decision {
                statement: Some(s), ..
            } => s.text.split('\'').nth(1).map(str::to_string),
            _ => None,
        })
        .for_each(|m| {
            recorded.insert(m);
        });
    let unrecorded: Vec<_> = answered.iter().filter(|m| !recorded.contains(*m)).collect();
    assert!(unrecorded.is_empty(), "answered but not recorded: {unrecorded:?}");
    drop(r);

    // The restarted gateway continues the chain.
    h.restart_gateway().unwrap();
    let out = h.psql("alice", "app", &["-c", "SELECT 'after restart'"]).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    h.stop_gateway().unwrap();
    let out = h.audit_verify(&["--strict"]).unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
}

/// A security team tries a policy change against what really happened: the decisions that
/// would change are listed with who, what, old -> new and the policy ids; the rest are not.
#[test]
fn policy_whatif_lists_exactly_the_decisions_a_candidate_set_would_change() {
    let mut h = Harness::start().unwrap();
    let out = h
        .psql(
            "ai-agent",
            "app",
            &["-c", "SELECT count(*) FROM orders", "-c", "DELETE FROM orders"],
        )
        .unwrap();
    assert!(text(&out).contains("ERROR"), "{}", text(&out));
    let out = h.psql("alice", "app", &["-c", "SELECT 42 AS answer"]).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    h.stop_gateway().unwrap();

    // The candidate: today's policies plus two changes.
    let candidate = gatehouse_conformance::repo_policies_with(
        &h.dir.path().join("candidate"),
        "candidate.cedar",
        r#"
@id("alice-no-reads")
forbid (
  principal == Gatehouse::User::"alice",
  action == Gatehouse::Action::"query",
  resource
) when { context.kind == "select" };

@id("agents-orders-reads-approved")
@approvers("dba")
forbid (
  principal is Gatehouse::Agent,
  action == Gatehouse::Action::"query",
  resource
) when { context.kind == "select" && context.tables_read.contains("public.orders") };

@id("alice-connect-approved")
@approvers("dba")
forbid (
  principal == Gatehouse::User::"alice",
  action == Gatehouse::Action::"connect",
  resource
);
"#,
    )
    .unwrap();

    let log = h.setup.log_dir.display().to_string();
    let cand = candidate.display().to_string();
    // The unchanged set changes nothing.
    let same = h
        .gatehouse(&[
            "policy",
            "whatif",
            "--policies",
            &gatehouse_conformance::repo_policies().display().to_string(),
            "--log",
            &log,
            "--fail-on-change",
        ])
        .unwrap();
    assert_eq!(code(&same), 0, "{}", text(&same));
    assert!(text(&same).contains("0 of "), "{}", text(&same));

    let out = h
        .gatehouse(&[
            "policy",
            "whatif",
            "--policies",
            &cand,
            "--log",
            &log,
            "--from",
            "-1h",
            "--json",
        ])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let changes = v["changes"].as_array().unwrap();
    let summary: Vec<(String, String, String, String)> = changes
        .iter()
        .map(|c| {
            (
                c["principal"].as_str().unwrap().to_string(),
                c["statement"].as_str().unwrap_or("").to_string(),
                c["old"].as_str().unwrap().to_string(),
                c["new"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        summary.contains(&(
            "user:alice".into(),
            "SELECT 42 AS answer".into(),
            "allow".into(),
            "deny".into()
        )),
        "{summary:?}"
    );
    assert!(
        summary.contains(&(
            "agent:ai-agent".into(),
            "SELECT count(*) FROM orders".into(),
            "allow".into(),
            "hold".into()
        )),
        "{summary:?}"
    );
    // A connection cannot be held: the gateway would deny it, and what-if says so.
    let connect = changes
        .iter()
        .find(|c| c["action"] == "connect")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(
        (&connect["principal"], &connect["old"], &connect["new"]),
        (
            &serde_json::json!("user:alice"),
            &serde_json::json!("allow"),
            &serde_json::json!("deny")
        ),
        "{v}"
    );
    assert_eq!(
        connect["new_policies"],
        serde_json::json!(["alice-connect-approved"])
    );
    // The DELETE was denied and still is; psql's own catalog queries, other connects: unchanged.
    assert_eq!(changes.len(), 3, "{summary:?}");
    let alice = changes
        .iter()
        .find(|c| c["principal"] == "user:alice" && c["action"] == "query")
        .unwrap();
    assert_eq!(alice["new_policies"], serde_json::json!(["alice-no-reads"]));
    assert!(!alice["old_policies"].as_array().unwrap().is_empty());
    let agent = changes
        .iter()
        .find(|c| c["principal"] == "agent:ai-agent")
        .unwrap();
    assert_eq!(agent["new_approvers"], serde_json::json!(["dba"]));
    assert_eq!(v["sessions_without_tags"], 0);

    // The human-readable form and the CI exit code.
    let out = h
        .gatehouse(&[
            "policy",
            "whatif",
            "--policies",
            &cand,
            "--log",
            &log,
            "--fail-on-change",
        ])
        .unwrap();
    assert_eq!(code(&out), 1, "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("3 of "), "{t}");
    assert!(
        t.contains("allow [") && t.contains("-> deny [alice-no-reads]"),
        "{t}"
    );
    // A broken candidate is refused before anything is re-decided.
    std::fs::write(
        candidate.join("broken.cedar"),
        "permit (principal, action, resource) when { nonsense };",
    )
    .unwrap();
    let out = h
        .gatehouse(&["policy", "whatif", "--policies", &cand, "--log", &log])
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("broken.cedar"), "{}", text(&out));
}

/// Statement constants touching classified columns never reach the log (the default
/// `redact-classified`), others are kept; `hash` keeps a keyed token instead.
#[test]
fn constants_of_classified_statements_are_redacted_in_the_record() {
    let recorded = |h: &Harness| -> Vec<String> {
        let r = gatehouse_recorder::LogReader::open(&h.setup.log_dir).unwrap();
        r.events(1, usize::MAX)
            .unwrap()
            .into_iter()
            .filter_map(|e| match e.body {
                gatehouse_recorder::EventBody::Decision {
                    statement: Some(s), ..
                } => Some(s.text),
                _ => None,
            })
            .collect()
    };
    let mut h = Harness::start().unwrap();
    let out = h
        .psql(
            "alice",
            "app",
            &[
                "-c",
                "SELECT name FROM customers WHERE ssn = '078-05-1120'",
                "-c",
                "UPDATE customers SET email = 'new@example.com' WHERE id = 424242",
                "-c",
                "SELECT 'not secret' AS label",
            ],
        )
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    h.stop_gateway().unwrap();
    let texts = recorded(&h);
    let all = texts.join("\n");
    assert!(
        !all.contains("078-05-1120") && !all.contains("new@example.com"),
        "{all}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t == "SELECT name FROM customers WHERE ssn = ?"),
        "{all}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t == "UPDATE customers SET email = ? WHERE id = ?"),
        "{all}"
    );
    assert!(texts.iter().any(|t| t == "SELECT 'not secret' AS label"), "{all}");
    // The search index never saw the values either.
    let log = h.setup.log_dir.display().to_string();
    let out = h
        .gatehouse(&["audit", "search", "--log", &log, "--text", "078-05-1120"])
        .unwrap();
    assert!(out.status.success() && out.stdout.is_empty(), "{}", text(&out));
    let out = h
        .gatehouse(&["audit", "search", "--log", &log, "--text", "ssn = ?", "--json"])
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        1,
        "{}",
        text(&out)
    );

    // `hash`: the same value gives the same token, and the value itself is gone.
    let mut h = Harness::start_with(Options {
        extra_config: "\n[recorder.literals]\nmode = \"hash\"\n",
        ..Options::default()
    })
    .unwrap();
    let out = h
        .psql(
            "alice",
            "app",
            &[
                "-c",
                "SELECT id FROM customers WHERE ssn = '078-05-1120'",
                "-c",
                "SELECT id FROM customers WHERE ssn = '078-05-1120' OR id = 1",
            ],
        )
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    h.stop_gateway().unwrap();
    let texts = recorded(&h);
    let all = texts.join("\n");
    assert!(!all.contains("078-05-1120"), "{all}");
    let token = |t: &str| -> String { t.split('\'').nth(1).unwrap_or_default().to_string() };
    let hashed: Vec<&String> = texts.iter().filter(|t| t.contains("ssn = 'tok_")).collect();
    assert_eq!(hashed.len(), 2, "{all}");
    assert_eq!(token(hashed[0]), token(hashed[1]), "{all}");
}
