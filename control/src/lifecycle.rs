//! Flags as a platform primitive: each flag's owner, description, creation time and expected
//! lifetime live in its metadata (`owner`, `description`, `createdAt`, `expectedLifetime`,
//! `archived`, `archivedAt`), so flagd-format files keep working; from those, the ramps and when
//! sidecars last evaluated it, each flag has a derived stage:
//!
//! - **archived**: `metadata.archived` (served as its default until removed);
//! - **ramping**: a ramp of it runs or is paused;
//! - **launched**: its last ramp reached 100%, or it serves a single variant (no targeting, no
//!   ramp) and was created at least `launched_after` ago;
//! - **stale**: launched and past its expected lifetime (from its creation), or not evaluated by
//!   any sidecar for `unused_after` — it can be removed;
//! - **new**: anything else.
//!
//! Pure: the caller passes the time, so tests (and `GET /api/v1/flags/lifecycle?at=`) can ask
//! about any moment.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::Value;

use crate::ramp::model::{Ramp, State};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Stage {
    New,
    Ramping,
    Launched,
    Stale,
    Archived,
}

impl Stage {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Stage::New => "new",
            Stage::Ramping => "ramping",
            Stage::Launched => "launched",
            Stage::Stale => "stale",
            Stage::Archived => "archived",
        }
    }
}

/// When a flag counts as launched or unused (`[lifecycle]` in the control plane's config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// A flag serving one variant this long after its creation is launched.
    pub launched_after_ms: i64,
    /// A flag no sidecar evaluated this long is stale.
    pub unused_after_ms: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { launched_after_ms: 7 * 86_400_000, unused_after_ms: 30 * 86_400_000 }
    }
}

/// One flag's lifecycle.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Life {
    pub(crate) flag: String,
    pub(crate) owner: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) stage: Stage,
    /// Since when it is in this stage, when known.
    pub(crate) since_ms: Option<i64>,
    pub(crate) created_ms: Option<i64>,
    pub(crate) expected_lifetime_ms: Option<i64>,
    pub(crate) last_evaluated_ms: Option<i64>,
    /// Why, in words.
    pub(crate) reason: String,
}

