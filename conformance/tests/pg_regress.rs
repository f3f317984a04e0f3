//! PostgreSQL's own regression suite (`pg_regress` in installcheck mode, from the Debian
//! packages, with the SQL and expected files of the matching source package) run twice against
//! the same throwaway server: once directly, once through Gatehouse with a permissive policy
//! set. The two runs must agree test by test, and every test's output file must be identical.
//!
//! The suite is fetched by `deploy/pg-regress-source.sh` (run by `deploy/setup.sh`) into
//! `~/.cache/gatehouse/pg-regress/<major>`, or `$GATEHOUSE_PG_REGRESS_DIR`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gatehouse::pgcluster::{TempCluster, find_bindir, hex_token, write_test_pki};
use gatehouse_conformance::{repo_policies, spawn_gateway};
use gatehouse_identity::scram::ScramVerifier;

/// One run of the suite: each test's status (`ok`, `FAILED`, `failed (ignored)`) and where its
/// output files are.
struct SuiteRun {
    statuses: BTreeMap<String, String>,
    results: PathBuf,
    summary: String,
}

fn regress_dir(bindir: &Path) -> Result<PathBuf> {
    let dir = match std::env::var_os("GATEHOUSE_PG_REGRESS_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let major = bindir
                .parent()
                .and_then(|p| p.file_name())
                .context("server bindir has no version directory")?;
            let home = std::env::var_os("HOME").context("HOME is not set")?;
            Path::new(&home).join(".cache/gatehouse/pg-regress").join(major)
        }
    };
    if !dir.join("parallel_schedule").is_file() || !dir.join("regress.so").is_file() {
        bail!(
            "PostgreSQL's regression suite is not in {}: run ./deploy/setup.sh (it runs deploy/pg-regress-source.sh)",
            dir.display()
        );
    }
    Ok(dir)
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)?;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    Ok(())
}

/// Parse pg_regress's progress lines, e.g. `test tablespace ... ok 185 ms`,
/// `     boolean                      ... FAILED       94 ms`.
fn parse_statuses(out: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for line in out.lines() {
        let Some((left, right)) = line.split_once(" ... ") else {
            continue;
        };
        let Some(name) = left.split_whitespace().last() else {
            continue;
        };
        let right = right.trim();
        let status = if right.starts_with("ok") {
            "ok"
        } else if right.starts_with("failed (ignored)") {
            "failed (ignored)"
        } else if right.starts_with("FAILED") {
            "FAILED"
        } else {
            continue;
        };
        m.insert(name.to_string(), status.to_string());
    }
    m
}

/// Wait for `child`, killing it after `limit`.
fn wait_limited(child: &mut Child, limit: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("pg_regress did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[allow(clippy::too_many_arguments)]
fn run_suite(
    label: &str,
    pg_regress: &Path,
    suite: &Path,
    out: &Path,
    bindir: &Path,
    port: u16,
    password: &str,
) -> Result<SuiteRun> {
    std::fs::create_dir_all(out.join("results"))?;
    // The server (another uid) writes COPY TO files into results/.
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o777))?;
    std::fs::set_permissions(out.join("results"), std::fs::Permissions::from_mode(0o777))?;
    let log = out.join("pg_regress.log");
    let started = Instant::now();
    let mut child = Command::new(pg_regress)
        .arg(format!("--inputdir={}", suite.display()))
        .arg(format!("--outputdir={}", out.display()))
        .arg(format!("--bindir={}", bindir.display()))
        .arg(format!("--dlpath={}", suite.display()))
        .arg(format!(
            "--schedule={}",
            suite.join("parallel_schedule").display()
        ))
        .arg("--host=127.0.0.1")
        .arg(format!("--port={port}"))
        .arg("--user=postgres")
        .arg("--dbname=regression")
        .env("PGPASSWORD", password)
        .env("PGSSLMODE", "require")
        .env("PGCONNECT_TIMEOUT", "20")
        .env_remove("PGDATABASE")
        .env_remove("PGOPTIONS")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", pg_regress.display()))?;
    wait_limited(&mut child, Duration::from_secs(30 * 60))?;
    let text = std::fs::read_to_string(&log)?;
    let statuses = parse_statuses(&text);
    if statuses.len() < 100 {
        bail!("{label}: pg_regress ran only {} tests:\n{text}", statuses.len());
    }
    let summary = text
        .lines()
        .filter(|l| l.contains("tests passed") || l.contains("tests failed") || l.contains("All "))
        .collect::<Vec<_>>()
        .join(" ");
    let failed: Vec<&str> = statuses
        .iter()
        .filter(|(_, st)| st.as_str() != "ok")
        .map(|(n, _)| n.as_str())
        .collect();
    eprintln!(
        "{label}: {} tests in {:.0?}: {summary} not ok: {}",
        statuses.len(),
        started.elapsed(),
        failed.join(" ")
    );
    Ok(SuiteRun {
        statuses,
        results: out.join("results"),
        summary,
    })
}

