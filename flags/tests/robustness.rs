//! Robustness of `rampart-flags`: no input (arbitrary bytes, arbitrary JSON, mutated flag documents,
//! hostile evaluation contexts) makes loading or evaluation panic; every resolution keeps its
//! invariants; every planted semantic error is reported with its flag's key path.

use std::panic::resume_unwind;

use datalogic_rs::DataValue;
use datalogic_rs::datavalue::NumberValue;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{TestCaseError, TestRunner};
use rampart_flags::{Bump, Context, ContextError, ErrorCode, Flag, FlagSet, Format, Reason, Resolution, TARGETING_KEY};
use serde_json::{Map, Value, json};

// ---------------------------------------------------------------------------------------------
// Strategies: JSON values
// ---------------------------------------------------------------------------------------------

/// Numbers of every JSON shape: small, huge, negative, fractional, extreme (never NaN or infinite).
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => (-1_000i64..1_000).prop_map(Value::from),
        2 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        2 => (-1e6f64..1e6).prop_map(Value::from),
        1 => any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        1 => select(vec![
            json!(u64::MAX),
            json!(i64::MIN),
            json!(i64::MAX),
            json!(1e308),
            json!(-1e308),
            json!(5e-324),
            json!(-0.0),
            json!(100.000_000_000_001),
            json!(4_294_967_296u64),
        ]),
    ]
}

fn repeat(c: char, n: usize) -> String {
    std::iter::repeat_n(c, n).collect()
}

/// Short strings (unicode, control characters, flag-ish words) and now and then a 10k-char one.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "\\PC{0,12}",
        2 => ".{0,8}",
        2 => select(vec![
            "", "on", "off", "a", "b", "true", "false", "null", "ENABLED", "DISABLED", "$ref", "$flagd", "1.2.3",
            "v2.3.0-rc.1+build", "2.3", "é", "🦀", "\u{0}", "\u{202e}", " ", ".", "a.b", "flags",
        ])
        .prop_map(str::to_owned),
        1 => (any::<char>(), Just(10_000usize)).prop_map(|(c, n)| repeat(c, n)),
    ]
}

/// Object keys: mostly names the loader or the evaluator gives a meaning to.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(vec![
            "flags", "$evaluators", "metadata", "$schema", "state", "variants", "defaultVariant", "targeting",
            "ramp", "treatment", "percent", "bucketBy", "$ref", "var", "if", "fractional", "sem_ver",
            "targetingKey", "email", "on", "off",
        ])
        .prop_map(str::to_owned),
        1 => text(),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf =
        prop_oneof![Just(Value::Null), any::<bool>().prop_map(Value::Bool), number(), text().prop_map(Value::String),];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((key(), inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn obj<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

// ---------------------------------------------------------------------------------------------
// Strategies: targeting rules and flag documents
// ---------------------------------------------------------------------------------------------

const VARIANT_NAMES: &[&str] = &["on", "off", "a", "b", "c", "true", "false", "blue", "yellow"];
const REF_NAMES: &[&str] = &["staff", "beta", "chain", "loop", "missing"];

fn variant_name() -> impl Strategy<Value = String> {
    prop_oneof![5 => select(VARIANT_NAMES).prop_map(str::to_owned), 1 => text()]
}

fn var_path() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => select(vec![
            "targetingKey", "email", "appVersion", "country", "age", "user.profile.age", "user.profile",
            "$flagd.flagKey", "$flagd.timestamp", "tags.0", "", ".", "a..b",
        ])
        .prop_map(Value::from),
        1 => text().prop_map(Value::String),
        1 => number(),
        1 => (text(), json_value()).prop_map(|(p, d)| json!([p, d])),
        1 => Just(json!([])),
    ]
}

