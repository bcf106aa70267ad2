//! Records the commit the `rampart` binary is built from, for `rampart --version` (and so for every
//! benchmark artifact that names what it measured): the short hash, `-modified` when tracked files
//! differ from it, `unknown` outside a git checkout.
//!
//! In a release build on x86-64 Linux it also shapes how the binary is laid out, which decides
//! most of a sidecar's resident memory (see `link-order.txt`, made by `scripts/link-order`):
//! - the functions `rampart proxy` runs are placed first and together (`--symbol-ordering-file`,
//!   rust-lld, the default linker of that target). The kernel maps code in 64 KiB blocks around
//!   each page first touched; spread over 13 MiB of code, those blocks made 6.2 MiB resident,
//!   together they make about 2 MiB. Names the file lists that this build does not have (another
//!   toolchain, `Cargo.lock` or feature set changes their hashes) are skipped: only the layout
//!   degrades;
//! - relative relocations are packed (`-z pack-relative-relocs`, DT_RELR) when the C library
//!   linked against is glibc 2.36 or newer, which can load them: 23 000 relocations of 24 bytes,
//!   all read at start, become 6 KiB.
//!
//! `RAMPART_LINK_LAYOUT=off` turns both off, for a linker that lacks these options (GNU ld).

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
    layout();
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

/// The link arguments of the layout described at the top; nothing outside a release build of
/// x86-64 Linux (glibc), where the linker is rust-lld, or with `RAMPART_LINK_LAYOUT=off` (for a
/// linker of one's own choice that lacks these options, such as GNU ld).
fn layout() {
    println!("cargo:rerun-if-changed=link-order.txt");
    println!("cargo:rerun-if-env-changed=RAMPART_LINK_LAYOUT");
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    if env("PROFILE") != "release" || env("TARGET") != "x86_64-unknown-linux-gnu" || env("RAMPART_LINK_LAYOUT") == "off"
    {
        return;
    }
    let order = std::path::Path::new(&env("CARGO_MANIFEST_DIR")).join("link-order.txt");
    if order.is_file() {
        println!("cargo:rustc-link-arg-bin=rampart=-Wl,--symbol-ordering-file={}", order.display());
        println!("cargo:rustc-link-arg-bin=rampart=-Wl,--no-warn-symbol-ordering");
    }
    if glibc_at_least(2, 36) {
        println!("cargo:rustc-link-arg-bin=rampart=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether this machine's glibc (`getconf GNU_LIBC_VERSION`: "glibc 2.36") is at least
/// `major.minor`; false when it cannot tell.
fn glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else { return false };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(version) = text.trim().strip_prefix("glibc ") else { return false };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}
