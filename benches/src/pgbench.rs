//! Running `pgbench` and reading what it reports.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::stats::percentile_sorted;

/// pgbench's `-M` query mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum QueryMode {
    /// One Query message per statement, parameters inlined as literals.
    Simple,
    /// Parse/Bind/Execute with the unnamed statement, re-parsed every time.
    Extended,
    /// Named statements prepared once per connection, then Bind/Execute.
    Prepared,
}

impl QueryMode {
    pub fn as_str(self) -> &'static str {
        match self {
            QueryMode::Simple => "simple",
            QueryMode::Extended => "extended",
            QueryMode::Prepared => "prepared",
        }
    }
}

impl fmt::Display for QueryMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where pgbench connects and as whom (libpq environment variables).
#[derive(Debug, Clone)]
pub struct Conn {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub dbname: String,
    pub sslmode: String,
}

/// libpq variables that would change how pgbench connects if inherited from the caller.
const PG_ENV_CLEARED: &[&str] = &[
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGPASSFILE",
    "PGHOSTADDR",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGSSLROOTCERT",
    "PGSSLCRL",
    "PGREQUIRESSL",
    "PGTARGETSESSIONATTRS",
    "PGREQUIREAUTH",
    "PGSSLNEGOTIATION",
    "PGCHANNELBINDING",
];

impl Conn {
    /// A `pgbench` command connecting with these settings.
    pub fn command(&self, pgbench: &Path) -> Command {
        let mut cmd = Command::new(pgbench);
        for v in PG_ENV_CLEARED {
            cmd.env_remove(v);
        }
        cmd.env("PGHOST", &self.host)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", &self.user)
            .env("PGPASSWORD", &self.password)
            .env("PGDATABASE", &self.dbname)
            .env("PGSSLMODE", &self.sslmode)
            .env("PGGSSENCMODE", "disable")
            .env("PGAPPNAME", "gatehouse-loadbench")
            .env("PGCONNECT_TIMEOUT", "10")
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        cmd
    }
}

/// One timed pgbench run.
#[derive(Debug, Clone)]
pub struct RunSpec<'a> {
    pub pgbench: &'a Path,
    pub conn: &'a Conn,
    /// Built-in script (`select-only`, `simple-update`, `tpcb-like`).
    pub builtin: &'a str,
    pub mode: QueryMode,
    pub clients: u32,
    pub jobs: u32,
    pub seconds: u32,
    /// Fraction of transactions written to the per-transaction log (0: no log, no percentiles).
    pub sampling_rate: f64,
    /// Directory for the per-transaction logs; each run uses (and then removes) its own files.
    pub log_dir: &'a Path,
    /// Unique per run, names the log files.
    pub run_id: u64,
}

/// What a run reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub tps: f64,
    pub latency_avg_ms: f64,
    pub processed: u64,
    pub failed: u64,
    /// From the sampled per-transaction log, when sampling was on.
    pub latency_ms: Option<Percentiles>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub samples: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// Run pgbench as specified and parse its report. `interrupted` is polled while it runs; when
/// set, pgbench is killed and an error returned.
pub fn run(spec: &RunSpec<'_>, interrupted: &AtomicBool) -> Result<Report> {
    let prefix = spec.log_dir.join(format!("txlog-{}", spec.run_id));
    let mut cmd = spec.conn.command(spec.pgbench);
    cmd.args(["-n", "-b", spec.builtin, "-M", spec.mode.as_str()])
        .args(["-c", &spec.clients.to_string()])
        .args(["-j", &spec.jobs.to_string()])
        .args(["-T", &spec.seconds.to_string()]);
    if spec.sampling_rate > 0.0 {
        cmd.arg("-l")
            .arg(format!("--sampling-rate={}", spec.sampling_rate.min(1.0)))
            .arg(format!("--log-prefix={}", prefix.display()));
    }
    let out_file = spec.log_dir.join(format!("stdout-{}", spec.run_id));
    let err_file = spec.log_dir.join(format!("stderr-{}", spec.run_id));
    let mut child = cmd
        .stdout(std::fs::File::create(&out_file)?)
        .stderr(std::fs::File::create(&err_file)?)
        .spawn()
        .with_context(|| format!("starting {}", spec.pgbench.display()))?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if interrupted.load(Ordering::Relaxed) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("interrupted");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out_file).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_file).unwrap_or_default();
    let _ = std::fs::remove_file(&out_file);
    let _ = std::fs::remove_file(&err_file);
    let logs = take_logs(spec.log_dir, &prefix);
    if !status.success() {
        bail!(
            "pgbench exited with {status}\n{}{}",
            tail(&stdout, 20),
            tail(&stderr, 20)
        );
    }
    let mut report = parse_output(&stdout).with_context(|| format!("pgbench output:\n{stdout}{stderr}"))?;
    if report.failed > 0 {
        bail!(
            "pgbench reported {} failed transactions\n{}",
            report.failed,
            tail(&stderr, 20)
        );
    }
    if spec.sampling_rate > 0.0 {
        let mut lat = Vec::new();
        for log in &logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            lat.extend(parse_tx_log(&text));
        }
        report.latency_ms = percentiles_us(&mut lat);
    }
    for log in logs {
        let _ = std::fs::remove_file(log);
    }
    Ok(report)
}

