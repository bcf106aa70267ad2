//! Every scenario of `loadtest/scenarios/` at a few runs, against loose bounds (the file's
//! `[check]`, else its kind's): enough to fail when the decision code loses its validity (false
//! rollbacks or pauses with equal arms) or its power (bad changes kept), not a measurement —
//! `run-scenarios.sh` is.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::scenario::Kind;
use super::{Scenario, Summary, measure};

/// Runs per scenario unless its `[check]` says otherwise.
const RUNS: usize = 30;
const SEED: u64 = 20_261_130;

fn catalogue() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn run_catalogue() -> Vec<Summary> {
    catalogue()
        .iter()
        .map(|f| {
            let mut sc = Scenario::load(f).unwrap_or_else(|e| panic!("{e}"));
            if let Some(d) = sc.check.max_duration {
                sc.max_duration = d;
            }
            let runs = sc.check.runs.unwrap_or(RUNS);
            let s = measure(&sc, runs, SEED, threads());
            println!("{}", s.human());
            s
        })
        .collect()
}

#[test]
fn every_scenario_states_what_it_is_and_what_to_expect() {
    let files = catalogue();
    assert!(files.len() >= 15, "{files:?}");
    let mut kinds = Vec::new();
    for f in &files {
        let sc = Scenario::load(f).unwrap_or_else(|e| panic!("{e}"));
        assert!(!sc.expectation.trim().is_empty(), "{}", f.display());
        assert!(sc.max_duration <= Duration::from_secs(6 * 3600), "{}", f.display());
        kinds.push(sc.kind);
    }
    for kind in [Kind::Aa, Kind::Bad, Kind::Good, Kind::Srm] {
        assert!(kinds.contains(&kind), "no {kind:?} scenario");
    }
}

#[test]
fn every_scenario_stays_within_its_bounds() {
    let summaries = run_catalogue();
    let failures: Vec<String> = summaries
        .iter()
        .filter(|s| s.check_failures.is_empty() == s.known_issue.is_some())
        .map(|s| match &s.known_issue {
            None => format!("{}: {}", s.scenario, s.check_failures.join("; ")),
            Some(issue) => {
                format!("{}: within its bounds despite its known issue ({issue}): remove `known_issue`", s.scenario)
            }
        })
        .collect();
    assert!(failures.is_empty(), "outside their bounds:\n{}", failures.join("\n"));
    // What the kinds mean, beyond the rates: a bad change is stopped before 100%, the lost
    // units pause the ramp, not roll it back.
    for s in &summaries {
        match s.kind {
            Kind::Bad => assert_eq!(s.completed.runs, 0, "{}: a bad change reached 100%", s.scenario),
            Kind::Srm => assert_eq!(s.completed.runs, 0, "{}: reached 100% with lost units", s.scenario),
            Kind::Aa | Kind::Good => {}
        }
    }
}
