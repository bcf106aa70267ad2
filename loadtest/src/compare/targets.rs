//! The processes of a comparison and their configurations: the upstream (nginx `return 200`, or
//! this tool's hyper upstream), Rampart (10 flags evaluated and injected), nginx and HAProxy
//! (the same 10 `x-flag-*` headers as constants). All single-threaded, keep-alive upstream
//! connections, loopback only, pinned to the server CPU. With `--tls` the proxies' listeners
//! terminate TLS with one certificate; the upstream leg stays plaintext.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::tls::CertFiles;
use crate::procs::{Proc, ProcError};

/// How many flags every proxy injects.
pub(crate) const FLAGS: usize = 10;

/// How long a server may take to come up.
const READY: Duration = Duration::from_secs(10);

/// The 10 constant headers nginx and HAProxy set: what Rampart's flags resolve to for a
/// user in the treatment of every ramp (even flags static `on`, odd ones ramped 50%).
fn constant_headers() -> Vec<(String, &'static str)> {
    (0..FLAGS).map(|i| (format!("x-flag-f{i}"), if i % 2 == 0 { "on" } else { "off" })).collect()
}

/// Which upstream serves the `200 ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum UpstreamKind {
    /// nginx, one process, `return 200 "ok\n"`.
    Nginx,
    /// `rampart-loadtest upstream`: hyper on a current-thread runtime.
    Hyper,
}

/// A started server: its process, where it listens, what it is.
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) proc: Proc,
    pub(crate) addr: SocketAddr,
    pub(crate) version: String,
}

/// A free loopback port (bound then released; the servers bind it right after).
pub(crate) fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

fn write(path: &Path, text: &str) -> Result<(), ProcError> {
    std::fs::write(path, text).map_err(|source| ProcError::Spawn { program: path.display().to_string(), source })
}

/// nginx's configuration: with one worker no master process (the PID is the worker); with more,
/// a master and its `workers` processes.
fn nginx_conf(dir: &Path, http_body: &str, workers: u16) -> String {
    let d = dir.display();
    let master = if workers > 1 { "on" } else { "off" };
    format!(
        "daemon off;\nmaster_process {master};\nworker_processes {workers};\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n    access_log off;\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n\
         \x20   fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n\
         \x20   keepalive_requests 1000000;\n{http_body}\n}}\n"
    )
}

pub(crate) fn version_of(program: &str, arg: &str) -> String {
    std::process::Command::new(program)
        .arg(arg)
        .output()
        .map(|o| {
            let text = if o.stderr.is_empty() { o.stdout } else { o.stderr };
            let line = String::from_utf8_lossy(&text).lines().next().unwrap_or("").trim().to_owned();
            // "nginx version: nginx/1.22.1", "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://…"
            let line = line.strip_prefix("nginx version: ").map_or(line.clone(), str::to_owned);
            line.split_whitespace().take(3).filter(|w| *w != "version").collect::<Vec<_>>().join(" ")
        })
        .unwrap_or_default()
}

pub(crate) async fn upstream(kind: UpstreamKind, dir: &Path, cpu: &str) -> Result<Server, ProcError> {
    let addr = free_port().map_err(|source| ProcError::Spawn { program: "bind".to_owned(), source })?;
    let (mut proc, version) = match kind {
        UpstreamKind::Nginx => {
            let d = dir.join("upstream");
            std::fs::create_dir_all(&d).map_err(|source| ProcError::Spawn { program: "mkdir".to_owned(), source })?;
            let echo: String = (0..FLAGS).map(|i| format!("f{i}=$http_x_flag_f{i} ")).collect();
            let body = format!(
                "    server {{\n        listen {addr};\n        location = / {{ return 200 \"ok\\n\"; }}\n\
                 \x20       location = /headers {{ return 200 \"{echo}\"; }}\n    }}"
            );
            write(&d.join("nginx.conf"), &nginx_conf(&d, &body, 1))?;
            let conf = d.join("nginx.conf");
            let args = ["-p", &d.display().to_string(), "-c", &conf.display().to_string()].map(str::to_owned);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            (Proc::start("upstream-nginx", Path::new("nginx"), &args, Some(cpu), dir, &[])?, version_of("nginx", "-v"))
        }
        UpstreamKind::Hyper => {
            let me = std::env::current_exe()
                .map_err(|source| ProcError::Spawn { program: "current_exe".to_owned(), source })?;
            let listen = addr.to_string();
            let args = ["upstream", "--listen", &listen, "--max-lifetime", "2h"];
            (
                Proc::start("upstream-hyper", &me, &args, Some(cpu), dir, &[])?,
                "rampart-loadtest upstream (hyper)".to_owned(),
            )
        }
    };
    proc.wait_for_port(addr, READY).await?;
    Ok(Server { proc, addr, version })
}

