//! Piecewise functions of simulated time: a scenario's per-arm error rate and latency multiplier.
//! A bare number is a constant; a table names its `kind` (`constant`, `ramp`, `step`, `spike`) and
//! may start only once the applied percent reaches `from_percent` (a regression that shows at scale).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

/// The shape of a function of time (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Shape {
    Constant {
        value: f64,
    },
    /// `from` until `start`, linear to `to` at `end`, `to` after.
    Ramp {
        from: f64,
        to: f64,
        start: f64,
        end: f64,
    },
    /// `before` until `at`, `after` from `at` on.
    Step {
        before: f64,
        after: f64,
        at: f64,
    },
    /// `base`, except `value` in `[start, end)`.
    Spike {
        base: f64,
        value: f64,
        start: f64,
        end: f64,
    },
}

impl Shape {
    pub(crate) fn at(&self, t: f64) -> f64 {
        match *self {
            Shape::Constant { value } => value,
            Shape::Ramp { from, to, start, end } => {
                if t <= start {
                    from
                } else if t >= end {
                    to
                } else {
                    from + (to - from) * (t - start) / (end - start)
                }
            }
            Shape::Step { before, after, at } => {
                if t < at {
                    before
                } else {
                    after
                }
            }
            Shape::Spike { base, value, start, end } => {
                if (start..end).contains(&t) {
                    value
                } else {
                    base
                }
            }
        }
    }

    /// Every value the function takes (the extremes of each piece).
    pub(crate) fn values(&self) -> Vec<f64> {
        match *self {
            Shape::Constant { value } => vec![value],
            Shape::Ramp { from, to, .. } => vec![from, to],
            Shape::Step { before, after, .. } => vec![before, after],
            Shape::Spike { base, value, .. } => vec![base, value],
        }
    }
}

/// A function of time, possibly relative to the moment the applied percent first reached
/// `from_percent` (its time 0). Before that moment the arm behaves like the control.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Curve {
    #[serde(flatten)]
    pub(crate) shape: Shape,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) from_percent: Option<f64>,
}

impl Curve {
    pub(crate) const fn constant(value: f64) -> Curve {
        Curve { shape: Shape::Constant { value }, from_percent: None }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Constant,
    Ramp,
    Step,
    Spike,
}

/// A curve table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    kind: Kind,
    value: Option<f64>,
    from: Option<f64>,
    to: Option<f64>,
    before: Option<f64>,
    after: Option<f64>,
    base: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    start: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    end: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    at: Option<Duration>,
    from_percent: Option<f64>,
}

impl Table {
    fn into_curve(self) -> Result<Curve, String> {
        let need = |v: Option<f64>, key: &str| v.ok_or_else(|| format!("kind = {:?} needs `{key}`", self.kind));
        let time = |v: Option<Duration>, key: &str| {
            v.map(|d| d.as_secs_f64()).ok_or_else(|| format!("kind = {:?} needs `{key}`", self.kind))
        };
        let used: &[&str] = match self.kind {
            Kind::Constant => &["value"],
            Kind::Ramp => &["from", "to", "start", "end"],
            Kind::Step => &["before", "after", "at"],
            Kind::Spike => &["base", "value", "start", "end"],
        };
        let given = [
            ("value", self.value.is_some()),
            ("from", self.from.is_some()),
            ("to", self.to.is_some()),
            ("before", self.before.is_some()),
            ("after", self.after.is_some()),
            ("base", self.base.is_some()),
            ("start", self.start.is_some()),
            ("end", self.end.is_some()),
            ("at", self.at.is_some()),
        ];
        if let Some((key, _)) = given.iter().find(|(key, set)| *set && !used.contains(key)) {
            return Err(format!("`{key}` is not a key of kind = {:?} (it takes {})", self.kind, used.join(", ")));
        }
        let shape = match self.kind {
            Kind::Constant => Shape::Constant { value: need(self.value, "value")? },
            Kind::Ramp => Shape::Ramp {
                from: need(self.from, "from")?,
                to: need(self.to, "to")?,
                start: time(self.start, "start")?,
                end: time(self.end, "end")?,
            },
            Kind::Step => Shape::Step {
                before: need(self.before, "before")?,
                after: need(self.after, "after")?,
                at: time(self.at, "at")?,
            },
            Kind::Spike => Shape::Spike {
                base: need(self.base, "base")?,
                value: need(self.value, "value")?,
                start: time(self.start, "start")?,
                end: time(self.end, "end")?,
            },
        };
        if let Shape::Ramp { start, end, .. } | Shape::Spike { start, end, .. } = shape
            && end <= start
        {
            return Err(format!("`end` ({end} s) must be after `start` ({start} s)"));
        }
        if let Some(p) = self.from_percent
            && !(p > 0.0 && p <= 100.0)
        {
            return Err(format!("`from_percent` must be in (0, 100], got {p}"));
        }
        Ok(Curve { shape, from_percent: self.from_percent })
    }
}

