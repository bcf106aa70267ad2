//! flagd parity: the behaviours flagd documents and its evaluator tests pin down — fractional
//! vectors, sem_ver operators, string operators, `$ref`, disabled flags, null defaults, null
//! targeting results, and error reasons.

#![allow(clippy::needless_pass_by_value)] // helpers take `json!` literals by value, for readability

use rampart_flags::{Bump, Context, ErrorCode, FlagSet, Reason};
use serde_json::{Value, json};

fn set(doc: Value) -> FlagSet {
    FlagSet::from_value("test.json", doc).unwrap_or_else(|e| panic!("{e}"))
}

/// (variant, value, reason, error code) of `flag` under `ctx`.
fn eval(set: &FlagSet, flag: &str, ctx: Value) -> (Option<String>, Option<Value>, Reason, Option<ErrorCode>) {
    let arena = Bump::new();
    let ctx = Context::from_json(&ctx, &arena).unwrap();
    let r = set.evaluate(flag, &ctx, &arena);
    (r.variant_name().map(str::to_owned), r.value().cloned(), r.reason, r.error)
}

fn variant(set: &FlagSet, flag: &str, ctx: Value) -> Option<String> {
    eval(set, flag, ctx).0
}

fn header_color(seed: Value) -> FlagSet {
    set(json!({"flags": {"headerColor": {
        "state": "ENABLED",
        "variants": {"red": "#FF0000", "blue": "#0000FF", "green": "#00FF00", "yellow": "#FFFF00"},
        "defaultVariant": "red",
        "targeting": {"fractional": [
            {"cat": [seed, {"var": "email"}]},
            ["red", 25], ["blue", 25], ["green", 25], ["yellow", 25]
        ]}
    }}}))
}

#[test]
fn fractional_vectors_with_flag_key() {
    let s = header_color(json!({"var": "$flagd.flagKey"}));
    for (email, want) in [
        ("rachel@faas.com", "blue"),
        ("monica@faas.com", "yellow"),
        ("joey@faas.com", "red"),
        ("ross@faas.com", "blue"),
    ] {
        let (v, _, reason, _) = eval(&s, "headerColor", json!({"email": email}));
        assert_eq!(v.as_deref(), Some(want), "{email}");
        assert_eq!(reason, Reason::TargetingMatch);
    }
}

#[test]
fn fractional_vectors_with_seed() {
    let s = header_color(json!("my-seed"));
    for (email, want) in [
        ("rachel@faas.com", "green"),
        ("monica@faas.com", "red"),
        ("joey@faas.com", "blue"),
        ("ross@faas.com", "green"),
    ] {
        assert_eq!(variant(&s, "headerColor", json!({"email": email})).as_deref(), Some(want), "{email}");
    }
}

#[test]
fn fractional_implicit_key_is_flag_key_plus_targeting_key() {
    // The implicit form buckets on flagKey + targetingKey: identical to an explicit `cat`.
    let implicit = set(json!({"flags": {"f": {"state": "ENABLED", "variants": {"a": 1, "b": 2, "c": 3},
        "defaultVariant": "a", "targeting": {"fractional": [["a", 1], ["b", 1], ["c", 1]]}}}}));
    let explicit = set(json!({"flags": {"f": {"state": "ENABLED", "variants": {"a": 1, "b": 2, "c": 3},
        "defaultVariant": "a", "targeting": {"fractional": [{"cat": [{"var": "$flagd.flagKey"}, {"var": "targetingKey"}]},
        ["a", 1], ["b", 1], ["c", 1]]}}}}));
    let mut seen = std::collections::HashSet::new();
    for i in 0..200 {
        let key = format!("user-{i}");
        let a = variant(&implicit, "f", json!({"targetingKey": key}));
        assert_eq!(a, variant(&explicit, "f", json!({"targetingKey": key})));
        seen.insert(a);
    }
    assert_eq!(seen.len(), 3, "all three variants are reachable");
    // No targeting key: fractional gives null and the flag falls to its default.
    assert_eq!(eval(&implicit, "f", json!({})).2, Reason::Default);
}

fn sem_ver(op: &str, version: &str) -> FlagSet {
    set(json!({"flags": {"f": {"state": "ENABLED", "variants": {"yes": true, "no": false}, "defaultVariant": "no",
        "targeting": {"if": [{"sem_ver": [{"var": "version"}, op, version]}, "yes", null]}}}}))
}

