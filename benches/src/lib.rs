//! Shared fixtures for the benches: flag sets of a given size and shape, the request context they
//! are evaluated against, the per-request loop the proxy runs (build the context, evaluate every
//! flag); the sidecar's config, flag files and requests in [`sidecar`].

pub mod sidecar;

use rampart_flags::{Bump, Context, FlagSet};
use serde_json::{Map, Value, json};

/// Flag-set sizes every shape is measured at.
pub const SIZES: [usize; 3] = [1, 10, 100];

/// The request's targeting key, email and country. The email is in no targeting list and the
/// country is `NL`, so the typical rule evaluates both of its branches before matching.
pub const TARGETING_KEY: &str = "user-4242";
pub const EMAIL: &str = "dana@example.com";
pub const COUNTRY: &str = "NL";

/// What every flag of a fixture set looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Two boolean variants and a default; no targeting, no ramp.
    Static,
    /// A typical flagd rule: an email allow-list (`in`), then a country match (`==`).
    Targeting,
    /// flagd's `fractional` over three variants, bucketed on `$flagd.flagKey` + targeting key.
    Fractional,
    /// Rampart's ramp block: 25 % of targeting keys get `on`.
    Ramp,
}

impl Shape {
    pub const ALL: [Shape; 4] = [Shape::Static, Shape::Targeting, Shape::Fractional, Shape::Ramp];

    /// Name used in bench ids and report rows.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Static => "static",
            Shape::Targeting => "targeting",
            Shape::Fractional => "fractional",
            Shape::Ramp => "ramp",
        }
    }

    /// Whether the shape runs JSONLogic (and so may use the arena). Shapes that do not are held to
    /// zero heap allocations per evaluation.
    pub fn uses_jsonlogic(self) -> bool {
        matches!(self, Shape::Targeting | Shape::Fractional)
    }

    /// The definition of one flag of this shape (flagd JSON, plus Rampart's `ramp`).
    pub fn definition(self) -> Value {
        let on_off = json!({"on": true, "off": false});
        match self {
            Shape::Static => json!({"state": "ENABLED", "variants": on_off, "defaultVariant": "off"}),
            Shape::Targeting => json!({
                "state": "ENABLED",
                "variants": on_off,
                "defaultVariant": "off",
                "targeting": {"if": [
                    {"in": [{"var": "email"}, ["a@x.com", "b@x.com", "c@x.com"]]}, "on",
                    {"if": [{"==": [{"var": "country"}, "NL"]}, "on", null]}
                ]}
            }),
            Shape::Fractional => json!({
                "state": "ENABLED",
                "variants": {"red": "#f00", "green": "#0f0", "blue": "#00f"},
                "defaultVariant": "red",
                "targeting": {"fractional": [["red", 34], ["green", 33], ["blue", 33]]}
            }),
            Shape::Ramp => json!({
                "state": "ENABLED",
                "variants": on_off,
                "defaultVariant": "off",
                "ramp": {"treatment": "on", "percent": 25}
            }),
        }
    }

    /// A compiled set of `n` flags of this shape, keyed `flag-000`, `flag-001`, ….
    ///
    /// # Panics
    /// If the fixture does not validate: a broken fixture must stop the bench, not skew it.
    pub fn flag_set(self, n: usize) -> FlagSet {
        let flags: Map<String, Value> = (0..n).map(|i| (format!("flag-{i:03}"), self.definition())).collect();
        let name = format!("{}-{n}.json", self.name());
        match FlagSet::from_value(&name, json!({ "flags": flags })) {
            Ok(set) => set,
            Err(e) => panic!("fixture {name} does not validate: {e}"),
        }
    }
}

/// The request context (targeting key, email, country), laid out in `arena` as the proxy does per
/// request.
pub fn context(arena: &Bump) -> Context<'_> {
    Context::builder(arena).targeting_key(TARGETING_KEY).attr("email", EMAIL).attr("country", COUNTRY).build()
}

/// One request's work: builds the context in `arena` and evaluates every flag of `set` against it.
/// Returns how many flags resolved to a variant, so the work cannot be optimised away.
pub fn evaluate_all(set: &FlagSet, arena: &Bump) -> usize {
    let ctx = context(arena);
    set.flags().iter().filter(|flag| flag.evaluate(&ctx, arena).variant.is_some()).count()
}

#[cfg(test)]
mod tests {
    use rampart_flags::Reason;

    use super::*;

    /// Each fixture resolves the way its name claims, so the benches measure the intended path.
    #[test]
    fn fixtures_take_the_intended_path() {
        let arena = Bump::new();
        let ctx = context(&arena);
        let expected = [
            (Shape::Static, Reason::Static),
            (Shape::Targeting, Reason::TargetingMatch),
            (Shape::Fractional, Reason::TargetingMatch),
            (Shape::Ramp, Reason::Split),
        ];
        for (shape, reason) in expected {
            let set = shape.flag_set(10);
            assert_eq!(set.len(), 10);
            for flag in set.flags() {
                let r = flag.evaluate(&ctx, &arena);
                assert_eq!(r.reason, reason, "{} {}", shape.name(), flag.key());
                assert!(r.variant.is_some());
            }
            assert_eq!(evaluate_all(&set, &arena), 10);
        }
    }
}
