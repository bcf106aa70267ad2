//! Processes a mode starts (proxies, upstreams, the control plane): optionally pinned to CPUs
//! with `taskset`, output to files in the run's directory, stopped by PID — SIGTERM, then
//! SIGKILL after a grace period — when asked or when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProcError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} exited ({status}) before it was ready; its log ends: {tail}")]
    Exited { name: String, status: std::process::ExitStatus, tail: String },
    #[error("{name} not ready within {after:?}; its log: {}", log.display())]
    NotReady { name: String, after: Duration, log: PathBuf },
}

/// A started process; stopped on drop.
#[derive(Debug)]
pub(crate) struct Proc {
    name: String,
    child: Child,
    /// stdout and stderr, together.
    log: PathBuf,
}

/// Whether `program` is on the `PATH`.
pub(crate) fn available(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v '{program}'")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Where a pinned benchmark runs: the load generator on one CPU list, the servers under test on
/// another (`taskset` lists, e.g. "0" or "0-1").
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Layout {
    /// CPU of the load generator.
    #[arg(long, default_value = "0")]
    pub(crate) loadgen_cpu: String,
    /// CPU of the servers under test (and their upstream).
    #[arg(long, default_value = "1")]
    pub(crate) server_cpu: String,
}

/// Pins every thread of `pid` to `cpus` (e.g. "0").
pub(crate) fn pin(pid: u32, cpus: &str) -> std::io::Result<()> {
    let status =
        Command::new("taskset").args(["-a", "-c", "-p", cpus, &pid.to_string()]).stdout(Stdio::null()).status()?;
    if status.success() { Ok(()) } else { Err(std::io::Error::other(format!("taskset exited with {status}"))) }
}

impl Proc {
    /// Starts `program args` (under `taskset -c cpus` when given), its output to `dir/<name>.log`.
    pub(crate) fn start(
        name: &str,
        program: &Path,
        args: &[&str],
        cpus: Option<&str>,
        dir: &Path,
        env: &[(&str, &str)],
    ) -> Result<Proc, ProcError> {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)
            .map_err(|source| ProcError::Spawn { program: program.display().to_string(), source })?;
        let err =
            out.try_clone().map_err(|source| ProcError::Spawn { program: program.display().to_string(), source })?;
        // `taskset -c CPUS PROGRAM` execs PROGRAM: the PID is the program's.
        let mut cmd = match cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err).current_dir(dir);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child =
            cmd.spawn().map_err(|source| ProcError::Spawn { program: program.display().to_string(), source })?;
        Ok(Proc { name: name.to_owned(), child, log })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a line of the log contains `marker` (the process says it is serving);
    /// returns that line.
    pub(crate) async fn wait_for_log(&mut self, marker: &str, within: Duration) -> Result<String, ProcError> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(text) = std::fs::read_to_string(&self.log)
                && let Some(line) = text.lines().find(|l| l.contains(marker))
            {
                return Ok(line.to_owned());
            }
            self.check_alive()?;
            if Instant::now() >= deadline {
                return Err(ProcError::NotReady { name: self.name.clone(), after: within, log: self.log.clone() });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `addr` accepts a TCP connection.
    pub(crate) async fn wait_for_port(&mut self, addr: SocketAddr, within: Duration) -> Result<(), ProcError> {
        let deadline = Instant::now() + within;
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() >= deadline {
                return Err(ProcError::NotReady { name: self.name.clone(), after: within, log: self.log.clone() });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn check_alive(&mut self) -> Result<(), ProcError> {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                let text = std::fs::read_to_string(&self.log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(3)..].join(" / ");
                Err(ProcError::Exited { name: self.name.clone(), status, tail })
            }
            _ => Ok(()),
        }
    }

    /// SIGTERM (through `kill(1)`: the workspace forbids `unsafe`), up to `grace` for the exit,
    /// then SIGKILL; always reaps.
    pub(crate) fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let termed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if termed {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if let Err(e) = self.child.kill() {
            eprintln!("warning: cannot kill {} (pid {}): {e}", self.name, self.child.id());
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// The `key=ip:port` pairs of a log line (`listen=127.0.0.1:41234 admin=…`).
pub(crate) fn addrs(line: &str) -> Vec<(String, SocketAddr)> {
    line.split_whitespace()
        .filter_map(|word| {
            let (k, v) = word.split_once('=')?;
            Some((k.to_owned(), v.trim_matches('"').parse().ok()?))
        })
        .collect()
}

/// The address named `key` in `pairs`.
pub(crate) fn addr(pairs: &[(String, SocketAddr)], key: &str) -> Option<SocketAddr> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, a)| *a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_addresses_from_a_serving_line() {
        let line = "2026-11-26T10:00:00Z  INFO rampart proxy serving listen=127.0.0.1:41234 admin=127.0.0.1:9901 \
                    upstream=127.0.0.1:3000 flags=None workers=1";
        let pairs = addrs(line);
        assert_eq!(addr(&pairs, "listen"), Some("127.0.0.1:41234".parse().unwrap()));
        assert_eq!(addr(&pairs, "admin"), Some("127.0.0.1:9901".parse().unwrap()));
        assert_eq!(addr(&pairs, "grpc"), None);
    }

    #[tokio::test]
    async fn a_started_process_is_stopped_by_pid() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Proc::start("sleeper", Path::new("sleep"), &["30"], None, dir.path(), &[]).unwrap();
        let pid = p.pid();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        p.stop(Duration::from_secs(2));
        assert!(matches!(p.child.try_wait(), Ok(Some(_))));
        assert!(p.wait_for_log("never", Duration::from_millis(10)).await.is_err());
    }
}