/// Rampart's flag file: 10 flags without JSONLogic, even ones static `on`, odd ones a 50% ramp
/// bucketed by the user id.
pub(crate) fn rampart_flags() -> String {
    let mut out = String::from("flags:\n");
    for i in 0..FLAGS {
        out.push_str(&format!("  f{i}:\n    state: ENABLED\n    variants: {{ \"on\": true, \"off\": false }}\n"));
        if i % 2 == 0 {
            out.push_str("    defaultVariant: \"on\"\n");
        } else {
            out.push_str("    defaultVariant: \"off\"\n    ramp: { treatment: \"on\", percent: 50 }\n");
        }
    }
    out
}

/// Rampart's `proxy.toml`: `workers`, the flags of [`rampart_flags`], flag queries off; with
/// `tls`, `[tls] cert/key` on the listener.
pub(crate) fn rampart_config(upstream: SocketAddr, tls: Option<&CertFiles>, workers: u16) -> String {
    let mut config = format!(
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nupstream = \"http://{upstream}\"\nflags = \"flags.yaml\"\n\
         workers = {workers}\n\n[context]\ntargetingKey = [\"header:x-user-id\"]\n\n[queries]\ngrpc = \"off\"\nofrep = \"off\"\n"
    );
    if let Some(t) = tls {
        config.push_str(&format!("\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n", t.cert.display(), t.key.display()));
    }
    config
}

pub(crate) async fn rampart(
    binary: &Path,
    upstream: SocketAddr,
    dir: &Path,
    cpu: &str,
    tls: Option<&CertFiles>,
    workers: u16,
) -> Result<Server, ProcError> {
    let d = dir.join("rampart");
    std::fs::create_dir_all(&d).map_err(|source| ProcError::Spawn { program: "mkdir".to_owned(), source })?;
    write(&d.join("flags.yaml"), &rampart_flags())?;
    let path: PathBuf = d.join("proxy.toml");
    write(&path, &rampart_config(upstream, tls, workers))?;
    let path = path.display().to_string();
    let mut proc = Proc::start(
        "rampart",
        binary,
        &["proxy", "--config", &path],
        Some(cpu),
        dir,
        &[("RUST_LOG", "info"), ("NO_COLOR", "1")],
    )?;
    let line = proc.wait_for_log("rampart proxy serving", READY).await?;
    let addrs = crate::procs::addrs(&line);
    let addr = crate::procs::addr(&addrs, "listen").ok_or_else(|| ProcError::NotReady {
        name: "rampart".to_owned(),
        after: READY,
        log: dir.join("rampart.log"),
    })?;
    let version = version_of(&binary.display().to_string(), "--version");
    Ok(Server { proc, addr, version })
}

/// nginx's `http {}` body for the proxy: keep-alive upstream, the 10 constant headers; with `tls`,
/// `listen … ssl` with the certificate, TLS 1.3 and 1.2, and `http2 on;` when `http2_on` (nginx ≥
/// 1.25.1; clients here speak HTTP/1.1 either way).
pub(crate) fn nginx_proxy_body(
    upstream: SocketAddr,
    addr: SocketAddr,
    tls: Option<&CertFiles>,
    http2_on: bool,
) -> String {
    let set: String =
        constant_headers().iter().map(|(k, v)| format!("            proxy_set_header {k} \"{v}\";\n")).collect();
    let listen = match tls {
        None => format!("listen {addr};\n"),
        Some(t) => format!(
            "listen {addr} ssl;\n        ssl_certificate {};\n        ssl_certificate_key {};\n\
             \x20       ssl_protocols TLSv1.3 TLSv1.2;\n{}",
            t.cert.display(),
            t.key.display(),
            if http2_on { "        http2 on;\n" } else { "" }
        ),
    };
    format!(
        "    upstream app {{\n        server {upstream};\n        keepalive 64;\n    }}\n\
         \x20   server {{\n        {listen}        location / {{\n            proxy_pass http://app;\n\
         \x20           proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n{set}        }}\n    }}"
    )
}

pub(crate) async fn nginx(
    upstream: SocketAddr,
    dir: &Path,
    cpu: &str,
    tls: Option<&CertFiles>,
    http2_on: bool,
    workers: u16,
) -> Result<Server, ProcError> {
    let d = dir.join("nginx");
    std::fs::create_dir_all(&d).map_err(|source| ProcError::Spawn { program: "mkdir".to_owned(), source })?;
    let addr = free_port().map_err(|source| ProcError::Spawn { program: "bind".to_owned(), source })?;
    let body = nginx_proxy_body(upstream, addr, tls, http2_on);
    write(&d.join("nginx.conf"), &nginx_conf(&d, &body, workers))?;
    let (prefix, conf) = (d.display().to_string(), d.join("nginx.conf").display().to_string());
    let mut proc = Proc::start("nginx", Path::new("nginx"), &["-p", &prefix, "-c", &conf], Some(cpu), dir, &[])?;
    proc.wait_for_port(addr, READY).await?;
    Ok(Server { proc, addr, version: version_of("nginx", "-v") })
}

