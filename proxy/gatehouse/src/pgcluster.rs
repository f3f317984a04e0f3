//! A throwaway PostgreSQL cluster started from the installed server binaries, with SCRAM
//! authentication and TLS on. Used by `gatehouse demo` and by the test harness.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A running cluster. Stopped (fast) and deleted on drop.
pub struct TempCluster {
    pub dir: PathBuf,
    pub data: PathBuf,
    pub bindir: PathBuf,
    pub port: u16,
    /// Superuser `postgres` password.
    pub password: String,
    /// CA certificate (PEM) that signed the server certificate (CN/SAN `localhost`, `127.0.0.1`).
    pub ca_file: PathBuf,
    run_as: Option<(u32, u32)>,
    keep: bool,
}

/// Where the PostgreSQL server binaries are: `$GATEHOUSE_PG_BINDIR`, `pg_config --bindir`, or
/// the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bindir() -> Result<PathBuf> {
    if let Ok(d) = std::env::var("GATEHOUSE_PG_BINDIR") {
        return Ok(PathBuf::from(d));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.join("initdb").exists() {
            return Ok(p);
        }
    }
    bail!("PostgreSQL server binaries not found: install postgresql (Debian) or set GATEHOUSE_PG_BINDIR")
}

/// Uid/gid of the `postgres` account, used when running as root (initdb refuses root).
fn postgres_account() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&"postgres")).then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
    })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Self-signed CA plus a server certificate for `localhost`/`127.0.0.1`, written as PEM files.
pub fn write_test_pki(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Gatehouse test CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse()?));
    params.distinguished_name.push(DnType::CommonName, "localhost");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer)?;
    let ca_file = dir.join("ca.crt");
    let cert_file = dir.join("server.crt");
    let key_file = dir.join("server.key");
    std::fs::write(&ca_file, ca.pem())?;
    std::fs::write(&cert_file, cert.pem())?;
    std::fs::write(&key_file, key.serialize_pem())?;
    set_mode(&key_file, 0o600)?;
    Ok((ca_file, cert_file, key_file))
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn chown_tree(p: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(p, Some(uid), Some(gid))?;
    if p.is_dir() {
        for e in std::fs::read_dir(p)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

impl TempCluster {
    /// initdb + start on a free loopback port. `base` is created if missing.
    pub fn start(base: &Path) -> Result<TempCluster> {
        let bindir = find_bindir()?;
        std::fs::create_dir_all(base)?;
        let run_as = if is_root() {
            Some(postgres_account().context("running as root needs a `postgres` account to run the server")?)
        } else {
            None
        };
        let data = base.join("data");
        let password = format!("pg-{}", hex_token());
        let pwfile = base.join("pwfile");
        std::fs::write(&pwfile, &password)?;
        let (ca_file, cert, key) = write_test_pki(base)?;
        if let Some((uid, gid)) = run_as {
            set_mode(base, 0o755)?;
            chown_tree(base, uid, gid)?;
        }
        let mut c = TempCluster {
            dir: base.to_path_buf(),
            data: data.clone(),
            bindir,
            port: 0,
            password,
            ca_file,
            run_as,
            keep: false,
        };
        c.run(
            "initdb",
            &[
                "-D",
                path_str(&data)?,
                "-U",
                "postgres",
                "-A",
                "scram-sha-256",
                "--pwfile",
                path_str(&pwfile)?,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        let hba = "local all all scram-sha-256\n\
                   hostssl all all 127.0.0.1/32 scram-sha-256\n\
                   host all all 127.0.0.1/32 scram-sha-256\n";
        std::fs::write(data.join("pg_hba.conf"), hba)?;
        let mut last_err = None;
        for _ in 0..5 {
            c.port = free_port()?;
            let conf = format!(
                "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
                 ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n\
                 fsync = off\nmax_connections = 200\nshared_buffers = 64MB\n\
                 password_encryption = 'scram-sha-256'\nlog_min_messages = warning\n",
                c.port,
                path_str(&c.dir)?,
                path_str(&cert)?,
                path_str(&key)?,
            );
            std::fs::write(data.join("postgresql.auto.conf"), conf)?;
            if let Some((uid, gid)) = run_as {
                chown_tree(&data, uid, gid)?;
            }
            let log = c.dir.join("server.log");
            match c.run(
                "pg_ctl",
                &[
                    "-D",
                    path_str(&data)?,
                    "-l",
                    path_str(&log)?,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            ) {
                Ok(()) => {
                    last_err = None;
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        if let Some(e) = last_err {
            let log = std::fs::read_to_string(c.dir.join("server.log")).unwrap_or_default();
            bail!("postgres did not start: {e}\n{log}");
        }
        c.wait_ready()?;
        Ok(c)
    }

    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(tool));
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        cmd.env("PGPASSWORD", &self.password).env("LC_ALL", "C");
        cmd
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<()> {
        let out = self
            .command(tool)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {tool}"))?;
        if !out.status.success() {
            bail!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.psql("postgres", "SELECT 1").is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("postgres did not accept connections")
    }

    /// Run SQL as the superuser over the Unix socket; returns stdout (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let out = self
            .command("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Direct TCP connection string (TLS required) for the superuser.
    pub fn direct_dsn(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db} sslmode=require",
            self.port
        )
    }

    /// Keep the data directory on drop (for debugging).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    pub fn stop(&mut self) {
        if let Ok(d) = path_str(&self.data) {
            let _ = self.run("pg_ctl", &["-D", d, "-m", "fast", "-w", "stop"]);
        }
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        self.stop();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

/// 16 random hex characters.
pub fn hex_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 8];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}