fn permissive_policies(dir: &Path) -> Result<PathBuf> {
    let p = dir.join("policies");
    std::fs::create_dir_all(&p)?;
    std::fs::copy(
        repo_policies().join("schema.cedarschema"),
        p.join("schema.cedarschema"),
    )?;
    std::fs::write(
        p.join("permit-all.cedar"),
        "// pg_regress through Gatehouse: every identity may do anything.\n\
         @id(\"permit-all\")\npermit(principal, action, resource);\n",
    )?;
    Ok(p)
}

fn gateway_config(dir: &Path, cluster: &TempCluster, key: &str) -> Result<PathBuf> {
    let gw = dir.join("gateway");
    std::fs::create_dir_all(&gw)?;
    let (_, cert, tls_key) = write_test_pki(&gw)?;
    let pw = gw.join("upstream.password");
    std::fs::write(&pw, &cluster.password)?;
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600))?;
    let policies = permissive_policies(dir)?;
    let mut cfg = format!(
        r#"[gateway]
shutdown_grace_secs = 2

[policy]
dir = "{policies}"

[recorder]
dir = "{log}"
durability = "buffered"

[[listener]]
name = "pg"
protocol = "postgres"
address = "127.0.0.1:0"
tls_cert = "{cert}"
tls_key = "{tls_key}"
plaintext = "loopback"

[[identity]]
name = "postgres"
kind = "user"
groups = ["dba"]
key_verifier = "{verifier}"
"#,
        policies = policies.display(),
        log = dir.join("log").display(),
        cert = cert.display(),
        tls_key = tls_key.display(),
        verifier = ScramVerifier::generate(key),
    );
    // pg_regress connects to `postgres` to (re)create `regression`, then runs every test in it.
    for db in ["postgres", "regression", "template1"] {
        cfg.push_str(&format!(
            r#"
[[target]]
name = "{db}"
kind = "postgres"
tags = {{ env = "test" }}
[target.postgres]
host = "127.0.0.1"
port = {port}
database = "{db}"
user = "postgres"
password = {{ file = "{pw}" }}
tls = "verify-full"
ca_file = "{ca}"
"#,
            port = cluster.port,
            pw = pw.display(),
            ca = cluster.ca_file.display(),
        ));
    }
    let path = gw.join("gatehouse.toml");
    std::fs::write(&path, cfg)?;
    Ok(path)
}

struct Gateway(Child);
impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn pg_regress_through_gatehouse_matches_direct() -> Result<()> {
    let bindir = find_bindir()?;
    let pg_regress = bindir.join("../lib/pgxs/src/test/regress/pg_regress");
    if !pg_regress.is_file() {
        bail!("{} is missing: run ./deploy/setup.sh", pg_regress.display());
    }
    let source = regress_dir(&bindir)?;
    let tmp = tempfile::Builder::new().prefix("gatehouse-regress-").tempdir()?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    // The server reads the suite's data files and loads regress.so: give it a readable copy.
    let suite = tmp.path().join("suite");
    copy_tree(&source, &suite)?;

    let cluster = TempCluster::start(&tmp.path().join("pg"))?;
    let direct = run_suite(
        "direct",
        &pg_regress,
        &suite,
        &tmp.path().join("direct"),
        &bindir,
        cluster.port,
        &cluster.password,
    )?;

    let key = format!("gh_{}{}", hex_token(), hex_token());
    let config = gateway_config(tmp.path(), &cluster, &key)?;
    let (child, addrs) = spawn_gateway(&config)?;
    let mut gateway = Gateway(child);
    let through = run_suite(
        "through Gatehouse",
        &pg_regress,
        &suite,
        &tmp.path().join("through"),
        &bindir,
        addrs.pg.port(),
        &key,
    )?;
    let alive = matches!(gateway.0.try_wait(), Ok(None));

    let mut differences = Vec::new();
    let names: std::collections::BTreeSet<&String> =
        direct.statuses.keys().chain(through.statuses.keys()).collect();
    for name in names {
        let d = direct.statuses.get(name).map(String::as_str).unwrap_or("missing");
        let t = through
            .statuses
            .get(name)
            .map(String::as_str)
            .unwrap_or("missing");
        if d != t {
            differences.push(format!("{name}: direct {d}, through Gatehouse {t}"));
            continue;
        }
        let file = format!("{name}.out");
        let a = std::fs::read(direct.results.join(&file)).unwrap_or_default();
        let b = std::fs::read(through.results.join(&file)).unwrap_or_default();
        if a != b {
            let diff = Command::new("diff")
                .arg("-u")
                .arg(direct.results.join(&file))
                .arg(through.results.join(&file))
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .chars()
                        .take(4000)
                        .collect::<String>()
                })
                .unwrap_or_default();
            differences.push(format!("{name}: same status ({d}), different output:\n{diff}"));
        }
    }
    if !differences.is_empty() || !alive {
        let keep = tmp.keep();
        bail!(
            "pg_regress through Gatehouse differs from direct ({} of {} tests; gateway alive: {alive}; \
             direct: {}; through: {}; files kept in {}):\n{}",
            differences.len(),
            direct.statuses.len(),
            direct.summary,
            through.summary,
            keep.display(),
            differences.join("\n")
        );
    }
    drop(gateway);
    Ok(())
}
