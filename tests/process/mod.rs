//! Real `rampart` processes for end-to-end tests: started on ephemeral loopback ports (read back
//! from their logs), stopped by PID (SIGTERM, SIGKILL) when asked or when dropped.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct Running {
    pub child: Child,
    /// `key=addr` pairs from the "serving" log line.
    pub addrs: Vec<(String, SocketAddr)>,
}

impl Running {
    pub fn addr(&self, key: &str) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no {key} in {:?}", self.addrs))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (via `kill(1)`, keeping the workspace free of `unsafe`), then wait for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        self.child.wait().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `rampart <args>` and waits for its log line containing `marker`; collects every
/// `key=ip:port` on that line.
pub fn start(args: &[&str], config: &Path, marker: &str) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = loop {
        match lines.next() {
            Some(Ok(line)) if line.contains(marker) => break line,
            Some(Ok(_)) => continue,
            _ => {
                let status = child.wait().unwrap();
                panic!("rampart {args:?} exited ({status}) before logging {marker:?}");
            }
        }
    };
    // Keep draining the log so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let addrs = line
        .split_whitespace()
        .filter_map(|word| {
            let (k, v) = word.split_once('=')?;
            Some((k.to_owned(), v.trim_matches('"').parse().ok()?))
        })
        .collect();
    Running { child, addrs }
}