/// HAProxy's configuration: `workers` threads, `http-reuse always`, the 10 constant headers; with `tls`,
/// `bind … ssl crt <certificate and key in one PEM>`, ALPN h2 and http/1.1, TLS 1.2 at least.
pub(crate) fn haproxy_config(upstream: SocketAddr, addr: SocketAddr, tls: Option<&CertFiles>, workers: u16) -> String {
    let set: String =
        constant_headers().iter().map(|(k, v)| format!("    http-request set-header {k} {v}\n")).collect();
    let bind = match tls {
        None => addr.to_string(),
        Some(t) => format!("{addr} ssl crt {} alpn h2,http/1.1 ssl-min-ver TLSv1.2", t.combined.display()),
    };
    format!(
        "global\n    nbthread {workers}\n    maxconn 4096\n\n\
         defaults\n    mode http\n    option http-keep-alive\n    http-reuse always\n    timeout connect 2s\n\
         \x20   timeout client 30s\n    timeout server 30s\n    timeout http-keep-alive 30s\n\n\
         frontend fe\n    bind {bind}\n{set}    default_backend app\n\n\
         backend app\n    server up {upstream}\n"
    )
}

pub(crate) async fn haproxy(
    upstream: SocketAddr,
    dir: &Path,
    cpu: &str,
    tls: Option<&CertFiles>,
    workers: u16,
) -> Result<Server, ProcError> {
    let addr = free_port().map_err(|source| ProcError::Spawn { program: "bind".to_owned(), source })?;
    let path = dir.join("haproxy.cfg");
    write(&path, &haproxy_config(upstream, addr, tls, workers))?;
    let path = path.display().to_string();
    // -db: stay in the foreground, no master process: the PID is the one worker.
    let mut proc = Proc::start("haproxy", Path::new("haproxy"), &["-db", "-f", &path], Some(cpu), dir, &[])?;
    proc.wait_for_port(addr, READY).await?;
    Ok(Server { proc, addr, version: version_of("haproxy", "-v") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_file_has_ten_flags_and_five_ramps() {
        let flags = rampart_flags();
        assert_eq!(flags.matches("state: ENABLED").count(), FLAGS);
        assert_eq!(flags.matches("ramp:").count(), FLAGS / 2);
        assert_eq!(constant_headers().len(), FLAGS);
    }

    #[test]
    fn tls_listeners_use_the_same_certificate_and_plaintext_upstreams() {
        let dir = tempfile::tempdir().unwrap();
        let files = super::super::tls::generate(dir.path()).unwrap();
        let (cert, key, pem) = (files.cert.display(), files.key.display(), files.combined.display());
        let up: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let at: SocketAddr = "127.0.0.1:9443".parse().unwrap();

        let nginx = nginx_proxy_body(up, at, Some(&files), false);
        assert!(nginx.contains("listen 127.0.0.1:9443 ssl;"), "{nginx}");
        assert!(nginx.contains(&format!("ssl_certificate {cert};")), "{nginx}");
        assert!(nginx.contains(&format!("ssl_certificate_key {key};")), "{nginx}");
        assert!(nginx.contains("ssl_protocols TLSv1.3 TLSv1.2;") && !nginx.contains("http2"), "{nginx}");
        assert!(nginx.contains("server 127.0.0.1:9000;") && nginx.contains("proxy_pass http://app;"), "{nginx}");
        assert_eq!(nginx.matches("proxy_set_header x-flag-").count(), FLAGS);
        assert!(nginx_proxy_body(up, at, Some(&files), true).contains("http2 on;"));
        let plain = nginx_proxy_body(up, at, None, true);
        assert!(plain.contains("listen 127.0.0.1:9443;") && !plain.contains("ssl"), "{plain}");

        let haproxy = haproxy_config(up, at, Some(&files), 1);
        assert!(haproxy.contains(&format!("bind 127.0.0.1:9443 ssl crt {pem} alpn h2,http/1.1")), "{haproxy}");
        assert!(haproxy.contains("server up 127.0.0.1:9000\n"), "{haproxy}");
        assert_eq!(haproxy.matches("http-request set-header x-flag-").count(), FLAGS);
        assert!(!haproxy_config(up, at, None, 1).contains("ssl"));
        assert!(haproxy_config(up, at, None, 2).contains("nbthread 2"));

        let rampart = rampart_config(up, Some(&files), 1);
        assert!(rampart.contains("upstream = \"http://127.0.0.1:9000\""), "{rampart}");
        assert!(rampart.ends_with(&format!("[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n")), "{rampart}");
        assert!(!rampart_config(up, None, 1).contains("[tls]"));
        assert!(rampart_config(up, None, 2).contains("workers = 2"));
        let d = Path::new("/tmp/x");
        assert!(nginx_conf(d, "", 1).contains("master_process off;\nworker_processes 1;"));
        assert!(nginx_conf(d, "", 2).contains("master_process on;\nworker_processes 2;"));
    }
}