/// A small JSONLogic grammar in flagd's dialect, with `$ref`s to a handful of names.
fn rule() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        32 => var_path().prop_map(|p| obj([("var", p)])),
        24 => variant_name().prop_map(Value::String),
        8 => number(),
        8 => any::<bool>().prop_map(Value::Bool),
        4 => Just(Value::Null),
        4 => select(REF_NAMES).prop_map(|n| obj([("$ref", n.into())])),
        1 => json_value().prop_map(|n| obj([("$ref", n)])),
    ];
    leaf.prop_recursive(5, 40, 5, |inner| {
        let op = select(vec![
            "var",
            "if",
            "==",
            "!=",
            "<",
            "in",
            "and",
            "or",
            "!",
            "cat",
            "fractional",
            "sem_ver",
            "starts_with",
            "ends_with",
        ]);
        let weight = prop_oneof![
            4 => (0i64..100).prop_map(Value::from),
            1 => number(),
            1 => Just(Value::Null),
        ];
        let bucket = prop_oneof![
            4 => (variant_name(), weight).prop_map(|(n, w)| json!([n, w])),
            1 => variant_name().prop_map(|n| json!([n])),
            1 => inner.clone(),
        ];
        prop_oneof![
            3 => (op, vec(inner.clone(), 0..5)).prop_map(|(op, args)| obj([(op, Value::Array(args))])),
            1 => (select(vec!["!", "var", "cat", "if", "fractional"]), inner.clone())
                .prop_map(|(op, a)| obj([(op, a)])),
            2 => (inner.clone(), inner.clone(), inner.clone()).prop_map(|(c, a, b)| obj([("if", json!([c, a, b]))])),
            2 => (inner.clone(), select(vec!["=", "!=", "<", "<=", ">", ">=", "^", "~", "=="]), inner.clone())
                .prop_map(|(a, op, b)| obj([("sem_ver", json!([a, op, b]))])),
            2 => (option::of(inner.clone()), vec(bucket, 0..4)).prop_map(|(key, buckets)| {
                obj([("fractional", Value::Array(key.into_iter().chain(buckets).collect()))])
            }),
            1 => (inner.clone(), vec(inner.clone(), 0..4)).prop_map(|(a, l)| obj([("in", json!([a, l]))])),
            1 => (select(vec!["starts_with", "ends_with"]), inner.clone(), inner)
                .prop_map(|(op, a, b)| obj([(op, json!([a, b]))])),
        ]
    })
}

fn state() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        40 => select(vec!["ENABLED", "ENABLED", "DISABLED"]).prop_map(|s| Some(Value::from(s))),
        1 => json_value().prop_map(Some),
        1 => Just(None),
    ]
}

/// Values of one variant type: boolean, string, number or object.
fn typed_value(kind: u8) -> BoxedStrategy<Value> {
    match kind {
        0 => any::<bool>().prop_map(Value::Bool).boxed(),
        1 => text().prop_map(Value::String).boxed(),
        2 => number().boxed(),
        _ => vec((key(), json_value()), 0..3).prop_map(|kv| Value::Object(kv.into_iter().collect())).boxed(),
    }
}

/// A non-empty variant map whose values usually share one type.
fn variants() -> impl Strategy<Value = Map<String, Value>> {
    prop_oneof![
        30 => (0u8..4).prop_flat_map(|kind| vec((variant_name(), typed_value(kind)), 2..6)),
        1 => vec((variant_name(), json_value()), 1..4),
    ]
    .prop_map(|kv| kv.into_iter().collect())
}

fn name_from(names: Vec<String>) -> impl Strategy<Value = Value> + Clone {
    prop_oneof![30 => select(names).prop_map(Value::String), 1 => text().prop_map(Value::String)]
}

fn ramp(names: Vec<String>) -> impl Strategy<Value = Value> {
    let percent = prop_oneof![
        12 => (0.0f64..=100.0).prop_map(Value::from),
        6 => (0u8..=100).prop_map(Value::from),
        1 => number(),
        1 => json_value(),
    ];
    let treatment = option::weighted(0.97, name_from(names));
    let percent = option::weighted(0.95, percent);
    let bucket_by = option::weighted(
        0.3,
        prop_oneof![9 => select(vec!["email", "user.id", "country"]).prop_map(Value::from), 1 => json_value()],
    );
    let slow_us = option::weighted(0.2, prop_oneof![9 => any::<u32>().prop_map(Value::from), 1 => json_value()]);
    let extra = option::weighted(0.05, (key(), json_value()));
    (treatment, percent, bucket_by, slow_us, extra).prop_map(|(t, p, b, slow, extra)| {
        let mut m = Map::new();
        let fields = [("treatment", t), ("percent", p), ("bucketBy", b), ("slowUs", slow)];
        for (k, v) in fields.into_iter().filter_map(|(k, v)| Some((k.to_owned(), v?))).chain(extra) {
            m.insert(k, v);
        }
        Value::Object(m)
    })
}

