//! One compiled flag and its evaluation: disabled → targeting → ramp → default variant.

use datalogic_rs::bumpalo::Bump;
use serde_json::{Map, Value};

use crate::bucket::Bucketer;
use crate::context::Context;
use crate::resolution::{ErrorCode, Reason, Resolution};
use crate::targeting::{Targeting, TargetingOutcome};

/// The type shared by all of a flag's variant values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueKind {
    Bool,
    String,
    Number,
    Object,
}

impl ValueKind {
    /// The kind of a JSON value; `None` for `null` and arrays, which no variant may hold.
    pub fn of(value: &Value) -> Option<ValueKind> {
        match value {
            Value::Bool(_) => Some(ValueKind::Bool),
            Value::String(_) => Some(ValueKind::String),
            Value::Number(_) => Some(ValueKind::Number),
            Value::Object(_) => Some(ValueKind::Object),
            Value::Null | Value::Array(_) => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ValueKind::Bool => "boolean",
            ValueKind::String => "string",
            ValueKind::Number => "number",
            ValueKind::Object => "object",
        }
    }
}

/// A named variant and its value. `index` is its position in the flag's variant list, stable for
/// the life of the compiled flag set (callers key precomputed data by it).
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub(crate) name: String,
    pub(crate) value: Value,
    pub(crate) index: usize,
}

impl Variant {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn value(&self) -> &Value {
        &self.value
    }

    pub fn index(&self) -> usize {
        self.index
    }
}

/// Rampart's ramp: `percent` of units (by `bucket_by`, default the targeting key) get `treatment`,
/// the rest the default variant.
#[derive(Debug, Clone, PartialEq)]
pub struct Ramp {
    pub(crate) treatment: usize,
    pub(crate) percent: f64,
    pub(crate) threshold: u32,
    pub(crate) bucket_by: Option<String>,
    pub(crate) bucketer: Bucketer,
    pub(crate) slow_us: Option<u64>,
}

impl Ramp {
    /// Index of the treatment variant.
    pub fn treatment(&self) -> usize {
        self.treatment
    }

    pub fn percent(&self) -> f64 {
        self.percent
    }

    /// The context attribute bucketed on; `None` means the targeting key.
    pub fn bucket_by(&self) -> Option<&str> {
        self.bucket_by.as_deref()
    }

    /// `slowUs`: the latency (µs) above which a request counts as slow for the ramp's latency
    /// guardrail, written by the control plane; `None` while no threshold is set. Evaluation
    /// ignores it.
    pub fn slow_us(&self) -> Option<u64> {
        self.slow_us
    }

    /// The bucket threshold: treatment iff the unit's bucket is below it (`percent × 1000`).
    pub fn threshold(&self) -> u32 {
        self.threshold
    }
}

/// A validated, compiled flag.
#[derive(Debug)]
pub struct Flag {
    pub(crate) key: String,
    pub(crate) enabled: bool,
    /// Kept out of service: its targeting did not compile (a tolerant load); evaluates to
    /// `PARSE_ERROR`, as flagd answers such a flag.
    pub(crate) broken: bool,
    pub(crate) variants: Vec<Variant>,
    pub(crate) default: Option<usize>,
    pub(crate) targeting: Option<Targeting>,
    pub(crate) ramp: Option<Ramp>,
    pub(crate) metadata: Map<String, Value>,
    pub(crate) kind: ValueKind,
}

impl Flag {
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the flag is in service: `false` for a flag kept out of service by a tolerant load
    /// (its rules did not compile); it evaluates to an error with [`ErrorCode::ParseError`].
    pub fn in_service(&self) -> bool {
        !self.broken
    }

    pub fn variants(&self) -> &[Variant] {
        &self.variants
    }

    pub fn variant(&self, name: &str) -> Option<&Variant> {
        self.variants.iter().find(|v| v.name == name)
    }

    pub fn default_variant(&self) -> Option<&Variant> {
        self.default.map(|i| &self.variants[i])
    }

    pub fn ramp(&self) -> Option<&Ramp> {
        self.ramp.as_ref()
    }

    pub fn has_targeting(&self) -> bool {
        self.targeting.is_some()
    }

    pub fn metadata(&self) -> &Map<String, Value> {
        &self.metadata
    }

    /// The type of every variant value.
    pub fn kind(&self) -> ValueKind {
        self.kind
    }

    /// Evaluates the flag. Allocates only in `arena`, and only when the flag has targeting.
    pub fn evaluate<'s>(&'s self, ctx: &Context<'_>, arena: &Bump) -> Resolution<'s> {
        if !self.enabled {
            return Resolution::of(None, Reason::Disabled);
        }
        if self.broken {
            return Resolution::error(ErrorCode::ParseError);
        }
        if let Some(targeting) = &self.targeting {
            match targeting.run(&self.key, ctx, arena) {
                TargetingOutcome::Variant(name) => {
                    return match self.variant(name) {
                        Some(v) => Resolution::of(Some(v), Reason::TargetingMatch),
                        None => Resolution::error(ErrorCode::General),
                    };
                }
                TargetingOutcome::NoVariant => {}
                TargetingOutcome::Failed(code) => return Resolution::error(code),
            }
        }
        if let Some(ramp) = &self.ramp {
            let unit = match &ramp.bucket_by {
                None => ctx.targeting_key(),
                Some(attr) => ctx.str_attr(attr),
            };
            if let Some(unit) = unit {
                let treated = ramp.bucketer.treated(unit.as_bytes(), ramp.threshold);
                let index = if treated { Some(ramp.treatment) } else { self.default };
                return Resolution::split(index.map(|i| &self.variants[i]), ramp.bucketer.unit_id(unit.as_bytes()));
            }
            return Resolution::of(self.default_variant(), Reason::Default);
        }
        let reason = if self.targeting.is_some() || self.default.is_none() { Reason::Default } else { Reason::Static };
        Resolution::of(self.default_variant(), reason)
    }
}
