//! Conversions between protobuf's `Struct`/`Value` (the flagd wire types) and JSON (what the flag
//! engine, Connect and OFREP speak).

use prost_types::value::Kind;
use serde_json::{Map, Number, Value};

/// A protobuf `Struct` as a JSON object.
pub(crate) fn struct_to_json(s: prost_types::Struct) -> Map<String, Value> {
    s.fields.into_iter().map(|(k, v)| (k, value_to_json(v))).collect()
}

/// A protobuf `Value` as JSON; a number that is not finite becomes `null`.
pub(crate) fn value_to_json(v: prost_types::Value) -> Value {
    match v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::NumberValue(n)) => number(n),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::StructValue(s)) => Value::Object(struct_to_json(s)),
        Some(Kind::ListValue(l)) => Value::Array(l.values.into_iter().map(value_to_json).collect()),
    }
}

/// A whole number as a JSON integer (so `1.0` in a context compares equal to `1` in a rule).
fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Value::Number(Number::from(n as i64))
    } else {
        Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

/// A JSON object as a protobuf `Struct`.
pub(crate) fn json_to_struct(map: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct { fields: map.iter().map(|(k, v)| (k.clone(), json_to_value(v))).collect() }
}

/// JSON as a protobuf `Value` (numbers become doubles, as `Struct` only has those).
pub(crate) fn json_to_value(v: &Value) -> prost_types::Value {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => {
            Kind::ListValue(prost_types::ListValue { values: items.iter().map(json_to_value).collect() })
        }
        Value::Object(map) => Kind::StructValue(json_to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn round_trips_through_struct() {
        let j = json!({"s": "x", "b": true, "n": 1.5, "i": 3, "nil": null, "l": [1, "a"], "o": {"k": false}});
        let back = Value::Object(struct_to_json(json_to_struct(j.as_object().unwrap())));
        assert_eq!(back, j);
    }
}
