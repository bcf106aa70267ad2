//! The demo's live view (a redrawn screen on a terminal, a line per ramp per second otherwise) and
//! the closing summary.

use std::io::Write as _;
use std::time::Duration;

use serde_json::Value;

#[derive(Debug)]
pub(crate) struct Screen {
    plain: bool,
    /// Ramps whose end a plain line has shown already (not repeated every second).
    ended: Vec<String>,
}

/// One variant's requests, errors, error rate (%) and p99.
fn variant(stats: &Value, name: &str) -> (u64, u64, f64, String) {
    let v = &stats["variants"][name];
    let requests = v["requests"].as_u64().unwrap_or(0);
    let rate = v["error_rate"].as_f64().unwrap_or(0.0) * 100.0;
    let p99 = v["p99_ms"].as_f64().map_or("–".to_owned(), |ms| format!("{ms:.1} ms"));
    (requests, v["errors"].as_u64().unwrap_or(0), rate, p99)
}

fn latest(ramp: &Value) -> (&str, &str) {
    let latest = ramp["decisions"].as_array().and_then(|d| d.last());
    let action = latest.and_then(|d| d["action"].as_str()).unwrap_or("–");
    let reason = latest.and_then(|d| d["reason"].as_str()).unwrap_or("waiting for the first decision");
    (action, reason)
}

impl Screen {
    pub(crate) fn new(plain: bool) -> Screen {
        Screen { plain, ended: Vec::new() }
    }

    /// Draws each (ramp status, flag stats).
    pub(crate) fn draw(&mut self, elapsed: Duration, ramps: &[(Value, Value)]) {
        let mut out = String::new();
        if !self.plain {
            out.push_str("\x1b[2J\x1b[H");
            out.push_str(&format!(
                "Rampart demo: two changes ramping side by side                      {:>6.1} s\n",
                elapsed.as_secs_f64()
            ));
        }
        for (ramp, stats) in ramps {
            let flag = ramp["flag"].as_str().unwrap_or("?");
            let (treatment, control) =
                (ramp["treatment"].as_str().unwrap_or("?"), ramp["control"].as_str().unwrap_or("?"));
            let state = ramp["state"].as_str().unwrap_or("?");
            let percent = ramp["percent"].as_f64().unwrap_or(0.0);
            let steps = ramp["steps"].as_array().map_or(0, Vec::len);
            let step = ramp["step"].as_u64().unwrap_or(0);
            let (action, reason) = latest(ramp);
            let (c, t) = (variant(stats, control), variant(stats, treatment));
            if self.plain {
                if !matches!(state, "running" | "paused") {
                    if self.ended.iter().any(|f| f == flag) {
                        continue;
                    }
                    self.ended.push(flag.to_owned());
                }
                out.push_str(&format!(
                    "{:>5.1}s {flag} {state} step {step}/{steps} {percent}% | {control} {} req {:.2}% err p99 {} | {treatment} {} req {:.2}% err p99 {} | {action}: {reason}\n",
                    elapsed.as_secs_f64(),
                    c.0,
                    c.2,
                    c.3,
                    t.0,
                    t.2,
                    t.3
                ));
                continue;
            }
            let filled = (percent / 5.0).round() as usize;
            let bar: String = "█".repeat(filled) + &"░".repeat(20usize.saturating_sub(filled));
            out.push_str(&format!("\n  {flag} → {treatment}\n"));
            out.push_str(&format!("  state {state:<12} step {step}/{steps}   treatment {percent:>5.1}%  [{bar}]\n"));
            out.push_str("  variant         requests    errors   error rate        p99\n");
            for (name, v) in [(format!("{control} (control)"), c), (format!("{treatment} (treatment)"), t)] {
                out.push_str(&format!("  {name:<15} {:>8} {:>9} {:>11.2}% {:>10}\n", v.0, v.1, v.2, v.3));
            }
            out.push_str(&format!("  latest decision: {action}: {reason}\n"));
        }
        if !self.plain {
            out.push_str("\n  Ctrl-C stops the demo.\n");
        }
        print!("{out}");
        let _ = std::io::stdout().flush();
    }
}

/// Each ramp's decisions that changed something (and its last), its events, and DORA.
pub(crate) fn summary(ramps: &Value, dora: &Value) {
    for ramp in ramps.as_array().into_iter().flatten() {
        one(ramp);
    }
    let secs = |v: &Value| v.as_f64().map_or("–".to_owned(), |s| format!("{s:.1} s"));
    let pct = |v: &Value| v.as_f64().map_or("–".to_owned(), |r| format!("{:.0}%", r * 100.0));
    println!("\nDORA (this demo's history):");
    println!(
        "  deployments {}   completed {}   rolled back {}",
        dora["deployments"], dora["completed"], dora["rolled_back"]
    );
    println!(
        "  change failure rate {}   lead time {}   time to detect {}   recovery time {}",
        pct(&dora["change_failure_rate"]),
        secs(&dora["lead_time_s"]),
        secs(&dora["time_to_detect_s"]),
        secs(&dora["recovery_time_s"])
    );
    println!("  requests served by the bad variant before the rollback took effect: {}", dora["bad_variant_requests"]);
    println!(
        "  developer confidence: completion rate {}   abandon rate {}   no human touch {}",
        pct(&dora["confidence"]["completion_rate"]),
        pct(&dora["confidence"]["abandon_rate"]),
        pct(&dora["confidence"]["untouched_share"])
    );
}

fn one(ramp: &Value) {
    let start = ramp["started_ms"].as_i64().unwrap_or(0);
    let at = |t: &Value| t.as_i64().map_or("–".to_owned(), |t| format!("{:+.1} s", (t - start) as f64 / 1000.0));
    println!(
        "\nRamp of {} → {}: {} at {}%",
        ramp["flag"].as_str().unwrap_or("?"),
        ramp["treatment"].as_str().unwrap_or("?"),
        ramp["state"].as_str().unwrap_or("?"),
        ramp["percent"]
    );
    println!("\nDecisions (every second; the holds in between are stored too):");
    let decisions = ramp["decisions"].as_array().cloned().unwrap_or_default();
    let last = decisions.len().saturating_sub(1);
    for (i, d) in decisions.iter().enumerate() {
        if d["action"] != "HOLD" || i == last {
            println!(
                "  {:>8}  step {}  {:<8}  {}",
                at(&d["at_ms"]),
                d["step"],
                d["action"].as_str().unwrap_or(""),
                d["reason"].as_str().unwrap_or("")
            );
        }
    }
    println!("\nEvents:");
    for e in ramp["events"].as_array().into_iter().flatten() {
        println!(
            "  {:>8}  {:<22}  {}",
            at(&e["at_ms"]),
            e["kind"].as_str().unwrap_or(""),
            e["detail"].as_str().unwrap_or("")
        );
    }
}
