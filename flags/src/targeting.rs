//! Targeting rules: flagd's JSONLogic dialect (`fractional`, `sem_ver`, `starts_with`, `ends_with`)
//! compiled once by `datalogic-rs`, with `{"$ref": name}` resolved against `$evaluators` first.

use std::fmt::Write as _;
use std::sync::LazyLock;

use datalogic_rs::bumpalo::Bump;
use datalogic_rs::bumpalo::collections::String as BumpString;
use datalogic_rs::{DataValue, Engine, Logic};
use serde_json::{Map, Value};

use crate::bucket::Hashing;
use crate::context::Context;
use crate::operators;
use crate::resolution::ErrorCode;

/// The one JSONLogic engine: immutable, shared by every compiled rule.
static ENGINE: LazyLock<Engine> = LazyLock::new(|| operators::register(Engine::builder()).build());

/// How deep `$ref`s may nest in one another before the definition is rejected as cyclic.
const MAX_REF_DEPTH: usize = 16;
/// Most JSON nodes a rule may expand to: evaluators that each refer to the next several times
/// grow exponentially, and a few hundred bytes must not exhaust memory.
const MAX_EXPANDED_NODES: usize = 100_000;

/// A compiled targeting rule.
#[derive(Debug)]
pub(crate) struct Targeting {
    logic: Logic,
}

/// What a targeting rule said for one context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TargetingOutcome<'x> {
    /// A variant name (not yet checked against the flag's variants).
    Variant(&'x str),
    /// `null` (or nothing usable): fall through to the ramp or the default variant.
    NoVariant,
    Failed(ErrorCode),
}

/// Why a rule could not be prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RuleError {
    /// `$ref` to a name not in `$evaluators`; carries the name.
    MissingRef(String),
    /// `$ref`s that nest too deeply (a cycle).
    RefCycle,
    /// `$ref` whose value is not a string.
    BadRef,
    /// `$ref`s expand past [`MAX_EXPANDED_NODES`].
    TooLarge,
    /// The JSONLogic compiler's message.
    Compile(String),
}

impl Targeting {
    /// Compiles `rule` (already `$ref`-expanded); `fractional` hashes as `hashing` says.
    pub(crate) fn compile(rule: &Value, hashing: Hashing) -> Result<Targeting, RuleError> {
        if let Some(op) = unknown_operator(rule) {
            return Err(RuleError::Compile(format!("unknown operator \"{op}\"")));
        }
        ENGINE
            .compile(&rename_operators(rule, hashing))
            .map(|logic| Targeting { logic })
            .map_err(|e| RuleError::Compile(e.to_string()))
    }

    pub(crate) fn run<'x>(&'x self, flag_key: &'x str, ctx: &Context<'x>, arena: &'x Bump) -> TargetingOutcome<'x> {
        let data = ctx.data_for(flag_key, arena);
        match ENGINE.evaluate(&self.logic, data, arena) {
            Ok(DataValue::String(s)) => TargetingOutcome::Variant(s),
            Ok(DataValue::Bool(true)) => TargetingOutcome::Variant("true"),
            Ok(DataValue::Bool(false)) => TargetingOutcome::Variant("false"),
            Ok(DataValue::Null) => TargetingOutcome::NoVariant,
            // flagd names the variant by the result's JSON text: `2` selects variant "2".
            Ok(DataValue::Number(n)) => {
                let mut name = BumpString::new_in(arena);
                let written = match n.as_i64() {
                    Some(i) => write!(name, "{i}"),
                    None => write!(name, "{}", n.as_f64()),
                };
                match written {
                    Ok(()) => TargetingOutcome::Variant(name.into_bump_str()),
                    Err(_) => TargetingOutcome::Failed(ErrorCode::General),
                }
            }
            Ok(_) => TargetingOutcome::Failed(ErrorCode::General),
            Err(_) => TargetingOutcome::Failed(ErrorCode::ParseError),
        }
    }
}

