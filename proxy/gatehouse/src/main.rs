//! The `gatehouse` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use gatehouse::app::Gateway;
use gatehouse::demo;
use gatehouse_core::config::Config;

/// mimalloc instead of the C library's allocator for Rust's allocations (RocksDB's C++
/// keeps glibc's): the recorder's writer, its indexer and the sessions' tasks allocate and
/// free on different threads at a high rate, where glibc's malloc and free (with
/// `malloc_consolidate` on large frees) took about a tenth of the CPU under recording
/// load. With mimalloc the CPU per recorded event fell by about 10% (criterion
/// `recorder_sync`; the benches use it too, so they measure what the gateway runs).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "gatehouse", version, about = "Identity-aware Layer 7 access gateway")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file (and the policies it names) without serving.
    CheckConfig { config: PathBuf },
    /// Start a throwaway PostgreSQL with demo data and a gateway in front of it.
    Demo {
        /// Working directory (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Listen address of the gateway.
        #[arg(long, default_value = "127.0.0.1:6432")]
        listen: String,
        /// Policy directory.
        #[arg(long, default_value = "policies")]
        policies: PathBuf,
        /// Directory with the built plugins (`deploy/build-plugins.sh` makes them): target
        /// `app` then masks PII and guards statements with `pii-mask` and `sql-guard`.
        #[arg(long)]
        plugins: Option<PathBuf>,
    },
    /// Read the audit log.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Manage identities.
    Identity {
        #[command(subcommand)]
        cmd: IdentityCmd,
    },
    /// Work with policy sets.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Work with WebAssembly plugins.
    Plugin {
        #[command(subcommand)]
        cmd: PluginCmd,
    },
    /// Sign in at your OpenID Provider (OAuth device authorization: open the printed link on
    /// any device, confirm the code) and print shell commands that set PGUSER, PGPASSWORD
    /// (the token), PGSSLMODE and GATEHOUSE_TOKEN: `eval "$(gatehouse login --issuer …)"`.
    Login(LoginArgs),
    /// Just-in-time access: ask for a time-limited grant to a target (approved by `[access]
    /// approvers with `gatehouse approvals approve ID`), and list your active grants. Same
    /// credentials as `gatehouse approvals`.
    Access {
        /// Admin API address (default: GATEHOUSE_ADMIN_URL).
        #[arg(long, global = true)]
        url: Option<String>,
        /// Your identity (default: GATEHOUSE_USER).
        #[arg(long, global = true)]
        user: Option<String>,
        #[command(subcommand)]
        cmd: AccessCmd,
    },
    /// Approval requests of held statements, through the admin API. The caller's token is read
    /// from GATEHOUSE_TOKEN (`gatehouse login`), or an access key from GATEHOUSE_KEY.
    Approvals {
        /// Admin API address, e.g. `http://127.0.0.1:9465` (default: GATEHOUSE_ADMIN_URL).
        #[arg(long, global = true)]
        url: Option<String>,
        /// Your identity (default: GATEHOUSE_USER).
        #[arg(long, global = true)]
        user: Option<String>,
        #[command(subcommand)]
        cmd: ApprovalsCmd,
    },
}

