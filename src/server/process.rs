//! The standard `process_*` metrics (SPEC §8.2), read from `/proc` at scrape time.
//!
//! The same names, types and units as the Prometheus Go client's process collector, so
//! existing dashboards work. They are rendered as text next to the recorder's output rather than
//! kept as recorder metrics: `process_cpu_seconds_total` is a fractional counter, which the
//! `metrics` crate's integer counters cannot hold. On systems without `/proc` nothing is
//! rendered.

use std::fmt::Write as _;

/// Linux reports CPU times in USER_HZ, which is 100 on every architecture Rust targets
/// (`sysconf(_SC_CLK_TCK)`); hard-coding it spares a libc dependency.
const TICKS_PER_SECOND: f64 = 100.0;

/// A snapshot of the process, as the collector exports it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_memory_bytes: u64,
    pub virtual_memory_bytes: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
    pub start_time_seconds: f64,
    pub threads: u64,
}

/// Reads the current process's stats; `None` where `/proc` is not available.
pub fn read() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let system = std::fs::read_to_string("/proc/stat").ok()?;
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let mut stats = parse(&stat, &status, &system)?;
    stats.open_fds = open_fds;
    stats.max_fds = parse_max_fds(&limits);
    Some(stats)
}

/// Parses `/proc/self/stat`, `/proc/self/status` and `/proc/stat` (for the boot time).
fn parse(stat: &str, status: &str, system: &str) -> Option<ProcessStats> {
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // `fields[0]` is field 3 (state): field N is at index N - 3.
    let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
    let utime = field(14)?;
    let stime = field(15)?;
    let start_ticks = field(22)?;
    let boot_time: f64 = system
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let kib = |key: &str| -> Option<u64> {
        let line = status.lines().find_map(|l| l.strip_prefix(key))?;
        let value = line.trim().trim_end_matches("kB").trim();
        value.parse::<u64>().ok().map(|k| k * 1024)
    };
    Some(ProcessStats {
        cpu_seconds: (utime + stime) / TICKS_PER_SECOND,
        resident_memory_bytes: kib("VmRSS:").unwrap_or(0),
        virtual_memory_bytes: kib("VmSize:").unwrap_or(0),
        open_fds: 0,
        max_fds: None,
        start_time_seconds: boot_time + start_ticks / TICKS_PER_SECOND,
        threads: status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0),
    })
}

/// The soft limit of `Max open files` in `/proc/self/limits`.
fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Appends the stats in Prometheus text format.
pub fn render(stats: &ProcessStats, out: &mut String) {
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}\n");
    };
    metric(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        stats.cpu_seconds,
    );
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        stats.resident_memory_bytes as f64,
    );
    metric(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        stats.virtual_memory_bytes as f64,
    );
    metric(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        stats.open_fds as f64,
    );
    if let Some(max) = stats.max_fds {
        metric(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max as f64,
        );
    }
    metric(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        stats.start_time_seconds,
    );
    metric(
        "process_threads",
        "gauge",
        "Number of OS threads in the process.",
        stats.threads as f64,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (kube log (relay)) S 1 4242 4242 0 -1 4194560 2000 0 0 0 250 \
        130 0 0 20 0 9 0 123400 1000000 5000 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 \
        1 0 0 0 0 0";
    const STATUS: &str = "Name:\tkube-log-relay\nVmSize:\t  20480 kB\nVmRSS:\t    2048 kB\n\
        Threads:\t9\n";
    const SYSTEM: &str = "cpu  1 2 3 4\nbtime 1700000000\nprocesses 10\n";
    const LIMITS: &str = "Limit                     Soft Limit           Hard Limit           Units     \n\
        Max cpu time              unlimited            unlimited            seconds   \n\
        Max open files            1024                 524288               files     \n";

    #[test]
    fn parses_proc_files() {
        let stats = parse(STAT, STATUS, SYSTEM).expect("parses");
        assert_eq!(
            stats,
            ProcessStats {
                cpu_seconds: 3.8,
                resident_memory_bytes: 2048 * 1024,
                virtual_memory_bytes: 20480 * 1024,
                open_fds: 0,
                max_fds: None,
                start_time_seconds: 1_700_001_234.0,
                threads: 9,
            }
        );
        assert_eq!(parse_max_fds(LIMITS), Some(1024));
        assert_eq!(parse("garbage", STATUS, SYSTEM), None);
    }

    #[test]
    fn reads_this_process() {
        let stats = read().expect("tests run on Linux");
        assert!(stats.resident_memory_bytes > 0);
        assert!(stats.threads >= 1);
        assert!(stats.open_fds >= 3, "stdin, stdout, stderr at least");
        let now = jiff::Timestamp::now().as_second() as f64;
        assert!(stats.start_time_seconds <= now + 1.0 && stats.start_time_seconds > now - 86400.0);
        let mut text = String::new();
        render(&stats, &mut text);
        assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"));
        assert!(text.contains("\nprocess_threads "));
    }
}
