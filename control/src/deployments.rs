//! Deployments recorded from the pipeline (`POST /api/v1/deployments`, `rampart deploy record`):
//! a service, the commit and its time, the pull request, the flags it ships behind. A ramp started
//! for one of those flags within [`LINK_WINDOW_MS`] takes the commit, so lead time (commit → 100%)
//! is measured without anyone typing it.

use crate::state::Shared;
use crate::store::{DeploymentRow, StoreError};

/// How long after a deployment is recorded a ramp of one of its flags is linked to it.
pub(crate) const LINK_WINDOW_MS: i64 = 7 * 86_400_000;
/// Most flags one deployment may name.
const MAX_FLAGS: usize = 100;

/// `POST /api/v1/deployments` body.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Record {
    service: String,
    commit: String,
    /// RFC 3339.
    commit_time: String,
    pr: Option<String>,
    #[serde(default)]
    flags: Vec<String>,
}

/// Validates a recorded deployment; the row to store (id 0 until stored).
pub(crate) fn parse(body: &[u8], actor: &str, now_ms: i64) -> Result<DeploymentRow, String> {
    let r: Record = serde_json::from_slice(body).map_err(|e| format!("invalid deployment: {e}"))?;
    let name = |what: &str, v: &str| {
        if v.is_empty() || v.len() > rampart_flags::MAX_NAME_BYTES {
            Err(format!("{what} must be 1 to {} bytes", rampart_flags::MAX_NAME_BYTES))
        } else {
            Ok(())
        }
    };
    name("service", &r.service)?;
    name("commit", &r.commit)?;
    if let Some(pr) = &r.pr {
        name("pr", pr)?;
    }
    if r.flags.len() > MAX_FLAGS {
        return Err(format!("at most {MAX_FLAGS} flags"));
    }
    for f in &r.flags {
        name("a flag", f)?;
    }
    let at = time::OffsetDateTime::parse(&r.commit_time, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("commit_time \"{}\" is not RFC 3339: {e}", r.commit_time))?;
    let commit_ms =
        i64::try_from(at.unix_timestamp_nanos() / 1_000_000).map_err(|_| "commit_time out of range".to_owned())?;
    if commit_ms > now_ms + 300_000 {
        return Err(format!("commit_time {} is in the future", r.commit_time));
    }
    Ok(DeploymentRow {
        id: 0,
        service: r.service,
        commit: r.commit,
        commit_ms,
        pr: r.pr,
        flags: r.flags,
        recorded_ms: now_ms,
        actor: actor.to_owned(),
    })
}

/// The newest deployment recorded within [`LINK_WINDOW_MS`] before `now_ms` that names `flag`.
pub(crate) fn latest_for_flag(shared: &Shared, flag: &str, now_ms: i64) -> Result<Option<DeploymentRow>, StoreError> {
    let recent = shared.store.deployments(now_ms - LINK_WINDOW_MS, 1000)?;
    Ok(recent.into_iter().find(|d| d.flags.iter().any(|f| f == flag)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployment_is_validated() {
        let now = 1_800_000_000_000;
        let ok = br#"{"service": "shop", "commit": "abc123", "commit_time": "2026-11-30T09:00:00Z", "flags": ["a"]}"#;
        let d = parse(ok, "ci", now).unwrap();
        assert_eq!((d.service.as_str(), d.commit.as_str(), d.flags.len()), ("shop", "abc123", 1));
        assert_eq!(d.commit_ms, 1_796_029_200_000);
        let e = parse(br#"{"service": "", "commit": "a", "commit_time": "2026-11-30T09:00:00Z"}"#, "ci", now);
        assert!(e.unwrap_err().starts_with("service must be"));
        let e = parse(br#"{"service": "s", "commit": "a", "commit_time": "yesterday"}"#, "ci", now);
        assert!(e.unwrap_err().contains("not RFC 3339"));
        let e = parse(br#"{"service": "s", "commit": "a", "commit_time": "2099-01-01T00:00:00Z"}"#, "ci", now);
        assert!(e.unwrap_err().contains("in the future"));
        assert!(
            parse(br#"{"service": "s", "commit": "a", "commit_time": "2026-11-30T09:00:00Z", "x": 1}"#, "ci", now)
                .is_err()
        );
    }
}
