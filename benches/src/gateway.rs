//! The real `gatehouse` binary as a child process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Result;

/// The `gatehouse` binary next to the running executable (`target/release/loadbench` →
/// `target/release/gatehouse`; from `deps/` one level up).
pub fn default_bin() -> PathBuf {
    let mut p = std::env::current_exe().unwrap_or_default();
    p.pop();
    if p.ends_with("deps") {
        p.pop();
    }
    p.join("gatehouse")
}

/// A running `gatehouse serve`. Stopped (SIGTERM, then SIGKILL) on drop.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
}

impl Gateway {
    /// Start `BIN serve --config CONFIG` and wait until it is ready.
    pub fn spawn(bin: &Path, config: &Path, log_filter: &str) -> Result<Gateway> {
        let (child, addrs) = gatehouse_conformance::spawn_gateway_bin(bin, config, log_filter)?;
        Ok(Gateway {
            child,
            addr: addrs.pg,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds the gateway has used so far (all threads).
    pub fn cpu_seconds(&self) -> Option<f64> {
        crate::procstat::process_cpu_seconds(self.pid())
    }

    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.child.try_wait()? {
            return Ok(s);
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for _ in 0..100 {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.child.kill()?;
        Ok(self.child.wait()?)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
