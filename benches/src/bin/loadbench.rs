//! `loadbench`: pgbench directly against PostgreSQL and through the real `gatehouse` binary,
//! interleaved round by round, with the through/direct ratio per query mode and recorder
//! durability.
//!
//! One run starts a throwaway PostgreSQL (the `gatehouse demo` setup: SCRAM, TLS, the example
//! policies and identities), initialises pgbench's tables, starts one gateway per recorder
//! durability, then for every round and query mode runs pgbench once per path (direct, through
//! each gateway), rotating the order each round so that machine noise and warm-up hit every
//! path alike. It prints a table and a JSON summary; see `benches/README.md`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use gatehouse::demo::{self, DemoSetup, SetupOptions};
use gatehouse_benches::gateway::{self, Gateway};
use gatehouse_benches::pgbench::{self, Conn, QueryMode, Report, RunSpec};
use gatehouse_benches::procstat::HostCpu;
use gatehouse_benches::stats::{median, min_max};
use serde::Serialize;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DurabilityArg {
    Sync,
    Buffered,
    Both,
}

/// The recorder durability of one gateway (`[recorder] durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Durability {
    Sync,
    Buffered,
}

impl Durability {
    fn as_str(self) -> &'static str {
        match self {
            Durability::Sync => "sync",
            Durability::Buffered => "buffered",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SslMode {
    /// TLS on every client connection (direct to PostgreSQL, and to Gatehouse).
    Require,
    /// Plaintext client connections (Gatehouse allows plaintext on loopback). Gatehouse still
    /// talks TLS (`verify-full`) to PostgreSQL.
    Disable,
}

impl SslMode {
    fn as_str(self) -> &'static str {
        match self {
            SslMode::Require => "require",
            SslMode::Disable => "disable",
        }
    }
}

/// pgbench directly against PostgreSQL and through Gatehouse, interleaved; prints the
/// through/direct TPS ratio per query mode and recorder durability.
#[derive(Debug, Parser)]
#[command(name = "loadbench", version)]
struct Args {
    /// Recorder durability of the gateway(s) under test.
    #[arg(long, value_enum, default_value = "both")]
    durability: DurabilityArg,
    /// pgbench query modes (`-M`), comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [QueryMode::Simple, QueryMode::Extended, QueryMode::Prepared])]
    modes: Vec<QueryMode>,
    /// pgbench clients (`-c`).
    #[arg(long, default_value_t = 8)]
    clients: u32,
    /// pgbench threads (`-j`); default: the number of CPUs, at most `--clients`.
    #[arg(long)]
    jobs: Option<u32>,
    /// Seconds per pgbench run (`-T`).
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Rounds; every round runs every mode on every path once.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// pgbench scale factor (`-i -s`; 100,000 accounts per unit).
    #[arg(long, default_value_t = 10)]
    scale: u32,
    /// pgbench built-in script (`-b`).
    #[arg(long, default_value = "select-only", value_parser = ["select-only", "simple-update", "tpcb-like"])]
    builtin: String,
    /// Gatehouse identity pgbench connects as; default `bob` (a user: reads on prod) for
    /// select-only, `alice` (a DBA: writes on prod) otherwise.
    #[arg(long, value_parser = ["bob", "alice", "ai-agent"])]
    identity: Option<String>,
    /// Gatehouse target (the demo's `app` is env=prod, `app_staging` env=staging).
    #[arg(long, default_value = "app", value_parser = ["app", "app_staging"])]
    target: String,
    /// libpq sslmode of the client connections, on both paths.
    #[arg(long, value_enum, default_value = "require")]
    sslmode: SslMode,
    /// The `gatehouse` binary; default: next to this executable.
    #[arg(long)]
    gatehouse_bin: Option<PathBuf>,
    /// Policy directory; default: the repository's `policies/`.
    #[arg(long)]
    policies: Option<PathBuf>,
    /// Directory with the built plugins (`pii-mask.wasm`, `sql-guard.wasm`): target `app` then
    /// guards statements and masks PII in results with them (the demo setup), so the run
    /// measures the plugins too. `app_staging` never has plugins.
    #[arg(long)]
    plugins: Option<PathBuf>,
    /// Where the throwaway cluster, configs and event logs go (a temporary directory is made
    /// inside); default: the system temp dir. Put it on the disk you want fsync measured on.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Fraction of transactions logged by pgbench for latency percentiles (0 disables).
    #[arg(long, default_value_t = 0.1)]
    sampling_rate: f64,
    /// Seconds of unrecorded warm-up per path before the first round (0 disables).
    #[arg(long, default_value_t = 3)]
    warmup_seconds: u32,
    /// `[gateway] threads` of the gateways; default: Gatehouse's own (number of CPUs).
    #[arg(long)]
    gateway_threads: Option<usize>,
    /// Gateway log filter (`GATEHOUSE_LOG`).
    #[arg(long, default_value = "warn")]
    gateway_log: String,
    /// `[recorder.literals] mode` of the gateway(s) under test (default: the config's, which
    /// is `redact-classified`: every statement reading or writing a table also looks up the
    /// columns behind the views it names). `keep` measures the gateway without that lookup.
    #[arg(long, value_parser = ["redact-classified", "redact", "hash", "keep"])]
    record_literals: Option<String>,
    /// Also write the JSON summary to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the temporary directory (cluster data, configs, event logs) for inspection.
    #[arg(long)]
    keep: bool,
}

/// Where one pgbench run went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Direct,
    Through(Durability),
}