#[test]
fn sem_ver_operators() {
    let cases = [
        ("=", "1.2.3", "1.2.3", true),
        ("=", "1.2.3", "1.2.4", false),
        ("!=", "1.2.3", "1.2.4", true),
        ("!=", "1.2.3", "1.2.3", false),
        ("<", "1.2.3", "1.2.2", true),
        ("<", "1.2.3", "1.2.3", false),
        ("<=", "1.2.3", "1.2.3", true),
        ("<=", "1.2.3", "1.3.0", false),
        (">", "1.2.3", "1.10.0", true),
        (">", "1.2.3", "1.2.3", false),
        (">=", "1.2.3", "1.2.3", true),
        (">=", "1.2.3", "1.2.3-alpha", false),
        ("^", "1.2.3", "1.9.0", true),
        ("^", "1.2.3", "2.0.0", false),
        ("~", "1.2.3", "1.2.9", true),
        ("~", "1.2.3", "1.3.0", false),
        ("=", "v1.2.3", "1.2.3", true),
    ];
    for (op, rule_version, ctx_version, matches) in cases {
        let s = sem_ver(op, rule_version);
        let (v, _, reason, _) = eval(&s, "f", json!({"version": ctx_version}));
        let want = if matches { (Some("yes"), Reason::TargetingMatch) } else { (Some("no"), Reason::Default) };
        assert_eq!((v.as_deref(), reason), want, "{ctx_version} {op} {rule_version}");
    }
    // Not a version: the rule cannot match; the flag falls to its default.
    let s = sem_ver(">=", "1.0.0");
    assert_eq!(variant(&s, "f", json!({"version": "not-a-version"})).as_deref(), Some("no"));
    assert_eq!(variant(&s, "f", json!({})).as_deref(), Some("no"));
}

#[test]
fn starts_with_and_ends_with() {
    let s = set(json!({"flags": {"f": {"state": "ENABLED", "variants": {"a": "A", "b": "B", "c": "C"},
    "defaultVariant": "c",
    "targeting": {"if": [
        {"starts_with": [{"var": "email"}, "admin@"]}, "a",
        {"ends_with": [{"var": "email"}, "@faas.com"]}, "b",
        null
    ]}}}}));
    assert_eq!(variant(&s, "f", json!({"email": "admin@x.org"})).as_deref(), Some("a"));
    assert_eq!(variant(&s, "f", json!({"email": "ross@faas.com"})).as_deref(), Some("b"));
    assert_eq!(variant(&s, "f", json!({"email": "ross@example.com"})).as_deref(), Some("c"));
    assert_eq!(variant(&s, "f", json!({"email": 42})).as_deref(), Some("c"));
    assert_eq!(variant(&s, "f", json!({})).as_deref(), Some("c"));
}

