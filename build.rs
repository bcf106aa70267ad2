//! Records the commit the `rampart` binary is built from, for `rampart --version` (and so for every
//! benchmark artifact that names what it measured): the short hash, `-modified` when tracked files
//! differ from it, `unknown` outside a git checkout.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok().filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    let commit = match git(&["rev-parse", "--short=7", "HEAD"]) {
        Some(rev) if git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty()) => {
            format!("{rev}-modified")
        }
        Some(rev) => rev,
        None => "unknown".to_owned(),
    };
    println!("cargo:rustc-env=RAMPART_COMMIT={commit}");
    // Again when HEAD moves (a commit, a checkout) or a source changes (modified or not).
    for path in ["HEAD", "index", "logs/HEAD"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    for dir in ["src", "flags/src", "proto", "stats/src", "proxy/src", "control/src", "control/console", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={dir}");
    }
}
