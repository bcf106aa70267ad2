//! The flag set as a plain flagd document, for flagd clients that evaluate in-process (synced from
//! the sidecar): Rampart's `ramp` block becomes flagd's `fractional` with the treatment first —
//! `[[treatment, threshold], [control, 100000 − threshold]]`, the sidecar's own bucketing — so a
//! synced client and the sidecar assign every unit the same variant. Also the flag-set selection
//! flagd does by `selector` (`flagSetId=<id>`, the id from the flag's or the set's metadata).

use serde_json::{Map, Value, json};

use crate::bucket::BUCKETS;
use crate::flag::Flag;
use crate::flagset::FlagSet;

/// A flagd selector: which flag set a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selector<'a> {
    flag_set_id: &'a str,
}

impl<'a> Selector<'a> {
    /// Parses flagd's selector: `flagSetId=<id>`, or a bare `<id>`; empty means every flag.
    pub fn parse(text: &'a str) -> Option<Selector<'a>> {
        let text = text.trim();
        let id = text.strip_prefix("flagSetId=").unwrap_or(text).trim();
        (!id.is_empty()).then_some(Selector { flag_set_id: id })
    }

    /// Whether `flag` of `set` is in the selected flag set (its `flagSetId`, or the set's).
    pub fn selects(&self, set: &FlagSet, flag: &Flag) -> bool {
        let id = flag.metadata().get("flagSetId").or_else(|| set.metadata().get("flagSetId"));
        id.and_then(Value::as_str) == Some(self.flag_set_id)
    }
}

impl FlagSet {
    /// The flagd document a synced client evaluates: every selected flag, its `ramp` expressed as
    /// `fractional`, with `$evaluators` and the set's `metadata` as defined.
    pub fn to_flagd(&self, selector: Option<Selector<'_>>) -> Value {
        let definition = self.definition();
        let defs = definition.get("flags").and_then(Value::as_object);
        let mut flags = Map::new();
        for flag in self.flags() {
            if selector.is_some_and(|s| !s.selects(self, flag)) {
                continue;
            }
            let Some(Value::Object(def)) = defs.and_then(|d| d.get(flag.key())) else { continue };
            let mut def = def.clone();
            if let (Some(ramp), Some(control)) = (def.remove("ramp").and(flag.ramp()), flag.default_variant()) {
                let treatment = flag.variants()[ramp.treatment()].name();
                let t = ramp.threshold();
                let mut args = Vec::with_capacity(3);
                if let Some(attr) = ramp.bucket_by() {
                    args.push(json!({"cat": [{"var": "$flagd.flagKey"}, {"var": attr}]}));
                }
                args.push(json!([treatment, t]));
                args.push(json!([control.name(), BUCKETS - t]));
                let mut split = json!({"fractional": args});
                if let Some(attr) = ramp.bucket_by() {
                    // The sidecar does not split a unit without the attribute: default variant.
                    split = json!({"if": [{"var": attr}, split, null]});
                }
                let targeting = match def.remove("targeting") {
                    None | Some(Value::Null) => split,
                    Some(Value::Object(o)) if o.is_empty() => split,
                    // Targeting first; the split only when it gives no variant.
                    Some(rule) => json!({"if": [{"!=": [rule.clone(), null]}, rule, split]}),
                };
                def.insert("targeting".to_owned(), targeting);
            }
            flags.insert(flag.key().to_owned(), Value::Object(def));
        }
        let mut doc = Map::new();
        doc.insert("flags".to_owned(), Value::Object(flags));
        for key in ["$evaluators", "metadata"] {
            if let Some(v) = definition.get(key) {
                doc.insert(key.to_owned(), v.clone());
            }
        }
        Value::Object(doc)
    }
}

#[cfg(test)]
mod tests {
    use datalogic_rs::bumpalo::Bump;

    use super::*;
    use crate::context::Context;

    const FLAGS: &str = r#"{
      "metadata": {"flagSetId": "shop"},
      "flags": {
        "checkout": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                     "ramp": {"treatment": "on", "percent": 37}},
        "by-user": {"state": "ENABLED", "variants": {"new": "n", "old": "o"}, "defaultVariant": "old",
                    "targeting": {"if": [{"==": [{"var": "vip"}, true]}, "new", null]},
                    "ramp": {"treatment": "new", "percent": 12.5, "bucketBy": "userId"}},
        "other": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a",
                  "metadata": {"flagSetId": "ops"}}
      }}"#;

    #[test]
    fn a_ramp_evaluates_alike_as_fractional() {
        let set = FlagSet::from_str("f.json", FLAGS).unwrap();
        let synced = FlagSet::from_value("synced", set.to_flagd(None)).unwrap();
        assert!(synced.get("checkout").unwrap().ramp().is_none(), "no ramp block for flagd clients");
        let arena = Bump::new();
        for i in 0..2000 {
            let user = format!("user-{i}");
            for vip in [false, true] {
                let json = json!({"targetingKey": user, "userId": user, "vip": vip});
                let ctx = Context::from_json(&json, &arena).unwrap();
                for key in ["checkout", "by-user"] {
                    let (a, b) = (set.evaluate(key, &ctx, &arena), synced.evaluate(key, &ctx, &arena));
                    assert_eq!(a.variant_name(), b.variant_name(), "{key} {user} vip={vip}");
                }
            }
        }
        let empty = json!({});
        let none = Context::from_json(&empty, &arena).unwrap();
        assert_eq!(synced.evaluate("by-user", &none, &arena).variant_name(), Some("old"));
        assert_eq!(synced.evaluate("checkout", &none, &arena).variant_name(), Some("off"));
    }

    #[test]
    fn a_selector_keeps_one_flag_set() {
        let set = FlagSet::from_str("f.json", FLAGS).unwrap();
        let shop = set.to_flagd(Selector::parse("flagSetId=shop"));
        let keys: Vec<&String> = shop["flags"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["checkout", "by-user"]);
        let ops = set.to_flagd(Selector::parse("ops"));
        assert_eq!(ops["flags"].as_object().unwrap().len(), 1);
        assert_eq!(Selector::parse("  "), None);
    }
}