/// The per-transaction log files pgbench wrote for `prefix`: `PREFIX.PID` for the first
/// thread and `PREFIX.PID.N` for the others.
fn take_logs(dir: &Path, prefix: &Path) -> Vec<PathBuf> {
    let Some(stem) = prefix.file_name().and_then(|s| s.to_str()) else {
        return Vec::new();
    };
    let stem = format!("{stem}.");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&stem))
        })
        .collect()
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    let from = all.len().saturating_sub(lines);
    all.get(from..).unwrap_or_default().join("\n") + "\n"
}

/// Parse pgbench's summary (PostgreSQL 13 and later; older "including/excluding connections
/// establishing" lines are understood too).
pub fn parse_output(out: &str) -> Result<Report> {
    let mut tps_preferred = None;
    let mut tps_any = None;
    let mut latency = None;
    let mut processed = None;
    let mut failed = 0;
    for line in out.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("tps = ") {
            let n: f64 = first_number(v).context("tps value")?;
            if v.contains("without initial connection time") || v.contains("excluding connections") {
                tps_preferred = Some(n);
            }
            tps_any = Some(n);
        } else if let Some(v) = line.strip_prefix("latency average = ") {
            latency = Some(first_number(v).context("latency value")?);
        } else if let Some(v) = line.strip_prefix("number of transactions actually processed: ") {
            // `-t` runs print `N/TOTAL`.
            let n = v.split('/').next().unwrap_or(v).trim();
            processed = Some(n.parse::<u64>().context("processed count")?);
        } else if let Some(v) = line.strip_prefix("number of failed transactions: ") {
            failed = v
                .split_whitespace()
                .next()
                .unwrap_or("0")
                .parse::<u64>()
                .context("failed count")?;
        }
    }
    let tps = tps_preferred.or(tps_any).context("no `tps =` line")?;
    let processed = processed.context("no `number of transactions actually processed` line")?;
    if processed == 0 {
        bail!("pgbench processed no transactions");
    }
    Ok(Report {
        tps,
        latency_avg_ms: latency.context("no `latency average` line")?,
        processed,
        failed,
        latency_ms: None,
    })
}

fn first_number(s: &str) -> Option<f64> {
    s.split_whitespace().next()?.parse().ok()
}

/// Latencies (µs) from a pgbench per-transaction log: `client_id transaction_no time script_no
/// time_epoch time_us [...]`; failed or skipped transactions (non-numeric time) are left out.
pub fn parse_tx_log(text: &str) -> impl Iterator<Item = u64> + '_ {
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
}

/// Percentiles of latencies given in µs, reported in ms. Sorts `lat_us`.
pub fn percentiles_us(lat_us: &mut [u64]) -> Option<Percentiles> {
    lat_us.sort_unstable();
    let ms = |p: f64| percentile_sorted(lat_us, p).map(|us| us as f64 / 1000.0);
    Some(Percentiles {
        samples: lat_us.len(),
        p50: ms(50.0)?,
        p95: ms(95.0)?,
        p99: ms(99.0)?,
        max: ms(100.0)?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PG15: &str = "pgbench (15.20 (Debian 15.20-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 10
query mode: prepared
number of clients: 8
number of threads: 2
maximum number of tries: 1
duration: 10 s
number of transactions actually processed: 123456
number of failed transactions: 0 (0.000%)
latency average = 0.648 ms
initial connection time = 12.345 ms
tps = 12345.678901 (without initial connection time)
";

    #[test]
    fn parses_pg15_summary() {
        let r = parse_output(PG15).unwrap();
        assert_eq!(r.processed, 123_456);
        assert_eq!(r.failed, 0);
        assert!((r.tps - 12345.678901).abs() < 1e-9);
        assert!((r.latency_avg_ms - 0.648).abs() < 1e-12);
    }

    #[test]
    fn parses_old_summary_and_prefers_excluding() {
        let out = "number of transactions actually processed: 100/100\n\
                   latency average = 1.5 ms\n\
                   tps = 90.0 (including connections establishing)\n\
                   tps = 95.5 (excluding connections establishing)\n";
        let r = parse_output(out).unwrap();
        assert_eq!(r.processed, 100);
        assert!((r.tps - 95.5).abs() < 1e-12);
    }

    #[test]
    fn failed_count_and_missing_lines() {
        let out = PG15.replace(
            "number of failed transactions: 0 (0.000%)",
            "number of failed transactions: 7 (0.100%)",
        );
        assert_eq!(parse_output(&out).unwrap().failed, 7);
        assert!(parse_output("pgbench: error: connection failed").is_err());
        let none = PG15.replace("processed: 123456", "processed: 0");
        assert!(parse_output(&none).is_err());
    }

    #[test]
    fn tx_log_and_percentiles() {
        let log = "0 1 1000 0 1700000000 1\n1 1 3000 0 1700000000 2\n2 1 failed 0 1700000000 3\n\
                   3 1 2000 0 1700000000 4\n";
        let mut v: Vec<u64> = parse_tx_log(log).collect();
        assert_eq!(v.len(), 3);
        let p = percentiles_us(&mut v).unwrap();
        assert_eq!(p.samples, 3);
        assert!((p.p50 - 2.0).abs() < 1e-12);
        assert!((p.max - 3.0).abs() < 1e-12);
        assert!(percentiles_us(&mut []).is_none());
    }
}
