//! `simulate`: the real ramp decision code ([`rampart_control::ramp`]) driven by declarative
//! scenarios (`loadtest/scenarios/*.toml`) in simulated time, many seeded runs per scenario, to
//! measure its operating characteristics: false rollbacks, time to rollback, time to 100%.

mod curve;
mod scenario;
mod summary;
mod world;

#[cfg(test)]
mod catalogue_tests;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rampart_control::ramp::decide::Action;
use rampart_control::ramp::window::Arm;
use serde::Serialize;

pub(crate) use scenario::Scenario;
pub(crate) use summary::Summary;
pub(crate) use world::Outcome;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// A scenario file, or a directory of them (`*.toml`, by name); repeatable.
    #[arg(long, required = true)]
    scenario: Vec<PathBuf>,
    /// Runs per scenario.
    #[arg(long, default_value_t = 100)]
    runs: usize,
    /// Run i of every scenario uses the seed derived from (seed, i).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Threads (default: the available cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Overrides every scenario's max_duration.
    #[arg(long, value_parser = humantime::parse_duration)]
    max_duration: Option<Duration>,
    /// Print one JSON document instead of the text summary.
    #[arg(long, conflicts_with = "markdown")]
    json: bool,
    /// Print the markdown table (one row per scenario) instead of the text summary.
    #[arg(long)]
    markdown: bool,
    /// Also write the JSON document to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Also write the markdown table to this file.
    #[arg(long)]
    markdown_out: Option<PathBuf>,
    /// The commit measured, recorded in the JSON and markdown (e.g. `git rev-parse HEAD`).
    #[arg(long)]
    commit: Option<String>,
    /// Instead of measuring: run number RUN of each scenario once and print, as JSON lines, every
    /// tick whose window has traffic or whose decision is not a dwell hold (arms as [requests,
    /// errors, slow, units, failing units, slow units, new units]), then the outcome.
    #[arg(long, value_name = "RUN")]
    trace: Option<usize>,
    /// Exit 1 when a scenario misses its `[check]` bounds (other than by its known issue).
    #[arg(long)]
    check: bool,
}

/// Everything one invocation measured.
#[derive(Debug, Serialize)]
struct Report {
    commit: Option<String>,
    date: String,
    runs: usize,
    seed: u64,
    threads: usize,
    command: Vec<String>,
    scenarios: Vec<Summary>,
}

/// The seed of run `index`: SplitMix64 of (seed, index), so every run has its own stream whatever
/// thread runs it.
pub(crate) fn run_seed(seed: u64, index: usize) -> u64 {
    let mut z = seed ^ (index as u64).wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Runs `sc` `runs` times on `threads` threads; outcome `i` is run `i`'s, whatever the threading.
pub(crate) fn run_many(sc: &Scenario, runs: usize, seed: u64, threads: usize) -> Vec<Outcome> {
    let next = AtomicUsize::new(0);
    let mut results: Vec<(usize, Outcome)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.clamp(1, runs.max(1)))
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= runs {
                            return mine;
                        }
                        mine.push((i, world::run(sc, run_seed(seed, i))));
                    }
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, o)| o).collect()
}

/// Runs a scenario and summarises it.
pub(crate) fn measure(sc: &Scenario, runs: usize, seed: u64, threads: usize) -> Summary {
    let started = Instant::now();
    let outcomes = run_many(sc, runs, seed, threads);
    summary::summarise(sc, seed, &outcomes, started.elapsed().as_secs_f64())
}

/// Prints run `index` of `sc` tick by tick (JSON lines), then its outcome; stops quietly when
/// stdout is closed (`| head`).
fn trace(sc: &Scenario, seed: u64, index: usize) -> std::io::Result<()> {
    let arm = |a: &Arm| {
        serde_json::json!([a.requests, a.errors, a.slow, a.units, a.failing_units, a.slow_units, a.new_units])
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut result = Ok(());
    let outcome = world::run_traced(sc, run_seed(seed, index), &mut |tick, w, d| {
        let has_traffic = w.treatment.requests + w.control.requests > 0;
        let routine = d.action == Action::Hold && d.reason.starts_with("dwell");
        if result.is_ok() && (has_traffic || !routine) {
            let line = serde_json::json!({
                "t": tick,
                "treatment": arm(&w.treatment),
                "control": arm(&w.control),
                "slow_threshold_us": d.numbers.slow_threshold_us,
                "action": d.action,
                "reason": d.reason,
            });
            result = writeln!(out, "{line}");
        }
    });
    result?;
    writeln!(out, "{}", serde_json::json!({ "scenario": sc.name, "run": index, "outcome": outcome }))?;
    out.flush()
}

/// The scenario files named: files as given, directories' `*.toml` by name.
fn files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot list {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                .collect();
            found.sort();
            anyhow::ensure!(!found.is_empty(), "{}: no *.toml scenario", p.display());
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

fn markdown(report: &Report) -> String {
    let mut out = format!(
        "Measured at commit `{}`, {}: {} runs per scenario, seed {}.\n\n{}\n",
        report.commit.as_deref().unwrap_or("unknown"),
        report.date,
        report.runs,
        report.seed,
        Summary::MARKDOWN_HEADER
    );
    for s in &report.scenarios {
        out.push_str(&s.markdown_row());
        out.push('\n');
    }
    out
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // Every file is loaded (and refused) before any run starts.
    let mut scenarios = files(&args.scenario)?.iter().map(|f| Scenario::load(f)).collect::<Result<Vec<_>, _>>()?;
    if let Some(d) = args.max_duration {
        scenarios.iter_mut().for_each(|s| s.max_duration = d);
    }
    if let Some(i) = args.trace {
        for sc in &scenarios {
            match trace(sc, args.seed, i) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
                other => other.context("cannot write the trace")?,
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let quiet = args.json || args.markdown;
    let mut summaries = Vec::with_capacity(scenarios.len());
    for sc in &scenarios {
        let s = measure(sc, args.runs, args.seed, threads);
        if quiet {
            eprintln!("{}: {} runs in {:.1} s", s.scenario, s.runs, s.wall_s);
        } else {
            println!("{}", s.human());
        }
        summaries.push(s);
    }
    let date =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let report = Report {
        commit: args.commit,
        date,
        runs: args.runs,
        seed: args.seed,
        threads,
        command: std::env::args().collect(),
        scenarios: summaries,
    };
    let json = serde_json::to_string_pretty(&report)?;
    let table = markdown(&report);
    if args.json {
        println!("{json}");
    }
    if args.markdown {
        print!("{table}");
    }
    if let Some(p) = &args.json_out {
        write(p, &format!("{json}\n"))?;
    }
    if let Some(p) = &args.markdown_out {
        write(p, &table)?;
    }
    let outside = |known: bool| -> Vec<&str> {
        let s = report.scenarios.iter();
        s.filter(|s| !s.check_failures.is_empty() && s.known_issue.is_some() == known)
            .map(|s| s.scenario.as_str())
            .collect()
    };
    let (failed, known) = (outside(false), outside(true));
    if !known.is_empty() {
        eprintln!("outside their [check] bounds, as known: {}", known.join(", "));
    }
    if !failed.is_empty() {
        eprintln!("outside their [check] bounds: {}", failed.join(", "));
        if args.check {
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}
