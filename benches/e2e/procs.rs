//! Measuring processes from outside, through `/proc` (Linux): CPU time (utime + stime, never
//! wall time, because the machine is shared), resident memory, and what the rest of the machine
//! used meanwhile, so a figure taken on a loaded machine says so.

/// Clock ticks per second of `/proc` times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

/// The fields of `/proc/<pid>/stat` after the command name (which may contain spaces).
fn stat_fields(pid: &str) -> Vec<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    // Field 0 is the state letter; keep the numbers at their positions.
    rest.split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect()
}

/// User + system CPU seconds of process `pid` so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let f = stat_fields(&pid.to_string());
    // utime and stime are fields 14 and 15 of stat(5), here 11 and 12.
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / TICKS
}

/// This process's own CPU seconds, and those of its children that were waited for (cutime,
/// cstime: how a follower that has exited is counted exactly).
pub fn own_cpu_seconds() -> (f64, f64) {
    let f = stat_fields("self");
    let get = |i: usize| f.get(i).copied().unwrap_or(0) as f64 / TICKS;
    (get(11) + get(12), get(13) + get(14))
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`).
pub fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Busy CPU seconds of the whole machine so far (every core; idle and iowait excluded).
pub fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else {
        return 0.0;
    };
    let f: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = f.iter().take(8).sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total - idle) as f64 / TICKS
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// What the machine did during a measurement besides this benchmark and its children.
pub struct MachineLoad {
    busy: f64,
    own: f64,
    children: f64,
    started: std::time::Instant,
}

impl MachineLoad {
    pub fn start() -> MachineLoad {
        let (own, children) = own_cpu_seconds();
        MachineLoad {
            busy: machine_busy_seconds(),
            own,
            children,
            started: std::time::Instant::now(),
        }
    }

    /// Cores used on average by other processes since `start`, given the CPU seconds of the
    /// children still running that this process measured itself (the relay).
    pub fn others_cores(&self, running_children_cpu: f64) -> f64 {
        let (own, children) = own_cpu_seconds();
        let ours = (own - self.own) + (children - self.children) + running_children_cpu;
        let busy = machine_busy_seconds() - self.busy;
        ((busy - ours) / self.started.elapsed().as_secs_f64()).max(0.0)
    }
}
