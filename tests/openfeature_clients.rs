//! Real OpenFeature clients against a running `rampart proxy`, each in its own process: the
//! current Node `@openfeature/flagd-provider` and Python `openfeature-provider-flagd` (RPC mode over
//! `flagd.evaluation.v2`, in-process mode over `flagd.sync.v1`) and both OFREP providers, installed
//! by `scripts/setup` into `tests/clients/` (`check.mjs`, `check.py` drive them). Each checks typed
//! values, a missing flag, a type mismatch, a disabled flag and a 37 % ramp against the sidecar's
//! own `x-flag-checkout` header (10 000 units in-process), and sees a flag change within a second.

mod process;
#[path = "../proxy/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

const FLAGS: &str = r##"
metadata: { flagSetId: shop }
flags:
  off-switch:
    state: ENABLED
    variants: { "on": true, "off": false }
    defaultVariant: "off"
  text:
    state: ENABLED
    variants: { a: "hello", b: "" }
    defaultVariant: a
  count:
    state: ENABLED
    variants: { small: 3, zero: 0 }
    defaultVariant: small
  ratio:
    state: ENABLED
    variants: { half: 0.5, none: 0 }
    defaultVariant: half
  theme:
    state: ENABLED
    variants: { dark: { bg: "#000" }, light: { bg: "#fff" } }
    defaultVariant: dark
  old-banner:
    state: DISABLED
    variants: { "on": true, "off": false }
    defaultVariant: "on"
  checkout:
    state: ENABLED
    variants: { "on": true, "off": false }
    defaultVariant: "off"
    ramp: { treatment: "on", percent: 37 }
"##;

fn clients() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// The command that runs one client, or a panic saying how to install it.
fn client_command(lang: &str) -> Command {
    let dir = clients().join(lang);
    let (program, script) = match lang {
        "node" => (PathBuf::from("node"), dir.join("check.mjs")),
        _ => (dir.join(".venv/bin/python"), dir.join("check.py")),
    };
    let installed = if lang == "node" { dir.join("node_modules").is_dir() } else { program.is_file() };
    assert!(installed, "the {lang} OpenFeature clients are not installed: run scripts/setup");
    let mut cmd = Command::new(program);
    cmd.arg(script).current_dir(dir);
    cmd
}

/// The `x-flag-checkout` header the sidecar sends upstream for `user-0..units`.
async fn headers(listen: std::net::SocketAddr, units: usize) -> Vec<Option<String>> {
    let mut out = Vec::with_capacity(units);
    for i in 0..units {
        let seen = support::seen(&format!("http://{listen}/"), &[("x-user-id", &format!("user-{i}"))]).await;
        out.push(support::header(&seen, "x-flag-checkout"));
    }
    out
}