/// A targeting rule shaped to pick among `names` (the flag's variants), or any rule at all.
fn targeting(names: Vec<String>) -> impl Strategy<Value = Value> {
    let name = name_from(names.clone());
    let pick = prop_oneof![3 => name.clone(), 1 => Just(Value::Null)];
    prop_oneof![
        4 => (rule(), name.clone(), pick).prop_map(|(c, a, b)| obj([("if", json!([c, a, b]))])),
        2 => (option::weighted(0.3, rule()), vec((name, 0i64..100), 1..4)).prop_map(|(key, buckets)| {
            let buckets = buckets.into_iter().map(|(n, w)| json!([n, w]));
            obj([("fractional", Value::Array(key.into_iter().chain(buckets).collect()))])
        }),
        1 => select(names).prop_map(Value::String),
        1 => select(&REF_NAMES[..3]).prop_map(|n| obj([("$ref", n.into())])),
        2 => rule(),
    ]
}

/// A mostly valid flag definition: its default and ramp treatment usually name one of its variants.
fn flag_def() -> impl Strategy<Value = Value> {
    variants()
        .prop_flat_map(|vars| {
            let names: Vec<String> = vars.keys().cloned().collect();
            let default = prop_oneof![
                24 => name_from(names.clone()).prop_map(Some),
                2 => Just(Some(Value::Null)),
                2 => Just(None),
                1 => json_value().prop_map(Some),
            ];
            let variants = prop_oneof![
                60 => Just(Some(Value::Object(vars))),
                1 => Just(Some(json!({}))),
                1 => json_value().prop_map(Some),
                1 => Just(None),
            ];
            (
                variants,
                state(),
                default,
                option::weighted(0.7, targeting(names.clone())),
                option::weighted(0.4, ramp(names)),
                option::weighted(
                    0.1,
                    prop_oneof![
                        json_value(),
                        vec((key(), number()), 0..3).prop_map(|kv| json!(kv.into_iter().collect::<Map<_, _>>()))
                    ],
                ),
                option::weighted(0.02, (key(), json_value())),
                prop::bool::weighted(0.9),
            )
        })
        .prop_map(|(variants, state, default, targeting, mut ramp, metadata, extra, distinct)| {
            // A ramp's treatment must differ from the default (the control); usually make it so.
            if let (Some(Value::Object(r)), Some(Value::Object(vars)), Some(d), true) =
                (&mut ramp, &variants, &default, distinct)
                && r.get("treatment") == Some(d)
                && let Some(other) = vars.keys().find(|n| Some(n.as_str()) != d.as_str())
            {
                r.insert("treatment".to_owned(), Value::String(other.clone()));
            }
            let fields = [
                ("state", state),
                ("variants", variants),
                ("defaultVariant", default),
                ("targeting", targeting),
                ("ramp", ramp),
                ("metadata", metadata),
            ];
            let mut m: Map<String, Value> = fields.into_iter().filter_map(|(k, v)| Some((k.to_owned(), v?))).collect();
            m.extend(extra);
            Value::Object(m)
        })
}

