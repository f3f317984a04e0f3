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