impl<'de> Deserialize<'de> for Curve {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CurveVisitor;

        impl<'de> Visitor<'de> for CurveVisitor {
            type Value = Curve;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or a table with `kind` = \"constant\" | \"ramp\" | \"step\" | \"spike\"")
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Curve, E> {
                Ok(Curve::constant(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Curve, E> {
                Ok(Curve::constant(v as f64))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Curve, E> {
                Ok(Curve::constant(v as f64))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Curve, A::Error> {
                let table = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
                table.into_curve().map_err(de::Error::custom)
            }
        }

        deserializer.deserialize_any(CurveVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Doc {
        f: Curve,
    }

    fn parse(text: &str) -> Result<Curve, String> {
        toml::from_str::<Doc>(text).map(|d| d.f).map_err(|e| e.to_string())
    }

    #[test]
    fn shapes_evaluate_piecewise() {
        let ramp = Shape::Ramp { from: 0.005, to: 0.01, start: 60.0, end: 660.0 };
        assert_eq!(ramp.at(0.0), 0.005);
        assert!((ramp.at(360.0) - 0.0075).abs() < 1e-12);
        assert_eq!(ramp.at(1000.0), 0.01);
        let step = Shape::Step { before: 1.0, after: 1.2, at: 300.0 };
        assert_eq!((step.at(299.9), step.at(300.0)), (1.0, 1.2));
        let spike = Shape::Spike { base: 0.005, value: 0.03, start: 240.0, end: 300.0 };
        assert_eq!((spike.at(239.0), spike.at(240.0), spike.at(299.9), spike.at(300.0)), (0.005, 0.03, 0.03, 0.005));
    }

    #[test]
    fn numbers_and_tables_parse() {
        assert_eq!(parse("f = 0.005").unwrap(), Curve::constant(0.005));
        assert_eq!(parse("f = 2").unwrap(), Curve::constant(2.0));
        let c = parse(r#"f = { kind = "ramp", from = 0.005, to = 0.01, start = "1m", end = "11m" }"#).unwrap();
        assert_eq!(c.shape, Shape::Ramp { from: 0.005, to: 0.01, start: 60.0, end: 660.0 });
        let c = parse(r#"f = { kind = "constant", value = 0.02, from_percent = 25 }"#).unwrap();
        assert_eq!(c.from_percent, Some(25.0));
    }

    #[test]
    fn bad_tables_are_refused_with_their_line() {
        let e = parse("\n\nf = { kind = \"step\", before = 1, after = 2 }").unwrap_err();
        assert!(e.contains("needs `at`") && e.contains("line 3"), "{e}");
        let e = parse(r#"f = { kind = "spike", base = 0, value = 1, start = "2m", end = "1m" }"#).unwrap_err();
        assert!(e.contains("must be after"), "{e}");
        let e = parse(r#"f = { kind = "constant", value = 1, at = "1m" }"#).unwrap_err();
        assert!(e.contains("`at` is not a key"), "{e}");
        let e = parse(r#"f = { kind = "wave", value = 1 }"#).unwrap_err();
        assert!(e.contains("unknown variant"), "{e}");
        let e = parse(r#"f = { kind = "constant", valeu = 1 }"#).unwrap_err();
        assert!(e.contains("unknown field `valeu`"), "{e}");
        assert!(parse(r#"f = "fast""#).unwrap_err().contains("a number or a table"));
    }
}