/// Replaces every `{"$ref": name}` in `rule` with `evaluators[name]` (recursively).
pub(crate) fn expand_refs(rule: &Value, evaluators: &Map<String, Value>) -> Result<Value, RuleError> {
    let mut budget = MAX_EXPANDED_NODES;
    expand(rule, evaluators, 0, &mut budget)
}

fn expand(rule: &Value, evaluators: &Map<String, Value>, depth: usize, budget: &mut usize) -> Result<Value, RuleError> {
    *budget = budget.checked_sub(1).ok_or(RuleError::TooLarge)?;
    match rule {
        Value::Object(map) if map.len() == 1 && map.contains_key("$ref") => {
            let Some(name) = map["$ref"].as_str() else { return Err(RuleError::BadRef) };
            let target = evaluators.get(name).ok_or_else(|| RuleError::MissingRef(name.to_owned()))?;
            if depth >= MAX_REF_DEPTH {
                return Err(RuleError::RefCycle);
            }
            expand(target, evaluators, depth + 1, budget)
        }
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (k, v) in map {
                out.insert(k.clone(), expand(v, evaluators, depth, budget)?);
            }
            Ok(Value::Object(out))
        }
        Value::Array(items) => {
            items.iter().map(|v| expand(v, evaluators, depth, budget)).collect::<Result<_, _>>().map(Value::Array)
        }
        other => Ok(other.clone()),
    }
}

/// The first operator in `rule` the engine does not know. The engine would only fail on it when
/// the rule runs; a definition file should fail when it loads.
fn unknown_operator(rule: &Value) -> Option<&str> {
    match rule {
        Value::Object(map) => {
            if map.len() == 1
                && let Some(op) = map.keys().next()
                && operators::rename(op, Hashing::Utf8).is_none()
                && !ENGINE.builtin_operator_names().any(|known| known == op)
            {
                return Some(op);
            }
            map.values().find_map(unknown_operator)
        }
        Value::Array(items) => items.iter().find_map(unknown_operator),
        _ => None,
    }
}

/// `rule` with flagd's operator names replaced by the registered names of [`operators`].
fn rename_operators(rule: &Value, hashing: Hashing) -> Value {
    match rule {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let name = if map.len() == 1 { operators::rename(k, hashing).unwrap_or(k) } else { k };
                    (name.to_owned(), rename_operators(v, hashing))
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| rename_operators(v, hashing)).collect()),
        other => other.clone(),
    }
}

/// Every `$ref` name used in `rule` (for validating `$evaluators` references up front).
pub(crate) fn refs_in<'v>(rule: &'v Value, out: &mut Vec<&'v str>) {
    match rule {
        Value::Object(map) => {
            if let Some(Value::String(name)) = map.get("$ref") {
                out.push(name);
            }
            map.values().for_each(|v| refs_in(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| refs_in(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn evaluators() -> Map<String, Value> {
        json!({"emailWithFaas": {"ends_with": [{"var": "email"}, "@faas.com"]},
               "nested": {"!": {"$ref": "emailWithFaas"}},
               "loop": {"$ref": "loop"}})
        .as_object()
        .cloned()
        .unwrap()
    }

    #[test]
    fn refs_expand_recursively() {
        let rule = json!({"if": [{"$ref": "nested"}, "a", "b"]});
        let got = expand_refs(&rule, &evaluators()).unwrap();
        assert_eq!(got, json!({"if": [{"!": {"ends_with": [{"var": "email"}, "@faas.com"]}}, "a", "b"]}));
    }

    #[test]
    fn ref_errors() {
        let ev = evaluators();
        assert_eq!(expand_refs(&json!({"$ref": "nope"}), &ev), Err(RuleError::MissingRef("nope".into())));
        assert_eq!(expand_refs(&json!({"$ref": "loop"}), &ev), Err(RuleError::RefCycle));
        assert_eq!(expand_refs(&json!({"$ref": 3}), &ev), Err(RuleError::BadRef));
    }

    #[test]
    fn unknown_operator_fails_to_compile() {
        assert!(matches!(Targeting::compile(&json!({"no_such_op": [1]}), Hashing::Utf8), Err(RuleError::Compile(_))));
    }
}