/// Runs `lang`'s client in `mode` against a fresh sidecar serving `flags`.
async fn run(lang: &str, mode: &str, units: usize, flags: &str) -> (Value, u64) {
    let up = support::upstream().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flags.yaml"), flags).unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nupstream = \"http://{}\"\nflags = \"flags.yaml\"\n\
             [queries]\ngrpc = \"127.0.0.1:0\"\nofrep = \"127.0.0.1:0\"\n",
            up.addr
        ),
    )
    .unwrap();
    let sidecar = process::start(&["proxy"], &config, "rampart proxy serving");
    let port = if mode == "ofrep" { sidecar.addr("ofrep") } else { sidecar.addr("grpc") }.port();
    let mut child = client_command(lang)
        .args([mode, &port.to_string(), &units.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || -> Value {
        let line = lines.next().unwrap_or_else(|| panic!("{lang} {mode}: the client ended early")).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{lang} {mode}: {e}: {line}"))
    };
    let results = next();
    assert_eq!(next(), json!({"waiting": true}));

    let expected = headers(sidecar.addr("listen"), units).await;
    let ramp: Vec<Option<String>> = serde_json::from_value(results["ramp"].clone()).unwrap();
    let disagree = ramp.iter().zip(&expected).filter(|(a, b)| a != b).count();
    assert_eq!(disagree, 0, "{lang} {mode}: {disagree} of {units} units differ from the sidecar's header");
    let treated = ramp.iter().filter(|v| v.as_deref() == Some("on")).count();
    let share = treated as f64 / units as f64;
    assert!((share - 0.37).abs() < 0.06, "{lang} {mode}: {treated} of {units} treated");

    support::replace_file(
        &dir.path().join("flags.yaml"),
        &flags.replace("defaultVariant: \"off\"\n  text", "defaultVariant: \"on\"\n  text"),
    );
    writeln!(stdin, "changed").unwrap();
    let changed = next();
    let status = child.wait().unwrap();
    assert!(status.success(), "{lang} {mode}: {status}");
    assert_eq!(changed["seen"], true, "{lang} {mode}: the change was not seen: {changed}");
    let ms = changed["changed_ms"].as_u64().unwrap();
    println!("{lang} {mode}: {units} units agree with the header ({treated} treated); change seen in {ms} ms");
    (results, ms)
}

/// What every client reports the same way.
fn check_common(lang: &str, mode: &str, r: &Value) {
    let got = |k: &str| (&r[k]["value"], &r[k]["variant"]);
    assert_eq!(got("bool"), (&json!(false), &json!("off")), "{lang} {mode}: {r}");
    assert_eq!(got("string"), (&json!("hello"), &json!("a")), "{lang} {mode}");
    assert_eq!(got("int"), (&json!(3), &json!("small")), "{lang} {mode}");
    assert_eq!(got("float"), (&json!(0.5), &json!("half")), "{lang} {mode}");
    assert_eq!(got("object"), (&json!({"bg": "#000"}), &json!("dark")), "{lang} {mode}");
    assert_eq!(
        (&r["missing"]["value"], &r["missing"]["errorCode"]),
        (&json!(true), &json!("FLAG_NOT_FOUND")),
        "{lang} {mode}"
    );
    assert_eq!(
        (&r["mismatch"]["value"], &r["mismatch"]["errorCode"]),
        (&json!("fallback"), &json!("TYPE_MISMATCH")),
        "{lang} {mode}: {r}"
    );
    assert_eq!(r["disabled"]["value"], false, "{lang} {mode}: a disabled flag gives the caller's default");
}

fn check_flagd(lang: &str, mode: &str, r: &Value, changed_ms: u64) {
    check_common(lang, mode, r);
    assert_eq!(
        (&r["disabled"]["reason"], &r["disabled"]["errorCode"]),
        (&json!("DISABLED"), &json!(null)),
        "{lang} {mode}"
    );
    assert!(changed_ms < 1000, "{lang} {mode}: the change took {changed_ms} ms");
}

fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn node_flagd_provider_rpc_v2() {
    let (r, ms) = tokio().block_on(run("node", "rpc", 500, FLAGS));
    check_flagd("node", "rpc", &r, ms);
    assert_eq!(r["bool"]["metadata"], json!({"flagSetId": "shop"}));
}

#[test]
fn node_flagd_provider_in_process_agrees_on_10000_units() {
    let (r, ms) = tokio().block_on(run("node", "in-process", 10_000, FLAGS));
    check_flagd("node", "in-process", &r, ms);
}

/// The current Python provider evaluates in-process with openfeature-flagd-core 2.x, which hashes
/// `fractional` keys as CBOR (`@fractional-v3`): its flag set says so, and the sidecar follows.
#[test]
fn python_flagd_provider_in_process_agrees_on_10000_units_with_v3_hashing() {
    let flags = FLAGS.replace("metadata: { flagSetId: shop }", "metadata: { flagSetId: shop, fractionalVersion: v3 }");
    let (r, ms) = tokio().block_on(run("python", "in-process", 10_000, &flags));
    check_flagd("python", "in-process", &r, ms);
}

#[test]
fn python_flagd_provider_rpc_v2() {
    let (r, ms) = tokio().block_on(run("python", "rpc", 500, FLAGS));
    check_flagd("python", "rpc", &r, ms);
}

/// The OFREP providers: a disabled flag answers `200` with reason `DISABLED` and no value; these
/// provider releases expect a value in every `200` and report it as an error, so the caller's
/// default applies, as it should. OFREP clients poll, so a change is only asserted to arrive.
#[test]
fn ofrep_providers_node_and_python() {
    for lang in ["node", "python"] {
        let (r, _ms) = tokio().block_on(run(lang, "ofrep", 500, FLAGS));
        check_common(lang, "ofrep", &r);
    }
}
