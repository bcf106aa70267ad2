//! A throwaway PostgreSQL server for tests: `initdb` in a temporary directory, started with
//! `pg_ctl` on a free loopback port (its unix socket in that directory too), stopped by PID and
//! deleted on drop. No shared, pre-existing database; `scripts/setup` installs the binaries.
//!
//! ```ignore
//! mod process;                    // or: #[path = "process/postgres.rs"] mod postgres;
//! let pg = process::postgres::Postgres::start();
//! let url = pg.url();             // postgres://rampart@127.0.0.1:PORT/rampart (trust auth)
//! let other = pg.create_database("replicas"); // another database on the same server
//! drop(pg);                       // pg_ctl stop -m immediate, then SIGKILL if still alive
//! ```

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The superuser and the first database of every test server.
const USER: &str = "rampart";
/// Settings for a short-lived test server: small, and no durability (fsync off).
const SETTINGS: &str = "
listen_addresses = '127.0.0.1'
max_connections = 100
shared_buffers = 16MB
fsync = off
synchronous_commit = off
full_page_writes = off
max_wal_size = 256MB
log_min_messages = warning
";

/// A running PostgreSQL server owned by the test. Dropping it stops the server (by its PID) and
/// removes its directory.
pub struct Postgres {
    dir: Option<tempfile::TempDir>,
    bin: PathBuf,
    port: u16,
    pid: u32,
    /// Run the server-side tools as the `postgres` system user (we are root, which they refuse).
    as_postgres: bool,
}

