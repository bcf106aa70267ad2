//! Another process's resource use, read from `/proc`: CPU time (`utime + stime` of all its threads),
//! peak and current resident memory (`VmHWM`, `VmRSS`) and open file descriptors.

use std::path::PathBuf;
use std::time::Duration;

/// Clock ticks per second of the `/proc/PID/stat` times. Linux reports them in `USER_HZ`, which
/// is 100 on every architecture it exports to user space (`sysconf(_SC_CLK_TCK)` would need `unsafe`).
const USER_HZ: u64 = 100;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProcError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: unexpected format", path.display())]
    Format { path: PathBuf },
}

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    /// User + system CPU time of every thread so far.
    pub(crate) cpu: Duration,
    /// Peak resident set size so far, in bytes.
    pub(crate) peak_rss: u64,
    /// Time its live threads spent runnable but waiting for a CPU (`/proc/PID/task/*/schedstat`,
    /// second field): on a shared machine, how much of the wall time others took.
    pub(crate) run_delay: Duration,
}

pub(crate) fn sample(pid: u32) -> Result<Sample, ProcError> {
    Ok(Sample { cpu: cpu_time(pid)?, peak_rss: peak_rss(pid)?, run_delay: run_delay(pid) })
}

/// A process and its children together (nginx's master and its workers): CPU, peak RSS and
/// run-queue wait summed. A child that has exited is no longer counted.
pub(crate) fn sample_tree(pid: u32) -> Result<Sample, ProcError> {
    let mut total = sample(pid)?;
    for child in children(pid) {
        if let Ok(s) = sample(child) {
            total.cpu += s.cpu;
            total.peak_rss += s.peak_rss;
            total.run_delay += s.run_delay;
        }
    }
    Ok(total)
}

/// The live processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok().and_then(|t| parse_ppid(&t)) == Some(pid))
        .collect()
}

/// The parent's PID from a `/proc/PID/stat` line (field 4, counted from the last `)`).
fn parse_ppid(text: &str) -> Option<u32> {
    text[text.rfind(')')? + 1..].split_ascii_whitespace().nth(1)?.parse().ok()
}

/// The sum over the process's threads of their run-queue wait; zero where schedstats are off.
fn run_delay(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Duration::ZERO };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|text| text.split_ascii_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

fn read(path: PathBuf) -> Result<(PathBuf, String), ProcError> {
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((path, text)),
        Err(source) => Err(ProcError::Read { path, source }),
    }
}

fn cpu_time(pid: u32) -> Result<Duration, ProcError> {
    let (path, text) = read(PathBuf::from(format!("/proc/{pid}/stat")))?;
    parse_stat(&text).ok_or(ProcError::Format { path })
}

/// `utime + stime` from a `/proc/PID/stat` line. The command name (field 2) may hold spaces and
/// parentheses, so the fields are counted from the last `)`: utime and stime are fields 14 and 15.
fn parse_stat(text: &str) -> Option<Duration> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime + stime;
    Some(Duration::from_secs(ticks / USER_HZ) + Duration::from_millis((ticks % USER_HZ) * 1000 / USER_HZ))
}

fn peak_rss(pid: u32) -> Result<u64, ProcError> {
    let (path, text) = read(PathBuf::from(format!("/proc/{pid}/status")))?;
    parse_hwm(&text).ok_or(ProcError::Format { path })
}

fn parse_hwm(text: &str) -> Option<u64> {
    status_kb(text, "VmHWM:")
}

/// A `kB` field of `/proc/PID/status`, in bytes.
fn status_kb(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.trim_start_matches(field).trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Current resident set size, in bytes.
pub(crate) fn rss(pid: u32) -> Result<u64, ProcError> {
    let (path, text) = read(PathBuf::from(format!("/proc/{pid}/status")))?;
    status_kb(&text, "VmRSS:").ok_or(ProcError::Format { path })
}

/// The machine's 1, 5 and 15 minute load averages ("?" where `/proc/loadavg` cannot be read).
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map_or_else(|_| "?".to_owned(), |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// Open file descriptors (sockets included).
pub(crate) fn open_fds(pid: u32) -> Result<usize, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/fd"));
    match std::fs::read_dir(&path) {
        Ok(entries) => Ok(entries.count()),
        Err(source) => Err(ProcError::Read { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_and_status() {
        let stat = "1234 (tokio (rt) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 3 0 5 0 0";
        assert_eq!(parse_stat(stat), Some(Duration::from_millis(2870)));
        assert_eq!(parse_ppid(stat), Some(1));
        assert_eq!(parse_hwm("Name:\tx\nVmHWM:\t   10240 kB\nVmRSS:\t 1 kB\n"), Some(10 << 20));
        let me = sample(std::process::id()).unwrap();
        assert!(me.peak_rss > 0);
        assert_eq!(status_kb("VmRSS:\t  2048 kB\n", "VmRSS:"), Some(2 << 20));
        let now = rss(std::process::id()).unwrap();
        assert!(now > 0 && now <= me.peak_rss.max(now));
        assert!(open_fds(std::process::id()).unwrap() >= 3);
    }
}
