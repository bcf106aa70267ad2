//! The evaluation context: attributes (flagd's `targetingKey` among them) laid out in a caller-owned
//! arena, so building one per request and evaluating every flag against it costs no heap allocation
//! once the arena is warm.

use std::time::{SystemTime, UNIX_EPOCH};

use datalogic_rs::DataValue;
use datalogic_rs::bumpalo::Bump;
use datalogic_rs::bumpalo::collections::Vec as BumpVec;
use datalogic_rs::datavalue::NumberValue;

/// Context key of the targeting key, as in flagd and OpenFeature.
pub const TARGETING_KEY: &str = "targetingKey";
/// Context key flagd reserves for its own properties (`$flagd.flagKey`, `$flagd.timestamp`).
const FLAGD_KEY: &str = "$flagd";

/// An evaluation context, borrowed from an arena and the caller's strings.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    attrs: &'a [(&'a str, DataValue<'a>)],
    targeting_key: Option<&'a str>,
    /// Fixed by the builder, else read from the clock when a rule needs it.
    timestamp: Option<i64>,
}

/// Most top-level attributes in a context built from JSON.
pub const MAX_CONTEXT_KEYS: usize = 1024;
/// Most values in all (nested ones included) in a context built from JSON.
pub const MAX_CONTEXT_VALUES: usize = 16_384;
/// Deepest nesting of a context attribute.
pub const MAX_CONTEXT_DEPTH: usize = 32;

/// Why a JSON value cannot be a context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    #[error("the evaluation context must be a JSON object")]
    NotAnObject,
    #[error(
        "the evaluation context is too large (at most {MAX_CONTEXT_KEYS} attributes, {MAX_CONTEXT_VALUES} values, \
         nested {MAX_CONTEXT_DEPTH} deep)"
    )]
    TooLarge,
}

impl<'a> Context<'a> {
    /// An empty context (no targeting key).
    pub fn empty() -> Context<'static> {
        Context { attrs: &[], targeting_key: None, timestamp: None }
    }

    /// Starts a context whose attributes live in `arena`.
    pub fn builder(arena: &'a Bump) -> ContextBuilder<'a> {
        ContextBuilder { arena, attrs: BumpVec::with_capacity_in(8, arena), targeting_key: None, timestamp: None }
    }

    /// The context of a JSON object (`null` is the empty context), within [`MAX_CONTEXT_KEYS`],
    /// [`MAX_CONTEXT_VALUES`] and [`MAX_CONTEXT_DEPTH`]. Strings are borrowed; linear in the size
    /// of the object (its keys are unique already).
    pub fn from_json(value: &'a serde_json::Value, arena: &'a Bump) -> Result<Self, ContextError> {
        let mut b = Context::builder(arena);
        match value {
            serde_json::Value::Null => {}
            serde_json::Value::Object(map) => {
                check_size(map)?;
                b.attrs.reserve(map.len());
                for (k, v) in map {
                    if k == FLAGD_KEY {
                        continue;
                    }
                    let v = to_data(v, arena);
                    if k == TARGETING_KEY {
                        b.targeting_key = v.as_str();
                    }
                    b.attrs.push((k, v));
                }
            }
            _ => return Err(ContextError::NotAnObject),
        }
        Ok(b.build())
    }

    /// The targeting key, when the context has a string one.
    pub fn targeting_key(&self) -> Option<&'a str> {
        self.targeting_key
    }

    /// The string attribute `key`, if present and a string.
    pub fn str_attr(&self, key: &str) -> Option<&'a str> {
        self.attrs.iter().find(|(k, _)| *k == key).and_then(|(_, v)| v.as_str())
    }

    /// Unix seconds, as `$flagd.timestamp` gives them: the builder's, else now.
    pub fn timestamp(&self) -> i64 {
        self.timestamp.unwrap_or_else(now)
    }

    /// The JSONLogic data for evaluating `flag_key`: the attributes plus
    /// `$flagd: {flagKey, timestamp}`.
    pub(crate) fn data_for<'x>(&self, flag_key: &'x str, arena: &'x Bump) -> &'x DataValue<'x>
    where
        'a: 'x,
    {
        let flagd = arena.alloc_slice_fill_iter([
            ("flagKey", DataValue::String(flag_key)),
            ("timestamp", DataValue::Number(NumberValue::from_i64(self.timestamp()))),
        ]);
        let n = self.attrs.len();
        let attrs = arena.alloc_slice_fill_with(n + 1, |i| match self.attrs.get(i) {
            Some(pair) => *pair,
            None => (FLAGD_KEY, DataValue::Object(flagd)),
        });
        arena.alloc(DataValue::Object(attrs))
    }
}

/// Builds a [`Context`] in an arena. A later value for the same key replaces the earlier one.
#[derive(Debug)]
pub struct ContextBuilder<'a> {
    arena: &'a Bump,
    attrs: BumpVec<'a, (&'a str, DataValue<'a>)>,
    targeting_key: Option<&'a str>,
    timestamp: Option<i64>,
}

impl<'a> ContextBuilder<'a> {
    /// Sets `targetingKey`.
    pub fn targeting_key(self, key: &'a str) -> Self {
        self.value(TARGETING_KEY, DataValue::String(key))
    }

