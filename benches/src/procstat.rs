//! CPU accounting from `/proc`: a process's CPU time and the host's busy share, so that a
//! load-bench run can say where the CPU went (on a small machine the gateway competes with
//! PostgreSQL and pgbench for the same cores).

/// Linux reports `/proc/*/stat` times in `USER_HZ` ticks, 100 per second on every mainstream
/// architecture.
const TICKS_PER_SEC: f64 = 100.0;

/// User + system CPU seconds of process `pid` (all its threads), from `/proc/PID/stat`.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_process_cpu(&stat)
}

/// Parse `utime + stime` out of a `/proc/PID/stat` line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_process_cpu(stat: &str) -> Option<f64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SEC)
}

/// Host-wide CPU counters (all cores) from the first line of `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCpu {
    pub busy: u64,
    pub total: u64,
}

impl HostCpu {
    pub fn now() -> Option<HostCpu> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        parse_host_cpu(&stat)
    }

    /// Busy share (0..=1) of all cores between `earlier` and `self`.
    pub fn busy_since(&self, earlier: &HostCpu) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let busy = self.busy.checked_sub(earlier.busy)?;
        (total > 0).then(|| busy as f64 / total as f64)
    }
}

/// `cpu  user nice system idle iowait irq softirq steal guest guest_nice`: busy is everything
/// but idle and iowait (guest time is already counted in user).
pub fn parse_host_cpu(stat: &str) -> Option<HostCpu> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = v.iter().sum();
    let idle = v.get(3)? + v.get(4)?;
    Some(HostCpu {
        busy: total.checked_sub(idle)?,
        total,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn process_stat_with_odd_name() {
        let line = "4242 (gate house) (x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 150 0 0 20 0 9 0 \
                    100 1000 100 18446744073709551615";
        assert_eq!(parse_process_cpu(line), Some(4.0));
    }

    #[test]
    fn host_stat() {
        let s = "cpu  100 5 50 800 40 3 2 0 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        let c = parse_host_cpu(s).unwrap();
        assert_eq!(c.total, 1000);
        assert_eq!(c.busy, 160);
        let later = HostCpu {
            busy: 260,
            total: 1200,
        };
        assert_eq!(later.busy_since(&c), Some(0.5));
    }

    #[test]
    fn own_process_is_readable() {
        assert!(process_cpu_seconds(std::process::id()).is_some());
        assert!(HostCpu::now().is_some());
    }
}
