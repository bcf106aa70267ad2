//! Real `rampart` processes for end-to-end tests: started on ephemeral loopback ports (read back
//! from their logs), stopped by PID (SIGTERM, SIGKILL) when asked or when dropped.

#![allow(dead_code, unreachable_pub)]

pub mod checkout;
pub mod postgres;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// `--alpha` of a test's ramp whose healthy treatment must advance or complete. At the default 0.05
/// a healthy ramp may be rolled back by chance (up to 5% of ramps; about 1.3% in the simulator's
/// A/A runs), which would fail the test; at 0.001 in under 0.1%.
pub const HEALTHY_ALPHA: &str = "0.001";

/// Runs the `rampart` CLI against the control plane's API at `http`; it must succeed. Its stdout.
pub fn cli(http: SocketAddr, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(args)
        .env("RAMPART_CONTROL_PLANE", format!("http://{http}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "rampart {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `rampart ramp status FLAG --json`.
pub fn ramp_status(http: SocketAddr, flag: &str) -> serde_json::Value {
    serde_json::from_str(&cli(http, &["ramp", "status", flag, "--json"])).unwrap()
}

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

/// Starts `rampart control` with its store and config in `dir` (the initial flags in
/// `dir/flags.yaml`), on the given listen addresses (`127.0.0.1:0` for any port).
pub fn start_control(dir: &Path, grpc: &str, http: &str) -> Running {
    let config = dir.join("control.toml");
    std::fs::write(
        &config,
        format!("grpc_listen = \"{grpc}\"\nhttp_listen = \"{http}\"\nflags = \"flags.yaml\"\nstore = \"control.db\"\n"),
    )
    .unwrap();
    start(&["control"], &config, "rampart control serving")
}

/// Starts `rampart proxy` named `name` in front of `upstream`, following the control plane at
/// `control` (reports every 200 ms; `x-user-id` is the targeting key), every port ephemeral.
pub fn start_sidecar(dir: &Path, name: &str, upstream: SocketAddr, control: SocketAddr) -> Running {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nupstream = \"http://{upstream}\"\n\
             control_plane = \"http://{control}\"\nservice = \"shop\"\nproxy_id = \"{name}\"\n\
             report_interval = \"200ms\"\nflags_cache = \"{name}.cache.json\"\n\
             [context]\ntargetingKey = [\"header:x-user-id\"]\n\
             [queries]\ngrpc = \"127.0.0.1:0\"\nofrep = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    start(&["proxy"], &config, "rampart proxy serving")
}