    /// Sets a string attribute.
    pub fn attr(self, key: &'a str, value: &'a str) -> Self {
        self.value(key, DataValue::String(value))
    }

    /// Sets an attribute of any JSON shape. `$flagd` is reserved and ignored.
    pub fn value(mut self, key: &'a str, value: DataValue<'a>) -> Self {
        if key == FLAGD_KEY {
            return self;
        }
        if key == TARGETING_KEY {
            self.targeting_key = value.as_str();
        }
        match self.attrs.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((key, value)),
        }
        self
    }

    /// Fixes `$flagd.timestamp` (default: the time each rule is evaluated).
    pub fn timestamp(mut self, unix_seconds: i64) -> Self {
        self.timestamp = Some(unix_seconds);
        self
    }

    /// The arena the context lives in.
    pub fn arena(&self) -> &'a Bump {
        self.arena
    }

    pub fn build(self) -> Context<'a> {
        Context { attrs: self.attrs.into_bump_slice(), targeting_key: self.targeting_key, timestamp: self.timestamp }
    }
}

/// Counts the object's attributes, values and depth without recursion.
fn check_size(map: &serde_json::Map<String, serde_json::Value>) -> Result<(), ContextError> {
    if map.len() > MAX_CONTEXT_KEYS {
        return Err(ContextError::TooLarge);
    }
    let mut values = 0usize;
    let mut stack: Vec<(&serde_json::Value, usize)> = map.values().map(|v| (v, 1)).collect();
    while let Some((v, depth)) = stack.pop() {
        values += 1;
        if values > MAX_CONTEXT_VALUES || depth > MAX_CONTEXT_DEPTH {
            return Err(ContextError::TooLarge);
        }
        match v {
            serde_json::Value::Array(items) => stack.extend(items.iter().map(|i| (i, depth + 1))),
            serde_json::Value::Object(m) => stack.extend(m.values().map(|i| (i, depth + 1))),
            _ => {}
        }
    }
    Ok(())
}

/// Deep-converts a JSON value into the arena, borrowing its strings.
fn to_data<'a>(value: &'a serde_json::Value, arena: &'a Bump) -> DataValue<'a> {
    use serde_json::Value as J;
    match value {
        J::Null => DataValue::Null,
        J::Bool(b) => DataValue::Bool(*b),
        J::Number(n) => DataValue::Number(match n.as_i64() {
            Some(i) => NumberValue::from_i64(i),
            None => NumberValue::from_f64(n.as_f64().unwrap_or(f64::NAN)),
        }),
        J::String(s) => DataValue::String(s),
        J::Array(items) => DataValue::Array(arena.alloc_slice_fill_iter(items.iter().map(|v| to_data(v, arena)))),
        J::Object(map) => {
            DataValue::Object(arena.alloc_slice_fill_iter(map.iter().map(|(k, v)| (k.as_str(), to_data(v, arena)))))
        }
    }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs().try_into().unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_contexts_are_bounded_and_built_in_linear_time() {
        let arena = Bump::new();
        let wide: serde_json::Map<String, serde_json::Value> =
            (0..MAX_CONTEXT_KEYS).map(|i| (format!("k{i}"), serde_json::json!(i))).collect();
        let wide = serde_json::Value::Object(wide);
        let ctx = Context::from_json(&wide, &arena).unwrap();
        assert_eq!(ctx.attrs.len(), MAX_CONTEXT_KEYS);
        let mut wider = wide.as_object().unwrap().clone();
        wider.insert("one-more".into(), serde_json::Value::Null);
        let wider = serde_json::Value::Object(wider);
        assert_eq!(Context::from_json(&wider, &arena).unwrap_err(), ContextError::TooLarge);
        let mut deep = serde_json::json!(1);
        for _ in 0..MAX_CONTEXT_DEPTH {
            deep = serde_json::json!([deep]);
        }
        let deep = serde_json::json!({ "a": deep });
        assert_eq!(Context::from_json(&deep, &arena).unwrap_err(), ContextError::TooLarge);
        let many = serde_json::json!({ "a": vec![0; MAX_CONTEXT_VALUES] });
        assert_eq!(Context::from_json(&many, &arena).unwrap_err(), ContextError::TooLarge);
    }

    #[test]
    fn builder_sets_and_replaces() {
        let arena = Bump::new();
        let ctx = Context::builder(&arena).targeting_key("a").attr("email", "x@y").targeting_key("b").build();
        assert_eq!(ctx.targeting_key(), Some("b"));
        assert_eq!(ctx.str_attr("email"), Some("x@y"));
        assert_eq!(ctx.str_attr("missing"), None);
    }

    #[test]
    fn from_json_requires_an_object_and_ignores_reserved_key() {
        let arena = Bump::new();
        let bad = serde_json::json!([1]);
        assert_eq!(Context::from_json(&bad, &arena).unwrap_err(), ContextError::NotAnObject);
        let v = serde_json::json!({"targetingKey": 7, "$flagd": {"flagKey": "evil"}, "n": 1.5});
        let ctx = Context::from_json(&v, &arena).unwrap();
        assert_eq!(ctx.targeting_key(), None, "a non-string targeting key is no targeting key");
        let data = ctx.data_for("real", &arena);
        let flagd = data.as_object().unwrap().iter().filter(|(k, _)| *k == "$flagd").count();
        assert_eq!(flagd, 1);
    }
}