impl Route {
    fn label(self) -> String {
        match self {
            Route::Direct => "direct".to_string(),
            Route::Through(d) => format!("through-{}", d.as_str()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct RunRecord {
    round: u32,
    mode: QueryMode,
    path: String,
    #[serde(flatten)]
    report: Report,
    /// Gateway CPU seconds during the run (through runs only).
    gateway_cpu_s: Option<f64>,
    /// Share of all host CPUs busy during the run (0..1).
    host_busy: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
struct ModeResult {
    mode: QueryMode,
    durability: Durability,
    rounds: usize,
    direct_tps: Option<f64>,
    through_tps: Option<f64>,
    /// Median over rounds of (through TPS / direct TPS of the same round).
    ratio: Option<f64>,
    ratio_min: Option<f64>,
    ratio_max: Option<f64>,
    ratios: Vec<f64>,
    direct_latency_avg_ms: Option<f64>,
    through_latency_avg_ms: Option<f64>,
    /// Median over rounds of (through − direct) average latency.
    added_latency_ms: Option<f64>,
    direct_p50_ms: Option<f64>,
    through_p50_ms: Option<f64>,
    direct_p99_ms: Option<f64>,
    through_p99_ms: Option<f64>,
    /// Gateway CPU time per transaction (µs).
    gateway_cpu_us_per_txn: Option<f64>,
    host_busy_direct: Option<f64>,
    host_busy_through: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Settings {
    builtin: String,
    scale: u32,
    clients: u32,
    jobs: u32,
    seconds: u32,
    rounds: u32,
    warmup_seconds: u32,
    sslmode: &'static str,
    identity: String,
    target: String,
    sampling_rate: f64,
    gateway_threads: Option<usize>,
    plugins: Option<String>,
    host_cpus: usize,
    pgbench: String,
    gatehouse_bin: String,
}

#[derive(Debug, Serialize)]
struct Summary {
    tool: &'static str,
    settings: Settings,
    results: Vec<ModeResult>,
    runs: Vec<RunRecord>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    install_signal_handler();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadbench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Ctrl-C / SIGTERM stop the current pgbench and let the cluster and gateways be cleaned up;
/// a second one exits at once.
fn install_signal_handler() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                return;
            };
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                if INTERRUPTED.swap(true, Ordering::SeqCst) {
                    std::process::exit(130);
                }
                eprintln!("loadbench: interrupted; cleaning up (again to exit at once)");
            }
        });
    });
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn run(args: Args) -> Result<()> {
    if args.rounds == 0 || args.seconds == 0 || args.clients == 0 {
        bail!("--rounds, --seconds and --clients must be at least 1");
    }
    if args.modes.is_empty() {
        bail!("no --modes given");
    }
    if !(0.0..=1.0).contains(&args.sampling_rate) {
        bail!("--sampling-rate must be between 0 and 1");
    }
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = args
        .jobs
        .unwrap_or(u32::try_from(host_cpus).unwrap_or(1))
        .clamp(1, args.clients);
    let identity = args.identity.clone().unwrap_or_else(|| {
        if args.builtin == "select-only" {
            "bob".to_string()
        } else {
            "alice".to_string()
        }
    });
    let durabilities = match args.durability {
        DurabilityArg::Sync => vec![Durability::Sync],
        DurabilityArg::Buffered => vec![Durability::Buffered],
        DurabilityArg::Both => vec![Durability::Sync, Durability::Buffered],
    };
    let bin = args.gatehouse_bin.clone().unwrap_or_else(gateway::default_bin);
    if !bin.is_file() {
        bail!(
            "gatehouse binary not found at {} (build it with `cargo build --workspace --release`, or pass --gatehouse-bin)",
            bin.display()
        );
    }
    let policies = args
        .policies
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"));

    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base)?;
    let mut tmp = tempfile::Builder::new()
        .prefix("gatehouse-loadbench-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a temporary directory in {}", base.display()))?;
    if args.keep {
        tmp.disable_cleanup(true);
        eprintln!("keeping {}", tmp.path().display());
    }

    eprintln!("starting a throwaway PostgreSQL in {} ...", tmp.path().display());
    let mut setup = demo::setup(&SetupOptions {
        dir: tmp.path(),
        policies: &policies,
        listen: "127.0.0.1:0",
        extra: "",
        durability: "sync",
        plugins: args.plugins.as_deref(),
    })?;
    if args.keep {
        setup.cluster.keep();
    }
    let pgbench_bin = setup.cluster.bindir.join("pgbench");
    let pgbench_version = std::process::Command::new(&pgbench_bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let sslmode = args.sslmode.as_str().to_string();
    let direct = Conn {
        host: "127.0.0.1".into(),
        port: setup.cluster.port,
        user: "postgres".into(),
        password: setup.cluster.password.clone(),
        dbname: "app".into(),
        sslmode: sslmode.clone(),
    };

    eprintln!("pgbench -i -s {} ...", args.scale);
    let out = direct
        .command(&pgbench_bin)
        .args(["-i", "-q", "-s", &args.scale.to_string()])
        .output()
        .context("running pgbench -i")?;
    if !out.status.success() {
        bail!(
            "pgbench -i failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Gatehouse reaches the database as the target's role; give it the tables.
    setup.cluster.psql(
        "app",
        "ALTER TABLE pgbench_accounts OWNER TO gatehouse_app; \
         ALTER TABLE pgbench_branches OWNER TO gatehouse_app; \
         ALTER TABLE pgbench_tellers OWNER TO gatehouse_app; \
         ALTER TABLE pgbench_history OWNER TO gatehouse_app",
    )?;
    check_interrupted()?;

    let key = identity_key(&setup, &identity)?;
    let base_config = std::fs::read_to_string(&setup.config_path)?;
    let mut gateways: Vec<(Durability, Gateway, Conn)> = Vec::new();
    for d in &durabilities {
        let log_dir = tmp.path().join(format!("log-{}", d.as_str()));
        let text = config_variant(
            &base_config,
            &setup.log_dir,
            &log_dir,
            *d,
            args.gateway_threads,
            args.record_literals.as_deref(),
        )?;
        let path = setup
            .config_path
            .with_file_name(format!("gatehouse-{}.toml", d.as_str()));
        std::fs::write(&path, text)?;
        let gw = Gateway::spawn(&bin, &path, &args.gateway_log)
            .with_context(|| format!("starting the {} gateway", d.as_str()))?;
        eprintln!("gateway ({}) on {} (pid {})", d.as_str(), gw.addr, gw.pid());
        let conn = Conn {
            host: "127.0.0.1".into(),
            port: gw.addr.port(),
            user: identity.clone(),
            password: key.clone(),
            dbname: args.target.clone(),
            sslmode: sslmode.clone(),
        };
        gateways.push((*d, gw, conn));
    }

    let txlogs = tmp.path().join("txlogs");
    std::fs::create_dir_all(&txlogs)?;
    let mut paths = vec![Route::Direct];
    paths.extend(durabilities.iter().map(|d| Route::Through(*d)));
    let mut run_id = 0u64;

    let mut bench = |path: Route,
                     mode: QueryMode,
                     seconds: u32,
                     sampling_rate: f64|
     -> Result<(Report, Option<f64>, Option<f64>)> {
        run_id += 1;
        let (conn, gw) = match path {
            Route::Direct => (&direct, None),
            Route::Through(d) => {
                let (_, gw, conn) = gateways
                    .iter_mut()
                    .find(|(x, _, _)| *x == d)
                    .context("no gateway for this durability")?;
                (&*conn, Some(gw))
            }
        };
        let spec = RunSpec {
            pgbench: &pgbench_bin,
            conn,
            builtin: &args.builtin,
            mode,
            clients: args.clients,
            jobs,
            seconds,
            sampling_rate,
            log_dir: &txlogs,
            run_id,
        };
        let cpu0 = gw.as_ref().and_then(|g| g.cpu_seconds());
        let host0 = HostCpu::now();
        let report = pgbench::run(&spec, &INTERRUPTED)
            .with_context(|| format!("pgbench -M {mode} {}", path.label()))?;
        let host1 = HostCpu::now();
        let mut gw_cpu = None;
        if let Some(g) = gw {
            gw_cpu = cpu0.zip(g.cpu_seconds()).map(|(a, b)| b - a);
            if !g.is_alive() {
                bail!("the gateway exited during the run");
            }
        }
        let busy = host0.zip(host1).and_then(|(a, b)| b.busy_since(&a));
        Ok((report, gw_cpu, busy))
    };

    if args.warmup_seconds > 0 {
        for path in &paths {
            for mode in &args.modes {
                eprintln!("warm-up {:<9} {}", mode.as_str(), path.label());
                bench(*path, *mode, args.warmup_seconds, 0.0)?;
            }
        }
    }

    let mut runs: Vec<RunRecord> = Vec::new();
    let total = args.rounds as usize * args.modes.len() * paths.len();
    for round in 0..args.rounds {
        for mode in &args.modes {
            let mut order = paths.clone();
            let len = order.len();
            order.rotate_left(round as usize % len);
            for path in order {
                check_interrupted()?;
                let (report, gateway_cpu_s, host_busy) =
                    bench(path, *mode, args.seconds, args.sampling_rate)?;
                eprintln!(
                    "[{:>3}/{total}] round {} {:<9} {:<17} {:>9.0} tps  {:>7.3} ms avg{}",
                    runs.len() + 1,
                    round + 1,
                    mode.as_str(),
                    path.label(),
                    report.tps,
                    report.latency_avg_ms,
                    host_busy.map_or(String::new(), |b| format!("  host busy {:>3.0}%", b * 100.0)),
                );
                runs.push(RunRecord {
                    round: round + 1,
                    mode: *mode,
                    path: path.label(),
                    report,
                    gateway_cpu_s,
                    host_busy,
                });
            }
        }
    }

    let mut results = Vec::new();
    for mode in &args.modes {
        for d in &durabilities {
            results.push(summarize(&runs, *mode, *d));
        }
    }
    let summary = Summary {
        tool: "gatehouse-loadbench",
        settings: Settings {
            builtin: args.builtin.clone(),
            scale: args.scale,
            clients: args.clients,
            jobs,
            seconds: args.seconds,
            rounds: args.rounds,
            warmup_seconds: args.warmup_seconds,
            sslmode: args.sslmode.as_str(),
            identity,
            target: args.target.clone(),
            sampling_rate: args.sampling_rate,
            gateway_threads: args.gateway_threads,
            plugins: args.plugins.as_ref().map(|p| p.display().to_string()),
            host_cpus,
            pgbench: pgbench_version,
            gatehouse_bin: bin.display().to_string(),
        },
        results,
        runs,
    };

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", table(&summary))?;
    let json = serde_json::to_string_pretty(&summary)?;
    writeln!(stdout, "{json}")?;
    if let Some(p) = &args.json {
        std::fs::write(p, format!("{json}\n")).with_context(|| format!("writing {}", p.display()))?;
    }

    for (_, mut gw, _) in gateways {
        let _ = gw.stop();
    }
    Ok(())
}

fn identity_key(setup: &DemoSetup, identity: &str) -> Result<String> {
    Ok(match identity {
        "ai-agent" => setup.agent_key.clone(),
        "alice" => setup.human_key.clone(),
        "bob" => setup.user_key.clone(),
        other => bail!("unknown identity `{other}`"),
    })
}

/// The demo config with another recorder durability and event-log directory, and optionally
/// `[gateway] threads` and `[recorder.literals] mode`.
fn config_variant(
    base: &str,
    old_log: &Path,
    new_log: &Path,
    durability: Durability,
    threads: Option<usize>,
    literals: Option<&str>,
) -> Result<String> {
    let replace_once = |text: &str, from: &str, to: &str| -> Result<String> {
        match text.matches(from).count() {
            1 => Ok(text.replacen(from, to, 1)),
            n => bail!("expected `{from}` once in the demo config, found it {n} times"),
        }
    };
    let mut text = replace_once(
        base,
        &format!("dir = \"{}\"", old_log.display()),
        &format!("dir = \"{}\"", new_log.display()),
    )?;
    text = replace_once(
        &text,
        "durability = \"sync\"",
        &format!("durability = \"{}\"", durability.as_str()),
    )?;
    if let Some(n) = threads {
        text = replace_once(&text, "[gateway]\n", &format!("[gateway]\nthreads = {n}\n"))?;
    }
    if let Some(mode) = literals {
        if text.contains("[recorder.literals]") {
            bail!("the demo config sets [recorder.literals] already");
        }
        text.push_str(&format!("\n[recorder.literals]\nmode = \"{mode}\"\n"));
    }
    Ok(text)
}

fn summarize(runs: &[RunRecord], mode: QueryMode, d: Durability) -> ModeResult {
    let through_label = Route::Through(d).label();
    let of = |label: &str| -> Vec<&RunRecord> {
        runs.iter()
            .filter(|r| r.mode == mode && r.path == label)
            .collect()
    };
    let direct = of("direct");
    let through = of(&through_label);
    let mut ratios = Vec::new();
    let mut added = Vec::new();
    for t in &through {
        if let Some(dr) = direct.iter().find(|x| x.round == t.round)
            && dr.report.tps > 0.0
        {
            ratios.push(t.report.tps / dr.report.tps);
            added.push(t.report.latency_avg_ms - dr.report.latency_avg_ms);
        }
    }
    let med = |rs: &[&RunRecord], f: &dyn Fn(&RunRecord) -> Option<f64>| -> Option<f64> {
        let v: Vec<f64> = rs.iter().filter_map(|r| f(r)).collect();
        median(&v)
    };
    let mm = min_max(&ratios);
    ModeResult {
        mode,
        durability: d,
        rounds: ratios.len(),
        direct_tps: med(&direct, &|r| Some(r.report.tps)),
        through_tps: med(&through, &|r| Some(r.report.tps)),
        ratio: median(&ratios),
        ratio_min: mm.map(|m| m.0),
        ratio_max: mm.map(|m| m.1),
        ratios,
        direct_latency_avg_ms: med(&direct, &|r| Some(r.report.latency_avg_ms)),
        through_latency_avg_ms: med(&through, &|r| Some(r.report.latency_avg_ms)),
        added_latency_ms: median(&added),
        direct_p50_ms: med(&direct, &|r| r.report.latency_ms.map(|p| p.p50)),
        through_p50_ms: med(&through, &|r| r.report.latency_ms.map(|p| p.p50)),
        direct_p99_ms: med(&direct, &|r| r.report.latency_ms.map(|p| p.p99)),
        through_p99_ms: med(&through, &|r| r.report.latency_ms.map(|p| p.p99)),
        gateway_cpu_us_per_txn: med(&through, &|r| {
            let cpu = r.gateway_cpu_s?;
            (r.report.processed > 0).then(|| cpu * 1e6 / r.report.processed as f64)
        }),
        host_busy_direct: med(&direct, &|r| r.host_busy),
        host_busy_through: med(&through, &|r| r.host_busy),
    }
}

fn table(s: &Summary) -> String {
    let f = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |x| format!("{x:.prec$}"));
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{:.0}%", x * 100.0));
    let st = &s.settings;
    let mut out = format!(
        "\npgbench -b {} -c {} -j {} -T {} x {} rounds, scale {}, sslmode={}, as `{}` on `{}`{} ({} CPUs)\n\n",
        st.builtin,
        st.clients,
        st.jobs,
        st.seconds,
        st.rounds,
        st.scale,
        st.sslmode,
        st.identity,
        st.target,
        if st.plugins.is_some() { " with plugins" } else { "" },
        st.host_cpus
    );
    out.push_str(&format!(
        "{:<9} {:<9} {:>10} {:>10} {:>6} {:>13} {:>15} {:>8} {:>15} {:>15} {:>9} {:>11}\n",
        "mode",
        "durab.",
        "direct tps",
        "thru tps",
        "ratio",
        "ratio min-max",
        "avg ms d / t",
        "+ms",
        "p50 ms d / t",
        "p99 ms d / t",
        "gw us/tx",
        "busy d / t"
    ));
    for r in &s.results {
        out.push_str(&format!(
            "{:<9} {:<9} {:>10} {:>10} {:>6} {:>13} {:>15} {:>8} {:>15} {:>15} {:>9} {:>11}\n",
            r.mode.as_str(),
            r.durability.as_str(),
            f(r.direct_tps, 0),
            f(r.through_tps, 0),
            f(r.ratio, 3),
            format!("{}-{}", f(r.ratio_min, 3), f(r.ratio_max, 3)),
            format!(
                "{} / {}",
                f(r.direct_latency_avg_ms, 3),
                f(r.through_latency_avg_ms, 3)
            ),
            f(r.added_latency_ms, 3),
            format!("{} / {}", f(r.direct_p50_ms, 3), f(r.through_p50_ms, 3)),
            format!("{} / {}", f(r.direct_p99_ms, 3), f(r.through_p99_ms, 3)),
            f(r.gateway_cpu_us_per_txn, 1),
            format!("{} / {}", pct(r.host_busy_direct), pct(r.host_busy_through)),
        ));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn config_variant_replaces_exactly() {
        let base =
            "[gateway]\nshutdown_grace_secs = 2\n\n[recorder]\ndir = \"/t/log\"\ndurability = \"sync\"\n";
        let v = config_variant(
            base,
            Path::new("/t/log"),
            Path::new("/t/log-buffered"),
            Durability::Buffered,
            Some(2),
            Some("keep"),
        )
        .unwrap();
        assert!(v.contains("dir = \"/t/log-buffered\""));
        assert!(v.contains("durability = \"buffered\""));
        assert!(v.contains("[gateway]\nthreads = 2\n"));
        assert!(v.ends_with("[recorder.literals]\nmode = \"keep\"\n"));
        let parsed: toml::Table = toml::from_str(&v).unwrap();
        assert_eq!(parsed["recorder"]["literals"]["mode"].as_str(), Some("keep"));
        assert!(
            config_variant(
                base,
                Path::new("/x"),
                Path::new("/y"),
                Durability::Sync,
                None,
                None
            )
            .is_err()
        );
        let set = format!("{base}\n[recorder.literals]\nmode = \"hash\"\n");
        assert!(
            config_variant(
                &set,
                Path::new("/t/log"),
                Path::new("/y"),
                Durability::Sync,
                None,
                Some("keep")
            )
            .is_err()
        );
    }

    fn rec(round: u32, path: &str, tps: f64, lat: f64) -> RunRecord {
        RunRecord {
            round,
            mode: QueryMode::Simple,
            path: path.to_string(),
            report: Report {
                tps,
                latency_avg_ms: lat,
                processed: (tps * 10.0) as u64,
                failed: 0,
                latency_ms: None,
            },
            gateway_cpu_s: path.starts_with("through").then_some(1.0),
            host_busy: Some(0.9),
        }
    }

    #[test]
    fn summary_pairs_rounds() {
        let runs = vec![
            rec(1, "direct", 1000.0, 1.0),
            rec(1, "through-sync", 500.0, 2.0),
            rec(2, "through-sync", 900.0, 1.2),
            rec(2, "direct", 1000.0, 1.0),
            rec(3, "direct", 2000.0, 0.5),
            rec(3, "through-sync", 1200.0, 0.8),
        ];
        let r = summarize(&runs, QueryMode::Simple, Durability::Sync);
        assert_eq!(r.rounds, 3);
        assert_eq!(r.ratios, vec![0.5, 0.9, 0.6]);
        assert_eq!(r.ratio, Some(0.6));
        assert_eq!(r.ratio_min, Some(0.5));
        assert_eq!(r.direct_tps, Some(1000.0));
        assert!((r.added_latency_ms.unwrap() - 0.3).abs() < 1e-9);
        let none = summarize(&runs, QueryMode::Simple, Durability::Buffered);
        assert_eq!(none.rounds, 0);
        assert_eq!(none.ratio, None);
        assert!(
            !table(&Summary {
                tool: "t",
                settings: Settings {
                    builtin: "select-only".into(),
                    scale: 1,
                    clients: 1,
                    jobs: 1,
                    seconds: 1,
                    rounds: 1,
                    warmup_seconds: 0,
                    sslmode: "require",
                    identity: "bob".into(),
                    target: "app".into(),
                    sampling_rate: 0.0,
                    gateway_threads: None,
                    plugins: None,
                    host_cpus: 2,
                    pgbench: String::new(),
                    gatehouse_bin: String::new(),
                },
                results: vec![r],
                runs: Vec::new(),
            })
            .is_empty()
        );
    }
}