/// Parses an RFC 3339 time of the metadata.
pub(crate) fn parse_time(text: &str) -> Option<i64> {
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Unix ms as RFC 3339 (UTC, seconds).
pub(crate) fn format_time(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

fn days(ms: i64) -> String {
    let d = ms as f64 / 86_400_000.0;
    if d >= 1.0 { format!("{d:.0}d") } else { format!("{:.0}h", ms as f64 / 3_600_000.0) }
}

/// Every flag of `definition`, with its stage at `now_ms`. `usage`: when sidecars last evaluated
/// each flag.
pub(crate) fn assess(
    definition: &Value,
    ramps: &BTreeMap<i64, Ramp>,
    usage: &HashMap<String, i64>,
    now_ms: i64,
    policy: Policy,
) -> Vec<Life> {
    let Some(flags) = definition.get("flags").and_then(Value::as_object) else { return Vec::new() };
    let mut latest: HashMap<&str, &Ramp> = HashMap::new();
    for r in ramps.values() {
        latest.insert(&r.flag, r);
    }
    flags
        .iter()
        .map(|(key, def)| life(key, def, latest.get(key.as_str()).copied(), usage.get(key).copied(), now_ms, policy))
        .collect()
}

fn life(key: &str, def: &Value, ramp: Option<&Ramp>, last_evaluated: Option<i64>, now: i64, policy: Policy) -> Life {
    let meta = def.get("metadata");
    let text = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str).map(str::to_owned);
    let created = text("createdAt").as_deref().and_then(parse_time);
    let lifetime = text("expectedLifetime")
        .and_then(|l| humantime::parse_duration(&l).ok())
        .and_then(|d| i64::try_from(d.as_millis()).ok());
    let mut out = Life {
        flag: key.to_owned(),
        owner: text("owner"),
        description: text("description"),
        stage: Stage::New,
        since_ms: created,
        created_ms: created,
        expected_lifetime_ms: lifetime,
        last_evaluated_ms: last_evaluated,
        reason: String::new(),
    };
    if meta.and_then(|m| m.get("archived")).and_then(Value::as_bool) == Some(true) {
        out.stage = Stage::Archived;
        out.since_ms = text("archivedAt").as_deref().and_then(parse_time);
        out.reason = "archived: served as its default until removed".to_owned();
        return out;
    }
    if let Some(r) = ramp.filter(|r| r.state.active()) {
        out.stage = Stage::Ramping;
        out.since_ms = Some(r.started_ms);
        out.reason = format!("ramp {} is {} at {}%", r.id, r.state.as_str(), r.percent());
        return out;
    }
    let single = def.get("targeting").is_none_or(|t| t.is_null() || t.as_object().is_some_and(|o| o.is_empty()))
        && def.get("ramp").is_none_or(|_| ramp.is_some_and(|r| matches!(r.state, State::RolledBack | State::Aborted)));
    let launched = match ramp {
        Some(r) if r.state == State::Completed => {
            r.finished_ms.map(|at| (at, format!("ramp {} reached 100% on {}", r.id, format_time(at))))
        }
        _ => created.filter(|c| single && now - c >= policy.launched_after_ms).map(|c| {
            let at = c + policy.launched_after_ms;
            (at, format!("serves one variant since its creation on {}", format_time(c)))
        }),
    };
    // Past its expected lifetime (from creation, or from launch when its creation is unknown).
    if let (Some((launched_at, _)), Some(life)) = (&launched, lifetime) {
        let due = created.unwrap_or(*launched_at) + life;
        if now >= due {
            out.stage = Stage::Stale;
            out.since_ms = Some(due);
            out.reason =
                format!("launched and past its expected lifetime of {} (due {})", days(life), format_time(due));
            return out;
        }
    }
    // Not evaluated for `unused_after` (counting from its creation when never evaluated).
    if let Some(last) = last_evaluated.or(created)
        && now - last >= policy.unused_after_ms
    {
        out.stage = Stage::Stale;
        out.since_ms = Some(last + policy.unused_after_ms);
        out.reason = match last_evaluated {
            Some(at) => format!("not evaluated since {} ({} ago)", format_time(at), days(now - at)),
            None => format!("never evaluated since its creation on {}", format_time(last)),
        };
        return out;
    }
    match launched {
        Some((at, why)) => {
            out.stage = Stage::Launched;
            out.since_ms = Some(at);
            out.reason = why;
        }
        None => out.reason = "not launched yet".to_owned(),
    }
    out
}

/// Every current flag's lifecycle at `now_ms`, from this control plane's flags and ramps and the
/// store's evaluation times.
pub(crate) fn current(shared: &crate::state::Shared, now_ms: i64) -> Result<Vec<Life>, crate::store::StoreError> {
    let usage: HashMap<String, i64> = shared.store.flag_usage()?.into_iter().collect();
    let definition = shared.flags.borrow().definition.clone();
    let ramps = crate::state::lock(&shared.ramps).clone();
    Ok(assess(&definition, &ramps, &usage, now_ms, shared.lifecycle))
}

/// Flags per (stage, owner), for the gauges (`-` for flags without an owner).
pub(crate) fn counts(lives: &[Life]) -> BTreeMap<(Stage, String), usize> {
    let mut out = BTreeMap::new();
    for l in lives {
        *out.entry((l.stage, l.owner.clone().unwrap_or_else(|| "-".to_owned()))).or_insert(0) += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ramp::decide::Policy as RampPolicy;

    const DAY: i64 = 86_400_000;
    const T0: i64 = 1_796_000_000_000;

    fn flag(created: i64, lifetime: &str) -> Value {
        json!({"flags": {"f": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "metadata": {"owner": "payments", "createdAt": format_time(created), "expectedLifetime": lifetime}}}})
    }

    fn ramp(state: State, started: i64, finished: Option<i64>) -> BTreeMap<i64, Ramp> {
        let mut r =
            Ramp::new(1, "f", "on", "off", vec![50.0, 100.0], RampPolicy::default(), started, &Default::default());
        r.state = state;
        r.finished_ms = finished;
        BTreeMap::from([(1, r)])
    }

    fn stage_at(def: &Value, ramps: &BTreeMap<i64, Ramp>, usage: &[(&str, i64)], now: i64) -> Life {
        let usage = usage.iter().map(|(f, t)| ((*f).to_owned(), *t)).collect();
        assess(def, ramps, &usage, now, Policy::default()).remove(0)
    }

    #[test]
    fn a_flag_goes_new_ramping_launched_stale() {
        let def = flag(T0, "90d");
        let none = BTreeMap::new();
        let l = stage_at(&def, &none, &[], T0 + DAY);
        assert_eq!((l.stage, l.owner.as_deref()), (Stage::New, Some("payments")));
        let l = stage_at(&def, &ramp(State::Running, T0 + 2 * DAY, None), &[("f", T0 + 2 * DAY)], T0 + 2 * DAY);
        assert_eq!(l.stage, Stage::Ramping);
        let done = ramp(State::Completed, T0 + 2 * DAY, Some(T0 + 3 * DAY));
        let l = stage_at(&def, &done, &[("f", T0 + 10 * DAY)], T0 + 10 * DAY);
        assert_eq!((l.stage, l.since_ms), (Stage::Launched, Some(T0 + 3 * DAY)), "{}", l.reason);
        // Evaluated every day, but 90 days after its creation it is due for removal.
        let l = stage_at(&def, &done, &[("f", T0 + 91 * DAY)], T0 + 91 * DAY);
        assert_eq!((l.stage, l.since_ms), (Stage::Stale, Some(T0 + 90 * DAY)), "{}", l.reason);
    }

    #[test]
    fn unused_single_variant_and_archived_flags() {
        let def = flag(T0, "1y");
        let none = BTreeMap::new();
        // One variant, created 8 days ago: launched a day ago (7 days after creation).
        let l = stage_at(&def, &none, &[("f", T0 + 8 * DAY)], T0 + 8 * DAY);
        assert_eq!((l.stage, l.since_ms), (Stage::Launched, Some(T0 + 7 * DAY)), "{}", l.reason);
        // Last evaluated on day 10: stale from day 40.
        let l = stage_at(&def, &none, &[("f", T0 + 10 * DAY)], T0 + 41 * DAY);
        assert_eq!((l.stage, l.since_ms), (Stage::Stale, Some(T0 + 40 * DAY)), "{}", l.reason);
        assert!(l.reason.starts_with("not evaluated since"), "{}", l.reason);
        // With targeting it serves more than one variant: not launched by age.
        let mut targeted = def.clone();
        targeted["flags"]["f"]["targeting"] = json!({"if": [true, "on", "off"]});
        assert_eq!(stage_at(&targeted, &none, &[("f", T0 + 8 * DAY)], T0 + 8 * DAY).stage, Stage::New);
        let mut archived = def;
        archived["flags"]["f"]["metadata"]["archived"] = json!(true);
        assert_eq!(stage_at(&archived, &none, &[], T0 + 100 * DAY).stage, Stage::Archived);
        // A rolled-back ramp keeps its ramp block at 0%: one variant served.
        let mut rolled = flag(T0, "1y");
        rolled["flags"]["f"]["ramp"] = json!({"treatment": "on", "percent": 0.0});
        let back = ramp(State::RolledBack, T0, Some(T0 + DAY));
        assert_eq!(stage_at(&rolled, &back, &[("f", T0 + 8 * DAY)], T0 + 8 * DAY).stage, Stage::Launched);
    }

    #[test]
    fn counts_group_by_stage_and_owner() {
        let def = json!({"flags": {"a": {"metadata": {"owner": "x"}}, "b": {"metadata": {"owner": "x"}}, "c": {}}});
        let lives = assess(&def, &BTreeMap::new(), &HashMap::new(), T0, Policy::default());
        let c = counts(&lives);
        assert_eq!(c.get(&(Stage::New, "x".to_owned())), Some(&2));
        assert_eq!(c.get(&(Stage::New, "-".to_owned())), Some(&1));
    }
}