#[test]
fn evaluator_refs() {
    let s = set(json!({
        "$evaluators": {"isFaas": {"in": ["@faas.com", {"var": "email"}]}},
        "flags": {"f": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": {"if": [{"$ref": "isFaas"}, "on", "off"]}}}
    }));
    assert_eq!(eval(&s, "f", json!({"email": "ballmer@faas.com"})).0.as_deref(), Some("on"));
    assert_eq!(
        eval(&s, "f", json!({"email": "x@y.com"})),
        (Some("off".into()), Some(json!(false)), Reason::TargetingMatch, None)
    );
}

#[test]
fn flagd_context_keys() {
    let s = set(json!({"flags": {
        "by-key": {"state": "ENABLED", "variants": {"mine": 1, "other": 2}, "defaultVariant": "other",
            "targeting": {"if": [{"==": [{"var": "$flagd.flagKey"}, "by-key"]}, "mine", null]}},
        "by-time": {"state": "ENABLED", "variants": {"past": 1, "future": 2}, "defaultVariant": "future",
            "targeting": {"if": [{">": [{"var": "$flagd.timestamp"}, 1_600_000_000]}, "past", null]}},
        "by-user": {"state": "ENABLED", "variants": {"vip": 1, "anon": 2}, "defaultVariant": "anon",
            "targeting": {"if": [{"==": [{"var": "targetingKey"}, "u-1"]}, "vip", null]}}
    }}));
    assert_eq!(variant(&s, "by-key", json!({})).as_deref(), Some("mine"));
    assert_eq!(variant(&s, "by-time", json!({})).as_deref(), Some("past"));
    assert_eq!(variant(&s, "by-user", json!({"targetingKey": "u-1"})).as_deref(), Some("vip"));
    assert_eq!(variant(&s, "by-user", json!({"targetingKey": "u-2"})).as_deref(), Some("anon"));
    // A context cannot forge flagd's own properties.
    assert_eq!(variant(&s, "by-key", json!({"$flagd": {"flagKey": "x"}})).as_deref(), Some("mine"));
}

#[test]
fn reasons() {
    let s = set(json!({"flags": {
        "static": {"state": "ENABLED", "variants": {"a": "A"}, "defaultVariant": "a"},
        "disabled": {"state": "DISABLED", "variants": {"a": "A"}, "defaultVariant": "a"},
        "no-default": {"state": "ENABLED", "variants": {"a": "A"}, "defaultVariant": null},
        "missing-default": {"state": "ENABLED", "variants": {"a": "A"}},
        "targeting-null": {"state": "ENABLED", "variants": {"a": "A", "b": "B"}, "defaultVariant": "a",
            "targeting": {"if": [{"==": [{"var": "x"}, 1]}, "b", null]}},
        "targeting-null-no-default": {"state": "ENABLED", "variants": {"a": "A"}, "defaultVariant": null,
            "targeting": {"if": [false, "a", null]}},
        "unknown-variant": {"state": "ENABLED", "variants": {"a": "A"}, "defaultVariant": "a",
            "targeting": {"var": "pick"}},
        "bool-result": {"state": "ENABLED", "variants": {"true": "T", "false": "F"}, "defaultVariant": "false",
            "targeting": {"==": [{"var": "x"}, 1]}},
        "empty-targeting": {"state": "ENABLED", "variants": {"a": "A"}, "defaultVariant": "a", "targeting": {}}
    }}));
    assert_eq!(eval(&s, "static", json!({})), (Some("a".into()), Some(json!("A")), Reason::Static, None));
    assert_eq!(eval(&s, "disabled", json!({})), (None, None, Reason::Disabled, None));
    assert_eq!(eval(&s, "no-default", json!({})), (None, None, Reason::Default, None));
    assert_eq!(eval(&s, "missing-default", json!({})), (None, None, Reason::Default, None));
    assert_eq!(eval(&s, "targeting-null", json!({})), (Some("a".into()), Some(json!("A")), Reason::Default, None));
    assert_eq!(eval(&s, "targeting-null", json!({"x": 1})).2, Reason::TargetingMatch);
    assert_eq!(eval(&s, "targeting-null-no-default", json!({})), (None, None, Reason::Default, None));
    assert_eq!(
        eval(&s, "unknown-variant", json!({"pick": "zzz"})),
        (None, None, Reason::Error, Some(ErrorCode::General))
    );
    assert_eq!(eval(&s, "unknown-variant", json!({"pick": "a"})).2, Reason::TargetingMatch);
    assert_eq!(eval(&s, "bool-result", json!({"x": 1})).0.as_deref(), Some("true"));
    assert_eq!(eval(&s, "bool-result", json!({"x": 2})).0.as_deref(), Some("false"));
    assert_eq!(eval(&s, "empty-targeting", json!({})).2, Reason::Static);
    assert_eq!(eval(&s, "nope", json!({})), (None, None, Reason::Error, Some(ErrorCode::FlagNotFound)));
}

#[test]
fn ramp_split_and_targeting_precedence() {
    let s = set(json!({"flags": {
        "r": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": {"if": [{"==": [{"var": "email"}, "qa@x.com"]}, "on", null]},
            "ramp": {"treatment": "on", "percent": 30}},
        "by-attr": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "ramp": {"treatment": "on", "percent": 100, "bucketBy": "userId"}}
    }}));
    let mut on = 0;
    for i in 0..2000 {
        let (v, _, reason, _) = eval(&s, "r", json!({"targetingKey": format!("u{i}")}));
        assert_eq!(reason, Reason::Split);
        on += usize::from(v.as_deref() == Some("on"));
    }
    assert!((450..750).contains(&on), "about 30% of 2000 treated, got {on}");
    assert_eq!(eval(&s, "r", json!({"email": "qa@x.com"})).2, Reason::TargetingMatch);
    assert_eq!(eval(&s, "r", json!({})), (Some("off".into()), Some(json!(false)), Reason::Default, None));
    assert_eq!(eval(&s, "by-attr", json!({"userId": "7"})).0.as_deref(), Some("on"));
    assert_eq!(eval(&s, "by-attr", json!({"targetingKey": "7"})).2, Reason::Default);
}
