//! flagd-testbed's evaluator scenarios (the version shipped in the `open-feature-flagd` crate)
//! against a real `rampart proxy` serving the testbed's `testkit-flags.json` unchanged, over
//! Connect JSON (flagd.evaluation.v2), OFREP and `rampart eval`. Scenarios tagged for other
//! `fractional` hash versions (`@fractional-v1`, the legacy float bucketing; `@fractional-v3`)
//! are left out: Rampart implements released flagd's (`@fractional-v2`).

mod process;
#[path = "../proxy/tests/support/mod.rs"]
mod support;
mod testbed;

use std::process::Command;

use serde_json::{Map, Value, json};
use support::post_json;
use testbed::{Case, Details};

const SKIP: &[&str] = &["@fractional-v1", "@fractional-v3"];

fn details(value: Value, reason: Option<&Value>, metadata: Option<&Value>) -> Details {
    Details {
        value,
        reason: reason.and_then(Value::as_str).map(str::to_owned),
        error_code: None,
        metadata: metadata.and_then(Value::as_object).cloned().unwrap_or_default(),
    }
}

fn error(case: &Case, code: &str) -> Details {
    Details {
        value: case.fallback.clone(),
        reason: Some("ERROR".to_owned()),
        error_code: Some(code.to_owned()),
        metadata: Map::new(),
    }
}

/// The value a client returns: the flag's when present and of the asked type, else the fallback
/// (with TYPE_MISMATCH when present but of another type).
fn value_or_fallback(case: &Case, value: Option<&Value>, reason: Option<&Value>, metadata: Option<&Value>) -> Details {
    match value {
        Some(v) if !v.is_null() && !case.type_matches(v) => error(case, "TYPE_MISMATCH"),
        Some(v) if !v.is_null() => details(v.clone(), reason, metadata),
        _ => details(case.fallback.clone(), reason, metadata),
    }
}

async fn connect(grpc: std::net::SocketAddr, case: &Case) -> Details {
    let method = match case.kind.as_str() {
        "Integer" => "Int",
        "Boolean" => "Boolean",
        other => other,
    };
    let url = format!("http://{grpc}/flagd.evaluation.v2.Service/Resolve{method}");
    let body = json!({"flagKey": case.key, "context": case.context}).to_string();
    let (status, _, body) = post_json(&url, &body, &[]).await;
    if status.is_success() {
        // proto3 JSON writes int64 as a string.
        let value = match (case.kind.as_str(), body.get("value")) {
            ("Integer", Some(Value::String(s))) => s.parse::<i64>().ok().map(Value::from),
            (_, v) => v.cloned(),
        };
        return value_or_fallback(case, value.as_ref(), body.get("reason"), body.get("metadata"));
    }
    let code = match body["code"].as_str() {
        Some("not_found") => "FLAG_NOT_FOUND",
        Some("invalid_argument") => "TYPE_MISMATCH",
        Some("data_loss") => "PARSE_ERROR",
        _ => "GENERAL",
    };
    error(case, code)
}

async fn ofrep(addr: std::net::SocketAddr, case: &Case) -> Details {
    let url = format!("http://{addr}/ofrep/v1/evaluate/flags/{}", case.key);
    let (status, _, body) = post_json(&url, &json!({"context": case.context}).to_string(), &[]).await;
    if status.is_success() {
        return value_or_fallback(case, body.get("value"), body.get("reason"), body.get("metadata"));
    }
    error(case, body["errorCode"].as_str().unwrap_or("GENERAL"))
}

fn eval(flags: &std::path::Path, case: &Case) -> Details {
    let out = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .arg("eval")
        .arg(flags)
        .arg(&case.key)
        .arg("--context")
        .arg(Value::Object(case.context.clone()).to_string())
        .output()
        .unwrap();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return error(case, if err.contains("FLAG_NOT_FOUND") { "FLAG_NOT_FOUND" } else { "GENERAL" });
    }
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    if let Some(code) = got.get("errorCode").and_then(Value::as_str) {
        return error(case, code);
    }
    value_or_fallback(case, got.get("value"), got.get("reason"), got.get("metadata"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_evaluator_suite_passes_over_connect_ofrep_and_eval() {
    let dir = testbed::evaluator_dir();
    let flags = dir.join("flags/testkit-flags.json");
    let cases = testbed::cases(&dir.join("gherkin"), SKIP);
    assert!(cases.len() >= 100, "{} cases", cases.len());

    let up = support::upstream().await;
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nupstream = \"http://{}\"\nflags = \"{}\"\n\
             [queries]\ngrpc = \"127.0.0.1:0\"\nofrep = \"127.0.0.1:0\"\n",
            up.addr,
            flags.display()
        ),
    )
    .unwrap();
    let sidecar = process::start(&["proxy"], &config, "rampart proxy serving");
    let (grpc, ofrep_addr) = (sidecar.addr("grpc"), sidecar.addr("ofrep"));

    let mut failures = Vec::new();
    for case in &cases {
        for (surface, got) in [
            ("connect", connect(grpc, case).await),
            ("ofrep", ofrep(ofrep_addr, case).await),
            ("eval", eval(&flags, case)),
        ] {
            if let Err(e) = case.check(&got) {
                failures.push(format!("[{surface}] {e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} checks failed:\n{}", failures.len(), cases.len() * 3, failures.join("\n"));
}

/// The testbed's `@fractional-v3` examples (CBOR-keyed hashing, as newer in-process evaluators
/// hash) pass when the flag set chooses it: `testkit-flags.json` with `metadata.fractionalVersion:
/// v3` added, evaluated by `rampart eval`.
#[test]
fn fractional_v3_examples_pass_when_the_flag_set_chooses_cbor_hashing() {
    let dir = testbed::evaluator_dir();
    let mut doc: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("flags/testkit-flags.json")).unwrap()).unwrap();
    doc.as_object_mut().unwrap().insert("metadata".to_owned(), json!({"fractionalVersion": "v3"}));
    let work = tempfile::tempdir().unwrap();
    let flags = work.path().join("v3.json");
    std::fs::write(&flags, doc.to_string()).unwrap();
    let targeting = dir.parent().unwrap().join("gherkin");
    let skip = ["@fractional-v1", "@fractional-v2", "@fractional-nested"];
    let cases: Vec<Case> = testbed::cases(&targeting, &skip)
        .into_iter()
        .filter(|c| {
            c.name.starts_with("targeting:") && c.key.starts_with("fractional") && doc["flags"].get(&c.key).is_some()
        })
        .collect();
    assert!(cases.len() >= 15, "{} v3 cases", cases.len());
    let failures: Vec<String> = cases.iter().filter_map(|c| c.check(&eval(&flags, c)).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