#[derive(Subcommand)]
enum AccessCmd {
    /// Ask for access; prints the request id approvers act on.
    Request {
        #[arg(long)]
        target: String,
        /// How long the grant lasts once approved: `30m`, `2h`, `1h30m`, seconds.
        #[arg(long)]
        duration: String,
        /// Why (a ticket, an incident); approvers see it and the audit log keeps it.
        #[arg(long)]
        reason: String,
        /// Wait until the request is decided; exit 0 once granted, 1 if not.
        #[arg(long)]
        wait: bool,
    },
    /// Your active grants (admins and auditors: everyone's).
    Grants {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ApprovalsCmd {
    /// List the requests you may see, newest first.
    List {
        /// `pending`, `approved`, `denied`, `timed_out`, `withdrawn` or `all`.
        #[arg(long, default_value = "pending")]
        state: String,
        /// Print JSON instead of one line per request.
        #[arg(long)]
        json: bool,
    },
    /// Show one request in full: who asked, what exactly, why, and the votes so far.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Approve a request: the held statement runs once enough approvers agreed.
    Approve {
        id: String,
        #[arg(long, short, default_value = "")]
        comment: String,
    },
    /// Deny a request: the held statement fails with the denial and your comment.
    Deny {
        id: String,
        #[arg(long, short, default_value = "")]
        comment: String,
    },
}

#[derive(Subcommand)]
enum PluginCmd {
    /// Validate a plugin (compiles, matches the gatehouse:plugin WIT world, describes itself)
    /// and print its name, version, content hash and hooks.
    Check {
        file: PathBuf,
        /// The plugin's configuration as JSON (what `[plugin.config]` would give it).
        #[arg(long, default_value = "{}")]
        config: String,
    },
    /// Try a plugin on samples and print what it did (JSON): its `on-rows` on sample rows
    /// (the masked rows and findings; the fixture is `{"columns": ["name", ...], "rows":
    /// [["a", null, ...], ...]}`), or its `on-statement` / `on-command` verdict on each
    /// `--statement SQL` (classified as the gateway would) / `--command LINE` (an SSH exec).
    /// Exits 1 when the plugin faulted.
    #[command(group(clap::ArgGroup::new("sample").required(true).multiple(true).args(["rows", "statement", "command"])))]
    Test {
        file: PathBuf,
        #[arg(long, conflicts_with_all = ["statement", "command"])]
        rows: Option<PathBuf>,
        #[arg(long)]
        statement: Vec<String>,
        #[arg(long)]
        command: Vec<String>,
        /// The plugin's configuration as JSON.
        #[arg(long, default_value = "{}")]
        config: String,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// List recorded sessions, newest first.
    Sessions {
        #[arg(long)]
        log: PathBuf,
    },
    /// Print one session as a transcript.
    Show {
        session: String,
        #[arg(long)]
        log: PathBuf,
    },
    /// Find events by principal, target, kind, decision, policy id and statement text in a
    /// time window, newest first, from the log's search indexes (no full scan; events the
    /// indexer has not reached yet, normally milliseconds' worth, are read one by one).
    Search {
        #[arg(long)]
        log: PathBuf,
        /// One session's events (its id, as `audit sessions` lists it).
        #[arg(long)]
        session: Option<String>,
        /// `user:alice`, `agent:etl`.
        #[arg(long)]
        principal: Option<String>,
        #[arg(long)]
        target: Option<String>,
        /// Event kind: session_start, auth_failure, decision, approval_vote, op_result,
        /// session_end, notice, masking.
        #[arg(long)]
        kind: Option<String>,
        /// Decisions with this outcome.
        #[arg(long, value_parser = ["allow", "deny", "hold"])]
        decision: Option<String>,
        /// Decisions citing this policy id.
        #[arg(long)]
        policy: Option<String>,
        /// Statements containing this text (case-insensitive).
        #[arg(long)]
        text: Option<String>,
        #[command(flatten)]
        window: Window,
        /// Most events to print.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One event per line as stored (JSON).
        #[arg(long)]
        json: bool,
    },
    /// List failed connection attempts (bad credentials, unknown targets, TLS or protocol errors).
    Failures {
        #[arg(long)]
        log: PathBuf,
    },
    /// Verify a log or an exported bundle offline: every event's hash and link, and the signed
    /// checkpoints against the given public key(s).
    ///
    /// Exit codes: 0 intact (every event linked and covered by a verified checkpoint; events
    /// after the last checkpoint, as a running gateway always has, are reported but tolerated
    /// while that checkpoint is fresh, see --tail-grace, and never under --strict, which
    /// auditors use on closed logs and bundles); 1 tampering found
    /// (altered, missing, reordered or duplicated events, a broken link, a truncated tail, a bad
    /// signature, a checkpoint naming another head, a bundle file that differs from its
    /// manifest); 3 incomplete (nothing wrong found, but something could not be checked: no key
    /// given, an unknown key id, an unsigned tail after a stale checkpoint or under --strict,
    /// an unsigned manifest, no events at all); 4 the input could not be read; 2 usage errors
    /// (including an unreadable key file).
    #[command(group(clap::ArgGroup::new("input").required(true).args(["log", "bundle", "shipped"])))]
    Verify {
        /// A log directory (it may be in use by a running gateway).
        #[arg(long)]
        log: Option<PathBuf>,
        /// A bundle directory written by `gatehouse audit export`.
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// What was shipped to the sink of this gateway config's `[recorder.shipping]`
        /// (credentials and encryption key are read as the gateway reads them). With
        /// `sink_expires = true` there, it is checked from the first segment it holds.
        #[arg(long, value_name = "CONFIG")]
        shipped: Option<PathBuf>,
        /// A public key (SPKI PEM) trusted to sign checkpoints; repeat for rotated keys.
        #[arg(long = "key")]
        keys: Vec<PathBuf>,
        /// Events after the last checkpoint make the result incomplete (exit 3).
        #[arg(long)]
        strict: bool,
        /// Without --strict, events after the last checkpoint are tolerated when that
        /// checkpoint was signed at most this many seconds ago (for a bundle: before its signed
        /// export time). Keep it above the gateway's `checkpoints.every_secs`.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        tail_grace: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a log from what was shipped, for windows local retention no longer holds (or a
    /// lost host): every segment is read and verified as `audit verify --shipped --strict`
    /// does, and only a shipped log that is intact and signed to its end by the given keys is
    /// written, byte for byte, with its checkpoints, session summaries and search indexes,
    /// into --out (created; must be empty if it exists). Every `--log` command then works on
    /// it (verify, search, sessions, show, replay, events, export, policy whatif). A sink with
    /// `sink_expires = true` is restored from the first segment it holds; `verify --log` then
    /// reports that start as unsigned (exit 3). Exit codes as `audit verify` (2 also for an
    /// output that is not a new or empty directory); nothing is written unless 0.
    Restore {
        /// The gateway config whose `[recorder.shipping]` names the sink (credentials and
        /// encryption key are read as the gateway reads them).
        #[arg(long, value_name = "CONFIG")]
        shipped: PathBuf,
        /// A public key (SPKI PEM) trusted to sign checkpoints; repeat for rotated keys.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// The new log directory.
        #[arg(long)]
        out: PathBuf,
        /// Print the verification report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Export a time window of the log as an evidence bundle: the events (extended to the next
    /// signed checkpoint), the checkpoints, session summaries and transcripts, and a manifest
    /// with every file's SHA-256, signed when --sign-key is given.
    Export {
        #[arg(long)]
        log: PathBuf,
        #[command(flatten)]
        window: Window,
        /// Output directory (created; must be empty if it exists).
        #[arg(long)]
        out: PathBuf,
        /// The checkpoint signing key (PKCS#8 PEM), to sign the manifest.
        #[arg(long)]
        sign_key: Option<PathBuf>,
    },
    /// Print the events of a time window, oldest first, one JSON object per line: as stored
    /// (`jsonl`: hash-chained, every kind) or in OCSF 1.3.0 (`ocsf`: authentication, datastore
    /// activity and access grants, for a SIEM; other kinds are left out).
    Events {
        #[arg(long)]
        log: PathBuf,
        #[command(flatten)]
        window: Window,
        #[arg(long, default_value = "jsonl", value_parser = ["jsonl", "ocsf"])]
        format: String,
    },
    /// Create an Ed25519 key pair for signing checkpoints: PREFIX.pem (private, mode 0600; give
    /// it to the gateway as `[recorder.checkpoints] key`) and PREFIX.pub.pem (for verifiers).
    Keygen {
        /// Path prefix of the two files.
        #[arg(long)]
        out: PathBuf,
    },
}

/// `gatehouse audit events`: the window's events as JSON lines, stored or OCSF.
fn audit_events(log: &std::path::Path, window: &Window, format: &str) -> Result<ExitCode> {
    use std::io::Write as _;
    let (from_us, to_us) = window.resolve()?;
    let r = gatehouse_recorder::LogReader::open(log)?;
    let ocsf = format == "ocsf";
    let mut sessions: std::collections::HashMap<String, Option<gatehouse_recorder::SessionSummary>> =
        std::collections::HashMap::new();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut next = 1u64;
    loop {
        let page = r.events(next, 1024)?;
        let Some(last) = page.last() else { break };
        next = last.seq + 1;
        for ev in page.iter().filter(|e| (from_us..=to_us).contains(&e.time_us)) {
            let line = if ocsf {
                if !sessions.contains_key(&ev.session_id) {
                    sessions.insert(ev.session_id.clone(), r.session(&ev.session_id)?);
                }
                let s = sessions.get(&ev.session_id).and_then(Option::as_ref);
                match gatehouse_recorder::ocsf::to_ocsf(ev, s) {
                    Some(v) => serde_json::to_string(&v)?,
                    None => continue,
                }
            } else {
                serde_json::to_string(ev)?
            };
            // A closed pipe (`| head`) ends the output quietly; any other write error fails.
            match writeln!(out, "{line}") {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
                Err(e) => return Err(e.into()),
            }
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// A time window of the log (`--from`, `--to`).
#[derive(clap::Args)]
struct Window {
    /// Start of the window: RFC 3339, a date, `now` or relative (`-24h`, `-7d`); default: the
    /// beginning of the log.
    #[arg(long, allow_hyphen_values = true)]
    from: Option<String>,
    /// End of the window (same forms); default: now.
    #[arg(long, allow_hyphen_values = true)]
    to: Option<String>,
}

impl Window {
    /// `(from_us, to_us)`, inclusive.
    fn resolve(&self) -> Result<(i64, i64)> {
        let parse = |t: &str| gatehouse_core::time::parse_instant(t).map_err(anyhow::Error::msg);
        let from_us = self.from.as_deref().map(parse).transpose()?.unwrap_or(i64::MIN);
        let to_us = match self.to.as_deref() {
            Some(t) => parse(t)?,
            None => gatehouse_core::time::now_micros(),
        };
        Ok((from_us, to_us))
    }
}

#[derive(Subcommand)]
enum IdentityCmd {
    /// Print a SCRAM-SHA-256 verifier for an access key (a new random key if none is given).
    HashKey {
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Load and strictly validate a policy directory.
    Check { dir: PathBuf },
    /// Re-decide every recorded connect and statement of a time window under a candidate policy
    /// set and print the decisions that would change (who, what, old -> new, policy ids).
    Whatif {
        /// The candidate policy directory (schema and `*.cedar`), validated first.
        #[arg(long)]
        policies: PathBuf,
        #[arg(long)]
        log: PathBuf,
        #[command(flatten)]
        window: Window,
        #[arg(long)]
        json: bool,
        /// Exit with 1 when any decision would change (for CI on a policy repository).
        #[arg(long)]
        fail_on_change: bool,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEHOUSE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,gatehouse=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    match run(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<ExitCode> {
    match cmd {
        Cmd::Serve { config } => {
            let cfg = Config::load(&config)?;
            let gw = Gateway::build(cfg)?;
            for l in &gw.listeners {
                // One machine-readable line per listener: tests and scripts read the real port.
                println!(
                    "{}",
                    serde_json::json!({"event": "listening", "listener": l.name, "addr": l.addr.to_string()})
                );
            }
            gw.run()?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::CheckConfig { config } => {
            let cfg = Config::load(&config)?;
            gatehouse_policy::PolicyEngine::load(&cfg.policy.dir)
                .with_context(|| format!("policies in `{}`", cfg.policy.dir.display()))?;
            gatehouse_identity::StaticKeys::from_config(&cfg.identities).map_err(anyhow::Error::msg)?;
            for t in &cfg.targets {
                if let Some(pg) = &t.postgres {
                    gatehouse_pg::upstream::PgTarget::new(t.name.get_ref(), pg)
                        .map_err(anyhow::Error::msg)?;
                }
            }
            if let Some(c) = &cfg.recorder.checkpoints {
                let pem = c
                    .key
                    .resolve()
                    .map_err(|e| anyhow::anyhow!("[recorder.checkpoints] key: {e}"))?;
                let signer = gatehouse_recorder::CheckpointSigner::from_pem(&pem)
                    .map_err(|e| anyhow::anyhow!("[recorder.checkpoints] key: {e}"))?;
                println!("checkpoints signed by {}", signer.key_id());
            }
            if let Some(s) = &cfg.recorder.shipping {
                if cfg.recorder.checkpoints.is_none() {
                    anyhow::bail!(
                        "[recorder.shipping] ships segments that end at signed checkpoints: configure [recorder.checkpoints] too"
                    );
                }
                let sink = gatehouse_recorder::Sink::from_config(s)?;
                println!(
                    "ships to {}{}",
                    sink.url(),
                    if s.encryption_key.is_some() {
                        " (encrypted)"
                    } else {
                        ""
                    }
                );
            }
            println!(
                "{}: ok ({} listeners, {} identities, {} targets)",
                config.display(),
                cfg.listeners.len(),
                cfg.identities.len(),
                cfg.targets.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo {
            dir,
            listen,
            policies,
            plugins,
        } => {
            let tmp;
            let dir = match dir {
                Some(d) => d,
                None => {
                    tmp = tempfile::Builder::new().prefix("gatehouse-demo-").tempdir()?;
                    tmp.path().to_path_buf()
                }
            };
            eprintln!("starting a throwaway PostgreSQL cluster in {} ...", dir.display());
            let setup = demo::setup(&demo::SetupOptions {
                dir: &dir,
                policies: &policies,
                listen: &listen,
                extra: "",
                durability: "sync",
                plugins: plugins.as_deref(),
            })?;
            let cfg = Config::load(&setup.config_path)?;
            let gw = Gateway::build(cfg)?;
            let addr = gw.listeners.first().map(|l| l.addr).context("no listener")?;
            let admin = gw.admin.as_ref().map(|a| a.addr);
            let exe = std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "gatehouse".into());
            println!("{}", demo::banner(&setup, addr, admin, &exe));
            gw.run()?;
            drop(setup);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Audit { cmd } => audit(cmd),
        Cmd::Identity {
            cmd: IdentityCmd::HashKey { key },
        } => {
            let key = key.unwrap_or_else(|| {
                format!(
                    "gh_{}{}",
                    gatehouse::pgcluster::hex_token(),
                    gatehouse::pgcluster::hex_token()
                )
            });
            println!("key:          {key}");
            println!(
                "key_verifier: {}",
                gatehouse_identity::scram::ScramVerifier::generate(&key)
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Plugin { cmd } => plugin(cmd),
        Cmd::Approvals { url, user, cmd } => approvals(url, user, cmd),
        Cmd::Access { url, user, cmd } => access(url, user, cmd),
        Cmd::Login(args) => login(args),
        Cmd::Policy {
            cmd: PolicyCmd::Check { dir },
        } => {
            let engine = gatehouse_policy::PolicyEngine::load(&dir)?;
            println!("{}: ok (generation {})", dir.display(), engine.generation());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Policy {
            cmd:
                PolicyCmd::Whatif {
                    policies,
                    log,
                    window,
                    json,
                    fail_on_change,
                },
        } => {
            let (from_us, to_us) = window.resolve()?;
            let engine = gatehouse_policy::PolicyEngine::load(&policies)?;
            let reader = gatehouse_recorder::LogReader::open(&log)?;
            let report = gatehouse::whatif::whatif(&reader, &engine, from_us, to_us)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!(
                    "{}",
                    gatehouse::whatif::render(&report, &policies.display().to_string(), from_us, to_us)
                );
            }
            Ok(if fail_on_change && !report.changes.is_empty() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

fn plugin(cmd: PluginCmd) -> Result<ExitCode> {
    use gatehouse_plugin_host as ph;
    let parse = |c: &str| -> Result<serde_json::Value> {
        serde_json::from_str(c).context("--config is not valid JSON")
    };
    match cmd {
        PluginCmd::Check { file, config } => match ph::check_with_config(&file, &parse(&config)?) {
            Ok(info) => {
                let hooks: Vec<&str> = info.hooks.iter().map(|h| h.as_str()).collect();
                println!(
                    "{}: ok\n  plugin  {} {}\n  sha256  {}\n  world   {}\n  hooks   {}",
                    file.display(),
                    info.name,
                    info.version,
                    info.hash,
                    ph::WIT_PACKAGE,
                    hooks.join(", ")
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{}: invalid plugin: {e}", file.display());
                Ok(ExitCode::from(1))
            }
        },
        PluginCmd::Test {
            file,
            rows: Some(rows),
            config,
            ..
        } => {
            let text =
                std::fs::read_to_string(&rows).with_context(|| format!("reading {}", rows.display()))?;
            let fixture = ph::RowsFixture::parse(&text)?;
            let report = ph::test_rows(&file, &parse(&config)?, &fixture)?;
            println!("{}", serde_json::to_string_pretty(&report.to_json())?);
            Ok(if report.fault.is_some() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        PluginCmd::Test {
            file,
            rows: None,
            statement,
            command,
            config,
        } => {
            let mut ops: Vec<ph::SampleOp> = Vec::new();
            for sql in &statement {
                for s in gatehouse_pg::classify::classify(sql) {
                    ops.push(ph::SampleOp::Statement(gatehouse::plugins::plugin_statement(&s)));
                }
            }
            ops.extend(command.into_iter().map(|line| {
                ph::SampleOp::Command(ph::Command {
                    kind: "exec".to_string(),
                    line,
                })
            }));
            let mut session = ph::tool_session();
            if ops.iter().any(|o| matches!(o, ph::SampleOp::Command(_))) {
                session.protocol = ph::Protocol::Ssh;
            }
            let (report, faulted) = ph::test_operations(&file, &parse(&config)?, ops, session)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(if faulted {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

fn approvals(url: Option<String>, user: Option<String>, cmd: ApprovalsCmd) -> Result<ExitCode> {
    use gatehouse::approvals_cli::{Client, render_list, render_one};
    let client = Client::from_env(url, user)?;
    match cmd {
        ApprovalsCmd::List { state, json } => {
            let requests = client.list(&state)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&requests)?);
            } else {
                print!("{}", render_list(&requests));
            }
        }
        ApprovalsCmd::Show { id, json } => {
            let r = client.show(&id)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", render_one(&r));
            }
        }
        ApprovalsCmd::Approve { id, comment } => {
            let r = client.vote(&id, true, &comment)?;
            println!(
                "{}: you approved; the request is {} ({} of {} approvals)",
                r.id,
                r.state.as_str(),
                r.approvals(),
                r.min_approvals
            );
        }
        ApprovalsCmd::Deny { id, comment } => {
            let r = client.vote(&id, false, &comment)?;
            println!("{}: you denied; the request is {}", r.id, r.state.as_str());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn access(url: Option<String>, user: Option<String>, cmd: AccessCmd) -> Result<ExitCode> {
    use gatehouse::approvals_cli::Client;
    use gatehouse_core::time::rfc3339_micros;
    let client = Client::from_env(url, user)?;
    match cmd {
        AccessCmd::Request {
            target,
            duration,
            reason,
            wait,
        } => {
            let secs = gatehouse_approval::access::parse_duration(&duration).map_err(anyhow::Error::msg)?;
            let r = client.request_access(&target, secs, &reason)?;
            println!(
                "{}: access to {target} for {duration} requested; approvers ({}) run: gatehouse approvals approve {}",
                r.id,
                r.approvers.join(", "),
                r.id
            );
            if !wait {
                return Ok(ExitCode::SUCCESS);
            }
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                let now = client.show(&r.id)?;
                if now.state == gatehouse_approval::State::Pending {
                    continue;
                }
                if now.state != gatehouse_approval::State::Approved {
                    println!("{}: {}", r.id, now.state.as_str());
                    return Ok(ExitCode::from(1));
                }
                // The grant appears once it is recorded and stored.
                for _ in 0..30 {
                    if let Some(g) = client.grants()?.into_iter().find(|g| g.id == r.id) {
                        println!("{}: granted until {}", r.id, rfc3339_micros(g.expires_us));
                        return Ok(ExitCode::SUCCESS);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                anyhow::bail!(
                    "{}: approved, but no grant appeared (see the gateway's log)",
                    r.id
                );
            }
        }
        AccessCmd::Grants { json } => {
            let grants = client.grants()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&grants)?);
            } else if grants.is_empty() {
                println!("no active grants");
            } else {
                for g in grants {
                    println!(
                        "{}  {} on {} until {}  ({}; approved by {})",
                        g.id,
                        g.principal,
                        g.target,
                        rfc3339_micros(g.expires_us),
                        g.reason,
                        g.approvers.join(", ")
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn audit(cmd: AuditCmd) -> Result<ExitCode> {
    use gatehouse_recorder::LogReader;
    match cmd {
        AuditCmd::Sessions { log } => {
            let r = LogReader::open(&log)?;
            for s in r.sessions()? {
                println!("{}", serde_json::to_string(&s)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Show { session, log } => {
            let r = LogReader::open(&log)?;
            let events = r.session_events(&session)?;
            if events.is_empty() {
                eprintln!("no session `{session}` in {}", log.display());
                return Ok(ExitCode::from(2));
            }
            print!("{}", gatehouse_recorder::render_transcript(&events));
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Search {
            log,
            session,
            principal,
            target,
            kind,
            decision,
            policy,
            text,
            window,
            limit,
            json,
        } => {
            let (from_us, to_us) = window.resolve()?;
            let r = LogReader::open(&log)?;
            let found = r.search(&gatehouse_recorder::SearchQuery {
                session,
                principal,
                target,
                kind,
                decision,
                policy,
                text,
                from_us,
                to_us,
                limit,
            })?;
            for ev in &found.events {
                if json {
                    println!("{}", serde_json::to_string(ev)?);
                } else {
                    println!("{}", search_line(ev));
                }
            }
            if found.truncated {
                eprintln!("(more than {limit} events match: narrow the search or raise --limit)");
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Failures { log } => {
            let r = LogReader::open(&log)?;
            for s in r.sessions()?.into_iter().filter(|s| s.auth_failed) {
                println!(
                    "{}  {}  user={:?} target={:?}  {}",
                    gatehouse_core::time::rfc3339_micros(s.start_us),
                    s.source,
                    s.user.unwrap_or_default(),
                    s.target,
                    s.end_reason.unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Verify {
            log,
            bundle,
            shipped,
            keys,
            strict,
            tail_grace,
            json,
        } => audit_verify(Input { log, bundle, shipped }, &keys, strict, tail_grace, json),
        AuditCmd::Events { log, window, format } => audit_events(&log, &window, &format),
        AuditCmd::Restore {
            shipped,
            keys,
            out,
            json,
        } => audit_restore(&shipped, &keys, &out, json),
        AuditCmd::Export {
            log,
            window,
            out,
            sign_key,
        } => {
            let (from_us, to_us) = window.resolve()?;
            let signer = sign_key
                .map(|p| -> Result<_> {
                    let pem =
                        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
                    gatehouse_recorder::CheckpointSigner::from_pem(&pem)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
                })
                .transpose()?;
            let r = LogReader::open(&log)?;
            let summary = gatehouse_recorder::export_bundle(
                &r,
                &gatehouse_recorder::ExportOptions {
                    from_us,
                    to_us,
                    out: &out,
                    signer: signer.as_ref(),
                },
            )?;
            println!("{}", serde_json::to_string(&summary)?);
            if summary.events == 0 {
                eprintln!("note: no event in the window");
            } else if summary.unsigned_events > 0 {
                eprintln!(
                    "note: the last {} events are not covered by a checkpoint yet; export again later for a fully signed bundle",
                    summary.unsigned_events
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Keygen { out } => {
            let (private, public, id) =
                gatehouse_recorder::CheckpointSigner::generate().map_err(anyhow::Error::msg)?;
            let priv_path = PathBuf::from(format!("{}.pem", out.display()));
            let pub_path = PathBuf::from(format!("{}.pub.pem", out.display()));
            write_new_file(&priv_path, private.as_bytes(), 0o600)?;
            write_new_file(&pub_path, public.as_bytes(), 0o644)?;
            println!(
                "key id {id}\nprivate key: {}\npublic key:  {}",
                priv_path.display(),
                pub_path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Create `path` (never overwriting) with `mode`.
fn write_new_file(path: &std::path::Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// One search hit for people: time, seq, session, principal, what.
fn search_line(ev: &gatehouse_recorder::Event) -> String {
    use gatehouse_recorder::EventBody;
    let what = match &ev.body {
        EventBody::Decision {
            action,
            statement,
            verdict,
            hold,
            ..
        } => {
            let outcome = if hold.is_some() {
                "HOLD"
            } else if verdict.is_allow() {
                "ALLOW"
            } else {
                "DENY"
            };
            let ids = verdict.policy_ids().join(",");
            match statement {
                Some(s) => format!(
                    "{action} {outcome} [{ids}] {}",
                    gatehouse_recorder::escape_controls(&s.text)
                ),
                None => format!("{action} {outcome} [{ids}]"),
            }
        }
        other => gatehouse_recorder::search::kind_name(other).to_string(),
    };
    format!(
        "{}  #{}  {}  {}  {what}",
        gatehouse_core::time::rfc3339_micros(ev.time_us),
        ev.seq,
        ev.session_id,
        ev.principal.as_deref().unwrap_or("-")
    )
}

/// What `audit verify` reads (exactly one is set).
struct Input {
    log: Option<PathBuf>,
    bundle: Option<PathBuf>,
    shipped: Option<PathBuf>,
}

fn audit_verify(
    input: Input,
    key_files: &[PathBuf],
    strict: bool,
    tail_grace: u64,
    json: bool,
) -> Result<ExitCode> {
    use gatehouse_recorder::{LogReader, TailPolicy};
    let keys = match load_public_keys(key_files) {
        Ok(k) => k,
        Err(code) => return Ok(code),
    };
    let (what, result) = match (&input.log, &input.bundle, &input.shipped) {
        (Some(dir), _, _) => (
            format!("log {}", dir.display()),
            LogReader::open(dir).and_then(|r| r.verify(&keys)),
        ),
        (None, Some(dir), _) => (
            format!("bundle {}", dir.display()),
            gatehouse_recorder::verify_bundle(dir, &keys),
        ),
        (None, None, Some(config)) => {
            let sink = match shipped_sink(config) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            (
                format!("shipped segments in {}", sink.url()),
                rt.block_on(gatehouse_recorder::verify_sink(&sink, &keys)),
            )
        }
        (None, None, None) => anyhow::bail!("give --log, --bundle or --shipped"),
    };
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot verify {what}: {e}");
            return Ok(ExitCode::from(4));
        }
    };
    let tail = if strict {
        TailPolicy::Strict
    } else if input.bundle.is_some() {
        // A bundle is judged as of its signed export time; unsigned, it has none to trust.
        match report.exported_us {
            Some(t) => TailPolicy::Live {
                now_us: t,
                grace_us: i64::try_from(tail_grace.saturating_mul(1_000_000)).unwrap_or(i64::MAX),
            },
            None => TailPolicy::Strict,
        }
    } else {
        TailPolicy::live(tail_grace)
    };
    let outcome = report.outcome(tail);
    let tail_tolerated = report
        .findings
        .iter()
        .any(|f| f.kind == gatehouse_recorder::FindingKind::UnsignedTail)
        && report.tail_tolerated(tail);
    print_verify_report(
        &what,
        &report,
        outcome,
        tail_tolerated.then_some(tail_grace),
        json,
    )?;
    Ok(ExitCode::from(outcome.exit_code()))
}

/// `--key` files as the public keys a verification trusts; `Err`: the exit code (2, said why).
fn load_public_keys(key_files: &[PathBuf]) -> Result<gatehouse_recorder::PublicKeys, ExitCode> {
    let mut keys = gatehouse_recorder::PublicKeys::default();
    for p in key_files {
        let pem = match std::fs::read_to_string(p) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("cannot read key {}: {e}", p.display());
                return Err(ExitCode::from(2));
            }
        };
        if let Err(e) = keys.add_pem(&pem) {
            eprintln!("{}: {e}", p.display());
            return Err(ExitCode::from(2));
        }
    }
    Ok(keys)
}

/// The sink of a gateway config's `[recorder.shipping]` (credentials and encryption key read
/// as the gateway reads them); `Err`: the exit code (2, said why).
fn shipped_sink(config: &Path) -> Result<gatehouse_recorder::Sink, ExitCode> {
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e:#}");
            return Err(ExitCode::from(2));
        }
    };
    let Some(s) = &cfg.recorder.shipping else {
        eprintln!("{} has no [recorder.shipping]", config.display());
        return Err(ExitCode::from(2));
    };
    gatehouse_recorder::Sink::from_config(s).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })
}

/// Print a verification report (`tolerated_grace`: the unsigned tail was tolerated within
/// this many seconds).
fn print_verify_report(
    what: &str,
    report: &gatehouse_recorder::VerifyReport,
    outcome: gatehouse_recorder::Outcome,
    tolerated_grace: Option<u64>,
    json: bool,
) -> Result<()> {
    use gatehouse_recorder::Outcome;
    if json {
        let v = serde_json::json!({
            "outcome": outcome,
            "unsigned_tail_tolerated": tolerated_grace.is_some(),
            "report": report,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let verdict = match outcome {
        Outcome::Intact => "INTACT",
        Outcome::Incomplete => "INCOMPLETE",
        Outcome::Tampered => "TAMPERED",
    };
    println!("{verdict}: {what}");
    println!(
        "  events {}..{} ({} checked), last hash {}",
        report.first_seq, report.last_seq, report.events_checked, report.last_hash
    );
    if let Some(floor) = report.floor {
        println!(
            "  starts after event {floor}: local retention deleted the events up to it after \
             shipping (verify the shipped copy with --shipped; `gatehouse audit restore` \
             rebuilds a log from it)"
        );
    }
    if let Some(first) = report.expired_before {
        println!(
            "  starts at event {first}: events 1 to {} had expired from the sink, which deletes \
             its oldest segments itself (sink_expires); nothing signed says where it starts, \
             and a deletion of its oldest segments looks the same",
            first - 1
        );
    }
    println!(
        "  checkpoints: {} verified of {}; signed through event {}; keys: {}",
        report.checkpoints_verified,
        report.checkpoints,
        report.last_signed_seq,
        if report.keys.is_empty() {
            "none given".to_string()
        } else {
            report.keys.join(", ")
        }
    );
    for f in &report.findings {
        let kind = serde_json::to_value(f.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        match f.seq {
            Some(seq) => println!("  {kind} (event {seq}): {}", f.message),
            None => println!("  {kind}: {}", f.message),
        }
    }
    if report.findings_omitted > 0 {
        println!(
            "  … and {} more findings ({} showing tampering in all)",
            report.findings_omitted, report.tampering_findings
        );
    }
    if let Some(grace) = tolerated_grace {
        println!(
            "  (the unsigned tail is tolerated: the last checkpoint was signed {}, within the \
             {grace}s grace; use --strict on a closed log)",
            gatehouse_core::time::rfc3339_micros(report.last_signed_time_us)
        );
    }
    Ok(())
}

/// `gatehouse audit restore`: the shipped log, verified as it is read, into a new log
/// directory. Exit codes as `audit verify --strict` gives for the sink; nothing is written
/// unless it is 0.
fn audit_restore(config: &Path, key_files: &[PathBuf], out: &Path, json: bool) -> Result<ExitCode> {
    // (clap requires at least one --key: without one nothing could be verified.)
    let keys = match load_public_keys(key_files) {
        Ok(k) => k,
        Err(code) => return Ok(code),
    };
    let sink = match shipped_sink(config) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let what = format!("shipped segments in {}", sink.url());
    let restored = match rt.block_on(gatehouse_recorder::restore_from_sink(&sink, &keys, out)) {
        Ok(r) => r,
        Err(e @ gatehouse_recorder::RecorderError::Invalid(_)) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
        Err(e) => {
            eprintln!("cannot restore {what} into {}: {e}", out.display());
            return Ok(ExitCode::from(4));
        }
    };
    print_verify_report(&what, &restored.report, restored.outcome, None, json)?;
    if restored.written {
        eprintln!(
            "restored events {} to {} into {} (indexed through {}); use it with --log",
            restored.report.expired_before.unwrap_or(1),
            restored.report.last_seq,
            out.display(),
            restored.indexed_seq
        );
    } else {
        eprintln!("nothing restored: the shipped log is not intact and signed to its end by the keys given");
    }
    Ok(ExitCode::from(restored.outcome.exit_code()))
}

#[derive(clap::Args)]
struct LoginArgs {
    /// The provider's issuer URL (default: GATEHOUSE_ISSUER).
    #[arg(long)]
    issuer: Option<String>,
    /// The OAuth client registered for this CLI (a public client with the device grant).
    #[arg(long, default_value = "gatehouse-cli")]
    client_id: String,
    /// The resource (RFC 8707) the gateway is configured with as `audience`: the access
    /// token for it is used. Without it, the ID token is used (audience: the client id).
    #[arg(long)]
    resource: Option<String>,
    #[arg(long, default_value = "openid")]
    scope: String,
    /// The claim the gateway names users by (its `username_claim`); becomes PGUSER.
    #[arg(long, default_value = "sub")]
    user_claim: String,
    /// CA bundle for the provider's TLS certificate.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// `env` (shell commands), `json`, or `token` (the token alone).
    #[arg(long, default_value = "env")]
    format: String,
    /// `device` (a code to confirm on any device), `code` (a browser on this machine, which
    /// comes back to a one-shot listener on 127.0.0.1; PKCE), or `auto`: device when the
    /// provider offers it.
    #[arg(long, default_value = "auto")]
    flow: String,
}

/// `gatehouse login`: the device or code flow, instructions on stderr, the result on stdout.
fn login(a: LoginArgs) -> Result<ExitCode> {
    use gatehouse_identity::login::DeviceLogin;
    let issuer = a
        .issuer
        .clone()
        .or_else(|| std::env::var("GATEHOUSE_ISSUER").ok())
        .context("no issuer: pass --issuer or set GATEHOUSE_ISSUER")?;
    if !matches!(a.format.as_str(), "env" | "json" | "token") {
        anyhow::bail!("--format: expected env, json or token");
    }
    if !matches!(a.flow.as_str(), "auto" | "device" | "code") {
        anyhow::bail!("--flow: expected auto, device or code");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let token = rt.block_on(async {
        let flow = DeviceLogin::discover(
            &issuer,
            &a.client_id,
            &a.scope,
            a.resource.as_deref(),
            a.ca_file.as_deref(),
        )
        .await
        .map_err(anyhow::Error::msg)?;
        if a.flow == "code" || (a.flow == "auto" && !flow.has_device_flow()) {
            let pending = flow.start_code().await.map_err(anyhow::Error::msg)?;
            eprintln!(
                "To sign in, open this link in a browser on this machine (it comes back to this command):\n{}",
                pending.url
            );
            return flow
                .finish_code(pending, std::time::Duration::from_secs(600))
                .await
                .map_err(anyhow::Error::msg);
        }
        let code = flow.start().await.map_err(anyhow::Error::msg)?;
        match &code.verification_uri_complete {
            Some(link) => eprintln!(
                "To sign in, open {link}\nand check that it shows the code {} (it expires in {}s).",
                code.user_code, code.expires_in
            ),
            None => eprintln!(
                "To sign in, open {} and enter the code {} (it expires in {}s).",
                code.verification_uri, code.user_code, code.expires_in
            ),
        }
        flow.wait(&code).await.map_err(anyhow::Error::msg)
    })?;
    let user = token.claim(&a.user_claim).map(str::to_string).with_context(|| {
        format!(
            "the {} has no `{}` claim (see --user-claim)",
            token.kind, a.user_claim
        )
    })?;
    let until = token
        .expires_at()
        .map(|e| gatehouse_core::time::rfc3339_micros(e.saturating_mul(1_000_000)))
        .unwrap_or_else(|| "an unknown time".into());
    eprintln!("Signed in as {user} ({} valid until {until}).", token.kind);
    match a.format.as_str() {
        "token" => println!("{}", token.token),
        "json" => println!(
            "{}",
            serde_json::json!({"user": user, "token": token.token, "kind": token.kind, "expires_at": token.expires_at()})
        ),
        _ => {
            // Single-quoted for the shell; tokens and names never contain a quote, but be safe.
            let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
            println!("export PGUSER={}", q(&user));
            println!("export PGPASSWORD={}", q(&token.token));
            println!("export PGSSLMODE=require");
            println!("export GATEHOUSE_TOKEN={}", q(&token.token));
        }
    }
    Ok(ExitCode::SUCCESS)
}
