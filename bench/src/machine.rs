//! What the report says about the machine, and per-process CPU and memory from /proc.

use std::process::Command;

/// Clock ticks per second of /proc/PID/stat (`getconf CLK_TCK`; 100 on Linux).
pub fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of process `pid` (all its threads) in seconds; 0 when it is gone.
pub fn cpu_secs(pid: u32, tck: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    parse_stat_cpu_ticks(&stat) / tck
}

/// utime + stime ticks from a /proc/PID/stat line (the command name may hold spaces).
pub fn parse_stat_cpu_ticks(stat: &str) -> f64 {
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3, utime field 14, stime field 15 (1-based).
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks(11) + ticks(12)
}

/// Resident memory of `pid` in KiB (VmRSS); 0 when it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The machine-wide CPU counters of /proc/stat's first line, in ticks.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    /// Every tick counted (all states).
    pub total: f64,
    /// idle + iowait.
    pub idle: f64,
    /// Time the hypervisor ran something else while we wanted the CPU.
    pub steal: f64,
}

impl CpuTimes {
    /// Reads /proc/stat now.
    pub fn now() -> CpuTimes {
        parse_proc_stat(&std::fs::read_to_string("/proc/stat").unwrap_or_default())
    }

    /// Share of the ticks between `self` (earlier) and `later` that were steal.
    pub fn steal_share(&self, later: &CpuTimes) -> f64 {
        let d = later.total - self.total;
        if d <= 0.0 {
            0.0
        } else {
            (later.steal - self.steal) / d
        }
    }

    /// Share of the ticks between `self` and `later` that were busy (any process).
    pub fn busy_share(&self, later: &CpuTimes) -> f64 {
        let d = later.total - self.total;
        if d <= 0.0 {
            0.0
        } else {
            1.0 - (later.idle - self.idle) / d
        }
    }
}

/// The `cpu` line of /proc/stat.
pub fn parse_proc_stat(stat: &str) -> CpuTimes {
    let line = stat.lines().next().unwrap_or("");
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0.0);
    CpuTimes {
        // guest and guest_nice (8, 9) are already inside user and nice.
        total: v.iter().take(8).sum(),
        idle: at(3) + at(4),
        steal: at(7),
    }
}

/// The 1-minute load average.
pub fn loadavg1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// The CPU model name.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Online CPUs.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// First line of `cmd args` (stdout, else stderr), for the versions table.
pub fn version_of(cmd: &str, args: &[&str]) -> String {
    match Command::new(cmd).args(args).output() {
        Ok(o) => {
            let out = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&out)
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string()
        }
        Err(e) => format!("not available ({e})"),
    }
}

/// Pins every thread of `pid` to `cpu` (taskset -a -p).
pub fn pin(pid: u32, cpu: usize) -> anyhow::Result<()> {
    let st = Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()?;
    if !st.success() {
        anyhow::bail!("taskset could not pin pid {pid} to cpu {cpu}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_ticks_survive_a_command_name_with_spaces() {
        let line = "42 (wrk x) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(parse_stat_cpu_ticks(line), 300.0);
    }

    #[test]
    fn proc_stat_steal_is_the_eighth_counter() {
        let t = parse_proc_stat("cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 1 2 3");
        assert_eq!((t.total, t.idle, t.steal), (1000.0, 810.0, 40.0));
        let later = parse_proc_stat("cpu  200 0 100 1600 20 0 0 80 0 0");
        assert!((t.steal_share(&later) - 0.04).abs() < 1e-12);
    }
}
