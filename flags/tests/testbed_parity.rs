//! Agreement with flagd's own evaluator suite (flagd-testbed) where the formats overlap.
//!
//! `data/parity_flags.json` re-expresses the testbed's evaluation scenarios in a file of our own;
//! `data/parity_cases.json` lists each case with the result flagd gives and the scenario or flagd
//! source that justifies it. Every case must match: variant, value, reason and error code.
//!
//! A rule with a `$ref` to a missing evaluator or an unknown operator: flagd loads it and fails each
//! evaluation with `PARSE_ERROR`, as a sidecar does (`FlagSet::from_file_tolerant`); the strict
//! load used here (`rampart check`, the control plane's API) rejects the file with located errors,
//! which is checked instead.

use rampart_flags::{Bump, Context, FlagSet};
use serde_json::Value;

const FLAGS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/parity_flags.json");
const CASES: &str = include_str!("data/parity_cases.json");

/// Flags flagd loads but fails at evaluation, which Rampart rejects at load time.
const REJECTED_AT_LOAD: [&str; 2] = ["dangling-evaluator-ref", "targeting-unknown-operator"];

#[test]
fn every_testbed_case_agrees_with_flagd() {
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(FLAGS).unwrap()).unwrap();
    let err = FlagSet::from_value("parity_flags.json", doc.clone()).unwrap_err();
    let rejected: Vec<&str> = err.problems().iter().map(|p| p.path.as_str()).collect();
    assert_eq!(rejected, REJECTED_AT_LOAD.map(|f| format!("flags.{f}.targeting")), "{err}");
    let flags = doc["flags"].as_object_mut().unwrap();
    REJECTED_AT_LOAD.iter().for_each(|f| assert!(flags.shift_remove(*f).is_some()));
    let set = FlagSet::from_value("parity_flags.json", doc).unwrap_or_else(|e| panic!("{e}"));
    let cases: Vec<Value> = serde_json::from_str(CASES).unwrap();
    let cases: Vec<Value> =
        cases.into_iter().filter(|c| !REJECTED_AT_LOAD.contains(&c["flag"].as_str().unwrap_or(""))).collect();
    assert!(cases.len() >= 60, "the suite has {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let arena = Bump::new();
        let ctx = Context::from_json(&case["context"], &arena).unwrap();
        let flag = case["flag"].as_str().unwrap();
        let r = set.evaluate(flag, &ctx, &arena);
        let expect = &case["expect"];
        let got_value = r.value().cloned().unwrap_or(Value::Null);
        let same_value = match (got_value.as_f64(), expect["value"].as_f64()) {
            (Some(a), Some(b)) => a == b,
            _ => got_value == expect["value"],
        };
        let ok = r.variant_name() == expect["variant"].as_str()
            && same_value
            && r.reason.as_str() == expect["reason"]
            && r.error.map(|c| c.as_str()) == expect["error_code"].as_str();
        if !ok {
            failures.push(format!(
                "{}: flag {flag} ctx {}: got ({:?}, {got_value}, {}, {:?}), want {expect}",
                case["name"],
                case["context"],
                r.variant_name(),
                r.reason,
                r.error
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases disagree:\n{}", failures.len(), cases.len(), failures.join("\n"));
}