fn flag_doc() -> impl Strategy<Value = Value> {
    let flag_name = prop_oneof![4 => "[a-z][a-z-]{0,7}", 1 => text()];
    // `staff`, `beta` and `chain` are usually defined, `loop` seldom, `missing` never.
    let evaluators = [0.9, 0.9, 0.9, 0.2].map(|p| option::weighted(p, rule()));
    let flags = prop_oneof![12 => vec((flag_name, flag_def()), 1..5), 1 => Just(Vec::new())];
    (flags, option::weighted(0.9, evaluators), option::weighted(0.02, (key(), json_value()))).prop_map(
        |(flags, evaluators, extra)| {
            let mut doc = Map::new();
            doc.insert("flags".to_owned(), Value::Object(flags.into_iter().collect()));
            if let Some(rules) = evaluators {
                let named = REF_NAMES.iter().zip(rules).filter_map(|(n, r)| Some(((*n).to_owned(), r?)));
                doc.insert("$evaluators".to_owned(), Value::Object(named.collect()));
            }
            doc.extend(extra);
            Value::Object(doc)
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Strategies: evaluation contexts
// ---------------------------------------------------------------------------------------------

/// `leaf` wrapped in `depth` levels of alternating objects and arrays.
fn nest(depth: usize, leaf: Value) -> Value {
    (0..depth).fold(leaf, |v, i| if i % 2 == 0 { json!({ "profile": v, "age": i }) } else { json!([v, i]) })
}

fn context_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => json_value(),
        2 => (0u8..=130).prop_map(|age| json!({ "profile": { "age": age } })),
        1 => json_value().prop_map(|age| json!({ "profile": { "age": age } })),
        1 => (any::<char>(), Just(100_000usize)).prop_map(|(c, n)| Value::String(repeat(c, n))),
        1 => (0usize..=50, json_value()).prop_map(|(d, leaf)| nest(d, leaf)),
        1 => json_value().prop_map(|leaf| nest(50, leaf)),
        2 => select(vec!["1.2.3", "v2.3.0", "2.3", "2.3.0-beta.1", "x.y.z", "", "999999999999999999999.0.0"])
            .prop_map(Value::from),
    ]
}

/// A context: usually an object whose every key may hold any type; sometimes not an object at all.
fn context() -> impl Strategy<Value = Value> {
    let ctx_key = prop_oneof![
        5 => select(vec![
            "targetingKey", "email", "appVersion", "user", "country", "age", "tier", "id", "$flagd", "user.id",
            "tags",
        ])
        .prop_map(str::to_owned),
        1 => text(),
    ];
    let targeting_key = option::weighted(0.6, text().prop_map(Value::String));
    prop_oneof![
        12 => (targeting_key, vec((ctx_key, context_value()), 0..8)).prop_map(|(tk, kv)| {
            Value::Object(tk.map(|tk| (TARGETING_KEY.to_owned(), tk)).into_iter().chain(kv).collect())
        }),
        1 => Just(Value::Null),
        1 => json_value(),
    ]
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

/// The context of `value` with `$flagd.timestamp` fixed to `timestamp`; `None` when not an object.
fn context_at<'a>(value: &'a Value, timestamp: i64, arena: &'a Bump) -> Option<Context<'a>> {
    let mut b = Context::builder(arena).timestamp(timestamp);
    match value {
        Value::Null => {}
        Value::Object(map) => {
            for (k, v) in map {
                b = b.value(k, to_data(v, arena));
            }
        }
        _ => return None,
    }
    Some(b.build())
}

fn to_data<'a>(value: &'a Value, arena: &'a Bump) -> DataValue<'a> {
    match value {
        Value::Null => DataValue::Null,
        Value::Bool(b) => DataValue::Bool(*b),
        Value::Number(n) => DataValue::Number(match n.as_i64() {
            Some(i) => NumberValue::from_i64(i),
            None => NumberValue::from_f64(n.as_f64().unwrap_or(f64::NAN)),
        }),
        Value::String(s) => DataValue::String(s),
        Value::Array(items) => DataValue::Array(arena.alloc_slice_fill_iter(items.iter().map(|v| to_data(v, arena)))),
        Value::Object(map) => {
            DataValue::Object(arena.alloc_slice_fill_iter(map.iter().map(|(k, v)| (k.as_str(), to_data(v, arena)))))
        }
    }
}

/// The invariants every resolution of `flag` keeps.
fn check_resolution(flag: &Flag, r: &Resolution<'_>) -> Result<(), TestCaseError> {
    let key = flag.key();
    prop_assert_eq!(
        r.reason == Reason::Error,
        r.error.is_some(),
        "{}: reason {} with error {:?}",
        key,
        r.reason,
        r.error
    );
    if let Some(v) = r.variant {
        prop_assert!(flag.variants().iter().any(|x| std::ptr::eq(x, v)), "{}: variant {:?} not the flag's", key, v);
        prop_assert_eq!(flag.variant(v.name()).map(|x| x.value()), Some(v.value()));
        prop_assert!(r.reason != Reason::Error && r.reason != Reason::Disabled, "{}: {} with a variant", key, r.reason);
    }
    if !flag.enabled() {
        prop_assert_eq!(r.reason, Reason::Disabled, "{}: disabled flag", key);
        prop_assert!(r.variant.is_none(), "{}: disabled flag gave a variant", key);
    }
    if r.reason == Reason::Static {
        prop_assert!(!flag.has_targeting() && flag.ramp().is_none(), "{}: STATIC with targeting or ramp", key);
        prop_assert_eq!(r.variant, flag.default_variant());
    }
    if r.reason == Reason::Split {
        prop_assert!(flag.ramp().is_some(), "{}: SPLIT without a ramp", key);
    }
    prop_assert_eq!(r.unit.is_some(), r.reason == Reason::Split, "{}: unit {:?} with {}", key, r.unit, r.reason);
    Ok(())
}

/// Evaluates every flag of `set` twice against `ctx` (and once against `again`, the same context
/// built separately), checking invariants and determinism; plus an unknown key.
fn check_set(set: &FlagSet, ctx: &Context<'_>, again: &Context<'_>) -> Result<(), TestCaseError> {
    let arena = Bump::new();
    for flag in set.flags() {
        let first = set.evaluate(flag.key(), ctx, &arena);
        check_resolution(flag, &first)?;
        prop_assert_eq!(first, set.evaluate(flag.key(), ctx, &arena), "{}: same context, other result", flag.key());
        prop_assert_eq!(first, flag.evaluate(again, &arena), "{}: equal context, other result", flag.key());
    }
    let missing = set.evaluate("\u{0}no such flag", ctx, &arena);
    prop_assert_eq!(missing.error, Some(ErrorCode::FlagNotFound));
    prop_assert_eq!(missing.reason, Reason::Error);
    Ok(())
}

/// Builds `value` as a context twice with the same timestamp (via `from_json` and the builder) and
/// checks every flag of `set` against it.
fn check_value(set: &FlagSet, value: &Value) -> Result<(), TestCaseError> {
    let arena = Bump::new();
    match Context::from_json(value, &arena) {
        Ok(ctx) => {
            let other = Bump::new();
            let again = context_at(value, ctx.timestamp(), &other).expect("an object or null");
            check_set(set, &ctx, &again)?;
            let fixed = context_at(value, 1_700_000_000, &other).expect("an object or null");
            check_set(set, &fixed, &fixed)
        }
        // Past the context bounds (generated values nest deep): refused, nothing evaluated.
        Err(ContextError::TooLarge) => {
            prop_assert!(matches!(value, Value::Object(_)));
            check_set(set, &Context::empty(), &Context::empty())
        }
        Err(e) => {
            prop_assert_eq!(e, ContextError::NotAnObject);
            prop_assert!(!matches!(value, Value::Null | Value::Object(_)));
            check_set(set, &Context::empty(), &Context::empty())
        }
    }
}

/// Runs `test` on `cases` values of `strategy()`. Generating the nested document strategies
/// recurses deeper than a debug build's 2 MiB test-thread stack allows, so the runner gets a big
/// stack; each case still runs on a 2 MiB thread, so deep recursion in the library is not hidden.
fn run_deep<S: Strategy>(
    cases: u32,
    strategy: impl FnOnce() -> S + Send + 'static,
    test: impl Fn(S::Value) -> Result<(), TestCaseError> + Send + Sync + 'static,
) where
    S::Value: Send,
{
    let runner = std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || {
            let mut runner = TestRunner::new(ProptestConfig::with_cases(cases));
            let result = runner.run(&strategy(), |value| {
                std::thread::scope(|s| {
                    let case = std::thread::Builder::new().stack_size(2 << 20).spawn_scoped(s, || test(value));
                    case.expect("spawn a case thread").join().unwrap_or_else(|panic| resume_unwind(panic))
                })
            });
            result.map_err(|e| e.to_string())
        })
        .expect("spawn the runner thread");
    if let Err(e) = runner.join().unwrap_or_else(|panic| resume_unwind(panic)) {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed flag sets
// ---------------------------------------------------------------------------------------------

fn config_set() -> FlagSet {
    FlagSet::from_file(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/flags.yaml")).expect("config/flags.yaml loads")
}

const RICH: &str = r#"{
  "$evaluators": {
    "adult": { ">=": [{ "var": "user.profile.age" }, 18] },
    "staff": { "ends_with": [{ "var": "email" }, "@example.com"] }
  },
  "flags": {
    "frac-implicit": {
      "state": "ENABLED", "variants": { "a": "A", "b": "B", "c": "C" }, "defaultVariant": "a",
      "targeting": { "fractional": [["a", 25], ["b", 25], ["c", 50]] }
    },
    "frac-keyed": {
      "state": "ENABLED", "variants": { "a": 1, "b": 2 }, "defaultVariant": null,
      "targeting": { "fractional": [{ "cat": [{ "var": "$flagd.flagKey" }, { "var": "email" }] }, ["a", 1], ["b"]] }
    },
    "semver": {
      "state": "ENABLED", "variants": { "old": false, "new": true }, "defaultVariant": "old",
      "targeting": { "if": [{ "sem_ver": [{ "var": "appVersion" }, ">=", "2.3.0"] }, "new",
                            { "sem_ver": [{ "var": "appVersion" }, "^", "1.0.0"] }, "old", null] }
    },
    "prefix": {
      "state": "ENABLED", "variants": { "admin": { "role": "admin" }, "user": { "role": "user" } },
      "defaultVariant": "user",
      "targeting": { "if": [{ "starts_with": [{ "var": "email" }, "admin"] }, "admin", null] }
    },
    "suffix": {
      "state": "ENABLED", "variants": { "true": true, "false": false }, "defaultVariant": "false",
      "targeting": { "$ref": "staff" }
    },
    "country": {
      "state": "ENABLED", "variants": { "eu": "eu", "row": "row" }, "defaultVariant": "row",
      "targeting": { "if": [{ "in": [{ "var": "country" }, ["de", "fr", "it"]] }, "eu",
                            { "in": ["@", { "var": "email" }] }, "row", null] }
    },
    "age": {
      "state": "ENABLED", "variants": { "minor": 0, "adult": 18, "senior": 65 }, "defaultVariant": "minor",
      "targeting": { "if": [{ "<": [{ "var": "user.profile.age" }, 18] }, "minor",
                            { "and": [{ "$ref": "adult" }, { "<": [{ "var": "user.profile.age" }, 65] }] }, "adult",
                            { "!": { "<": [{ "var": "user.profile.age" }, 65] } }, "senior", null] }
    },
    "compare": {
      "state": "ENABLED", "variants": { "eq": "eq", "ne": "ne" }, "defaultVariant": "ne",
      "targeting": { "if": [{ "or": [{ "==": [{ "var": "tier" }, 3] },
                                     { "!=": [{ "var": "tier" }, { "var": "id" }] }] },
                            "eq", "ne"] }
    },
    "clock": {
      "state": "ENABLED", "variants": { "later": true, "earlier": false }, "defaultVariant": "earlier",
      "targeting": { "if": [{ "<": [1600000000, { "var": "$flagd.timestamp" }] }, "later", "earlier"] }
    },
    "weird-result": {
      "state": "ENABLED", "variants": { "x": "x" }, "defaultVariant": "x",
      "targeting": { "var": "tier" }
    },
    "ramped": {
      "state": "ENABLED", "variants": { "on": true, "off": false }, "defaultVariant": "off",
      "ramp": { "treatment": "on", "percent": 37.5, "bucketBy": "email" }
    },
    "ramped-targeted": {
      "state": "ENABLED", "variants": { "on": "on", "off": "off", "vip": "vip" }, "defaultVariant": "off",
      "targeting": { "if": [{ "==": [{ "var": "tier" }, "vip"] }, "vip", null] },
      "ramp": { "treatment": "on", "percent": 50 }
    },
    "static": { "state": "ENABLED", "variants": { "one": 1 }, "defaultVariant": "one" },
    "no-default": { "state": "ENABLED", "variants": { "one": 1 } },
    "off": {
      "state": "DISABLED", "variants": { "on": true, "off": false }, "defaultVariant": "off",
      "targeting": { "fractional": [["on", 1], ["off", 1]] }, "ramp": { "treatment": "on", "percent": 100 }
    }
  }
}"#;

fn rich_set() -> FlagSet {
    FlagSet::from_str("rich.json", RICH).expect("the inline rich set loads")
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

/// Text that is nearly a valid document: a generated one, serialized, then cut and spliced.
fn near_valid_text() -> impl Strategy<Value = String> {
    (flag_doc(), any::<bool>(), any::<prop::sample::Index>(), any::<prop::sample::Index>(), ".{0,4}").prop_map(
        |(doc, yaml, cut, splice, junk)| {
            let mut s = if yaml { serde_norway::to_string(&doc).expect("yaml") } else { doc.to_string() };
            let chars: Vec<char> = s.chars().collect();
            if !chars.is_empty() {
                let at = splice.index(chars.len());
                let end = (at + cut.index(4)).min(chars.len());
                s = chars[..at].iter().chain(junk.chars().collect::<Vec<_>>().iter()).chain(&chars[end..]).collect();
            }
            s
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Any text, under any name and in either format, loads or fails; it never panics.
    #[test]
    fn arbitrary_text_never_panics(
        bytes in vec(any::<u8>(), 0..512),
        text in prop_oneof![".{0,256}", "[{}\\[\\]:,\"' \n\t\\-a-z0-9&*!|>%@`]{0,128}"],
    ) {
        let lossy = String::from_utf8_lossy(&bytes);
        for input in [lossy.as_ref(), text.as_str()] {
            for name in ["x.json", "x.yaml", "x"] {
                let _ = FlagSet::from_str(name, input);
            }
            for format in [Format::Json, Format::Yaml] {
                let _ = FlagSet::from_text("x", input, format);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Any JSON value, as the document or in any slot of one, loads or fails; it never panics.
    #[test]
    fn arbitrary_json_never_panics(value in json_value(), slot in 0usize..8) {
        let doc = match slot {
            0 => value,
            1 => json!({ "flags": value }),
            2 => json!({ "flags": { "f": value } }),
            3 => json!({ "flags": { "f": { "state": "ENABLED", "variants": value, "defaultVariant": "on" } } }),
            4 => json!({ "flags": { "f": { "state": "ENABLED", "variants": { "on": 1, "off": 2 },
                                            "defaultVariant": "off", "targeting": value } } }),
            5 => json!({ "flags": { "f": { "state": "ENABLED", "variants": { "on": 1, "off": 2 },
                                            "defaultVariant": "off", "ramp": value } } }),
            6 => json!({ "$evaluators": { "e": value }, "flags": { "f": { "state": "ENABLED",
                          "variants": { "on": 1 }, "targeting": { "$ref": "e" } } } }),
            _ => json!({ "flags": {}, "metadata": value }),
        };
        if let Ok(set) = FlagSet::from_value("any.json", doc) {
            check_value(&set, &json!({ "targetingKey": "u-1", "email": "a@example.com", "tier": 3 }))?;
            check_value(&set, &Value::Null)?;
        }
    }
}

/// Generated documents, serialized and damaged, load or fail; they never panic.
#[test]
fn near_valid_text_never_panics() {
    run_deep(256, near_valid_text, |text| {
        for name in ["x.json", "x.yaml", "x"] {
            if let Ok(set) = FlagSet::from_str(name, &text) {
                check_value(&set, &json!({ "targetingKey": "u-1", "email": "a@example.com" }))?;
            }
        }
        Ok(())
    });
}

/// Mostly valid documents with random targeting and ramps: loading never panics, and a loaded set
/// evaluates every flag against arbitrary contexts without panicking, keeping invariants.
#[test]
fn generated_documents_load_and_evaluate() {
    run_deep(
        384,
        || (flag_doc(), vec(context(), 1..4)),
        |(doc, contexts)| {
            let text = doc.to_string();
            let loaded = FlagSet::from_value("gen.json", doc);
            let reparsed = FlagSet::from_str("gen.json", &text);
            prop_assert_eq!(loaded.is_ok(), reparsed.is_ok(), "from_value and from_str disagree on {}", text);
            if let Err(e) = &loaded {
                prop_assert!(!e.problems().is_empty(), "an invalid document names no problem: {}", e);
            }
            if let Ok(set) = loaded {
                for value in &contexts {
                    check_value(&set, value)?;
                }
            }
            Ok(())
        },
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Hostile contexts against config/flags.yaml and the inline rich set keep every invariant.
    #[test]
    fn hostile_contexts_against_fixed_sets(value in context()) {
        thread_local! {
            static SETS: (FlagSet, FlagSet) = (config_set(), rich_set());
        }
        SETS.with(|(config, rich)| {
            check_value(config, &value)?;
            check_value(rich, &value)
        })?;
    }

    /// Every planted semantic error is reported, located under its own flag.
    #[test]
    fn every_planted_problem_is_reported(kinds in vec(0u8..8, 1..8), valid in 0usize..4) {
        let mut flags = Map::new();
        for i in 0..valid {
            flags.insert(format!("ok-{i}"),
                json!({ "state": "ENABLED", "variants": { "on": true, "off": false }, "defaultVariant": "off" }));
        }
        let bad: Vec<String> = (0..kinds.len()).map(|i| format!("bad-{i}")).collect();
        for (name, kind) in bad.iter().zip(&kinds) {
            let mut def =
                json!({ "state": "ENABLED", "variants": { "on": true, "off": false }, "defaultVariant": "off" });
            match kind {
                0 => def["defaultVariant"] = json!(format!("not-{name}")),
                1 => def["state"] = json!("ON"),
                2 => def["ramp"] = json!({ "treatment": "nope", "percent": 5 }),
                3 => def["variants"]["off"] = json!("false"),
                4 => def["colour"] = json!("red"),
                5 => def["targeting"] = json!({ "if": [{ "$ref": "absent" }, "on", null] }),
                6 => def["ramp"] = json!({ "treatment": "on", "percent": 150 }),
                _ => def["metadata"] = json!({ "owner": { "team": "x" } }),
            }
            flags.insert(name.clone(), def);
        }
        let err = FlagSet::from_value("planted.json", json!({ "flags": flags })).expect_err("planted errors");
        let problems = err.problems();
        prop_assert!(problems.len() >= kinds.len(), "{} problems for {} planted: {}", problems.len(), kinds.len(), err);
        let under = |name: &str, path: &str| {
            let rest = path.strip_prefix("flags.").and_then(|p| p.strip_prefix(name));
            rest.is_some_and(|r| r.is_empty() || r.starts_with('.'))
        };
        for p in problems {
            prop_assert!(bad.iter().any(|name| under(name, &p.path)), "problem outside a planted flag: {}", p);
        }
        for name in &bad {
            prop_assert!(problems.iter().any(|p| under(name, &p.path)), "{} planted but not reported: {}", name, err);
        }
        prop_assert!(err.to_string().starts_with("planted.json: flags.bad-"), "{}", err);
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed cases
// ---------------------------------------------------------------------------------------------

/// Deeply nested text is rejected (or loaded) without overflowing the stack.
#[test]
fn deep_nesting_in_text() {
    for depth in [100, 127, 200, 10_000] {
        let json = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let _ = FlagSet::from_str("deep.json", &json);
        let _ = FlagSet::from_str("deep.yaml", &json);
        let rule = format!("{}true{}", "{\"!\":".repeat(depth), "}".repeat(depth));
        let doc = format!(
            r#"{{"flags":{{"f":{{"state":"ENABLED","variants":{{"true":1,"false":0}},"defaultVariant":"false",
                 "targeting":{rule}}}}}}}"#
        );
        if let Ok(set) = FlagSet::from_str("deep.json", &doc) {
            let arena = Bump::new();
            let r = set.evaluate("f", &Context::empty(), &arena);
            assert_eq!(r.reason == Reason::Error, r.error.is_some());
        }
    }
}

/// YAML aliases that expand exponentially fail or load quickly; they do not hang or panic.
#[test]
fn yaml_alias_bomb() {
    let mut yaml = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..9 {
        let prev = i - 1;
        let refs = vec![format!("*a{prev}"); 10].join(", ");
        yaml.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    yaml.push_str("flags: *a8\n");
    assert!(FlagSet::from_str("bomb.yaml", &yaml).is_err());
}

/// The fixed sets themselves resolve as documented for a plain context.
#[test]
fn fixed_sets_sanity() {
    let arena = Bump::new();
    let ctx = Context::builder(&arena).targeting_key("user-1").attr("email", "admin@example.com").build();
    let rich = rich_set();
    assert_eq!(rich.evaluate("prefix", &ctx, &arena).variant_name(), Some("admin"));
    assert_eq!(rich.evaluate("suffix", &ctx, &arena).variant_name(), Some("true"));
    assert_eq!(rich.evaluate("off", &ctx, &arena).reason, Reason::Disabled);
    assert_eq!(rich.evaluate("static", &ctx, &arena).reason, Reason::Static);
    assert_eq!(config_set().evaluate("legacy-export", &ctx, &arena).reason, Reason::Disabled);
}

/// Evaluators that each refer to the next three times expand to 3^15 copies: the document is
/// rejected (located at the flag's targeting) instead of exhausting memory.
#[test]
fn ref_expansion_is_bounded() {
    let mut evaluators = Map::new();
    for i in 0..16 {
        let rule = if i == 15 {
            json!({ "==": [{ "var": "x" }, 1] })
        } else {
            json!({ "or": vec![json!({ "$ref": format!("e{}", i + 1) }); 3] })
        };
        evaluators.insert(format!("e{i}"), rule);
    }
    let doc = json!({
        "$evaluators": evaluators,
        "flags": { "f": { "state": "ENABLED", "variants": { "true": 1, "false": 0 }, "defaultVariant": "false",
                          "targeting": { "$ref": "e0" } } }
    });
    let err = FlagSet::from_value("refs.json", doc).unwrap_err();
    assert_eq!(err.problems().len(), 1, "{err}");
    assert_eq!(err.problems()[0].path, "flags.f.targeting");
    assert!(err.problems()[0].message.contains("expand to more than"), "{err}");
}