impl Postgres {
    /// Initialises and starts a server with a database named `rampart`; panics (with the
    /// server's log) when it cannot.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::Builder::new().prefix("rampart-pg-").tempdir().expect("temporary directory");
        let as_postgres = dir.path().metadata().unwrap().uid() == 0;
        if as_postgres {
            let out = Command::new("chown").arg("postgres:").arg(dir.path()).output().expect("chown");
            assert!(
                out.status.success(),
                "running as root: the `postgres` system user (created by Debian's postgresql package) must exist: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut pg = Postgres { dir: Some(dir), bin, port: 0, pid: 0, as_postgres };
        let data = pg.data();
        pg.server(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                USER.as_ref(),
                "--auth=trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--no-locale".as_ref(),
                "--no-sync".as_ref(),
            ],
        );
        let socket = pg.path().to_str().expect("UTF-8 temporary path").to_owned();
        let conf = format!("{SETTINGS}unix_socket_directories = '{socket}'\n");
        let mut config = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        config.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), config).unwrap();

        // Another process may take the free port between our probe and the server's bind: retry.
        let log = pg.path().join("postgres.log");
        let mut last = String::new();
        for _ in 0..5 {
            pg.port = free_port();
            let port = format!("-p {}", pg.port);
            let out = pg.run_server(
                "pg_ctl",
                &[
                    "start".as_ref(),
                    "-D".as_ref(),
                    data.as_os_str(),
                    "-l".as_ref(),
                    log.as_os_str(),
                    "-o".as_ref(),
                    port.as_ref(),
                    "-w".as_ref(),
                    "-t".as_ref(),
                    "60".as_ref(),
                ],
            );
            if out.status.success() {
                pg.pid = postmaster_pid(&data);
                pg.wait_ready();
                let out = pg.client("createdb", &[USER]);
                assert!(out.status.success(), "createdb: {}", String::from_utf8_lossy(&out.stderr));
                return pg;
            }
            last = format!(
                "{}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        panic!("PostgreSQL did not start on a free port in 5 tries:\n{last}");
    }

    /// `postgres://rampart@127.0.0.1:PORT/rampart`: the superuser, no password (trust).
    pub fn url(&self) -> String {
        self.url_of(USER)
    }

    /// Creates database `name` on this server; its URL.
    pub fn create_database(&self, name: &str) -> String {
        let out = self.client("createdb", &[name]);
        assert!(out.status.success(), "createdb {name}: {}", String::from_utf8_lossy(&out.stderr));
        self.url_of(name)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's PID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The server's directory (data in `data/`, log in `postgres.log`, the unix socket).
    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("not stopped").path()
    }

    /// Stops the server (`pg_ctl stop -m immediate`, then SIGKILL to its PID if it is still alive)
    /// and removes its directory. Idempotent; `drop` calls it.
    pub fn stop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        if self.pid != 0 {
            let data = dir.path().join("data");
            let _ = self.run_server(
                "pg_ctl",
                &["stop".as_ref(), "-D".as_ref(), data.as_os_str(), "-m".as_ref(), "immediate".as_ref(), "-w".as_ref()],
            );
            for _ in 0..100 {
                if !alive(self.pid) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if alive(self.pid) {
                let _ = Command::new("kill").args(["-KILL", &self.pid.to_string()]).status();
                for _ in 0..100 {
                    if !alive(self.pid) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        drop(dir);
    }

    fn url_of(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    fn data(&self) -> PathBuf {
        self.path().join("data")
    }

    /// Runs a server-side tool (as `postgres` when we are root); it must succeed.
    fn server(&self, tool: &str, args: &[&std::ffi::OsStr]) {
        let out = self.run_server(tool, args);
        assert!(
            out.status.success(),
            "{tool}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn run_server(&self, tool: &str, args: &[&std::ffi::OsStr]) -> Output {
        let exe = self.bin.join(tool);
        let mut command = if self.as_postgres {
            let mut c = Command::new(runuser());
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        // The postgres user may not be able to enter the test's working directory.
        let dir = self.dir.as_ref().map_or_else(std::env::temp_dir, |d| d.path().to_owned());
        command.args(args).current_dir(dir).env("LC_ALL", "C").output().unwrap_or_else(|e| panic!("{command:?}: {e}"))
    }

    /// A client tool over TCP as the superuser (clients run as anyone, root included).
    fn client(&self, tool: &str, args: &[&str]) -> Output {
        Command::new(self.bin.join(tool))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"))
    }

    /// `pg_isready` until the server accepts connections (`pg_ctl -w` already waited; this
    /// checks the TCP listener the tests use), at most 10 s.
    fn wait_ready(&self) {
        for _ in 0..200 {
            if self.client("pg_isready", &["-d", "postgres"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("PostgreSQL on port {} is not ready after 10 s", self.port);
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The directory of `initdb`, `pg_ctl`, `pg_isready`, `createdb`: `$RAMPART_PG_BIN`, else where
/// `initdb` on `PATH` really lives, else the newest `/usr/lib/postgresql/<version>/bin` (Debian
/// keeps them off `PATH`).
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RAMPART_PG_BIN") {
        return PathBuf::from(dir);
    }
    let on_path = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    for dir in on_path {
        let initdb = dir.join("initdb");
        if initdb.is_file() {
            // A symlink (e.g. /usr/local/bin/initdb): its siblings are where it points.
            let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
            let dir = real.parent().unwrap().to_owned();
            if dir.join("pg_ctl").is_file() && dir.join("pg_isready").is_file() {
                return dir;
            }
        }
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let version: u32 = e.file_name().to_str()?.split('.').next()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version);
    match newest {
        Some((_, bin)) => bin,
        None => {
            panic!("no PostgreSQL server binaries (initdb) on PATH or in /usr/lib/postgresql/*/bin: run scripts/setup")
        }
    }
}

/// `runuser` (util-linux; in /usr/sbin, which a non-login root `PATH` may lack).
fn runuser() -> PathBuf {
    let on_path = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join("runuser"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("running as root needs runuser (util-linux) to start PostgreSQL as `postgres`"))
}

/// A port nobody listens on right now (bound and released: the server may lose a race for it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The first line of `postmaster.pid`.
fn postmaster_pid(data: &Path) -> u32 {
    let pidfile = std::fs::read_to_string(data.join("postmaster.pid")).expect("postmaster.pid");
    pidfile.lines().next().and_then(|l| l.trim().parse().ok()).expect("a PID in postmaster.pid")
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
