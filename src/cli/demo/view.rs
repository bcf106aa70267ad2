//! The demo's live view (a redrawn screen on a terminal, a line per second otherwise) and the
//! closing summary.

use std::io::Write as _;
use std::time::Duration;

use serde_json::Value;

#[derive(Debug)]
pub(crate) struct Screen {
    plain: bool,
}

impl Screen {
    pub(crate) fn new(plain: bool) -> Screen {
        Screen { plain }
    }

    pub(crate) fn draw(&mut self, elapsed: Duration, ramp: &Value, stats: &Value) {
        let state = ramp["state"].as_str().unwrap_or("?");
        let percent = ramp["percent"].as_f64().unwrap_or(0.0);
        let steps = ramp["steps"].as_array().map_or(0, Vec::len);
        let step = ramp["step"].as_u64().unwrap_or(0);
        let latest = ramp["decisions"].as_array().and_then(|d| d.last());
        let action = latest.and_then(|d| d["action"].as_str()).unwrap_or("–");
        let reason = latest.and_then(|d| d["reason"].as_str()).unwrap_or("waiting for the first decision");
        let variant = |name: &str| {
            let v = &stats["variants"][name];
            let requests = v["requests"].as_u64().unwrap_or(0);
            let rate = v["error_rate"].as_f64().unwrap_or(0.0) * 100.0;
            let p99 = v["p99_ms"].as_f64().map_or("–".to_owned(), |ms| format!("{ms:.1} ms"));
            (requests, v["errors"].as_u64().unwrap_or(0), rate, p99)
        };
        let (off, on) = (variant("off"), variant("on"));
        if self.plain {
            println!(
                "{:>5.1}s {state} step {step}/{steps} {percent}% | off {} req {:.2}% err p99 {} | on {} req {:.2}% err p99 {} | {action}: {reason}",
                elapsed.as_secs_f64(),
                off.0,
                off.2,
                off.3,
                on.0,
                on.2,
                on.3
            );
            return;
        }
        let filled = (percent / 5.0).round() as usize;
        let bar: String = "█".repeat(filled) + &"░".repeat(20usize.saturating_sub(filled));
        let mut out = String::new();
        out.push_str("\x1b[2J\x1b[H");
        out.push_str(&format!(
            "Rampart demo: ramping new-checkout → on (it hides a regression)      {:>6.1} s\n\n",
            elapsed.as_secs_f64()
        ));
        out.push_str(&format!("  state {state:<12} step {step}/{steps}   treatment {percent:>5.1}%  [{bar}]\n\n"));
        out.push_str("  variant      requests    errors   error rate        p99\n");
        for (name, v) in [("off (control)", off), ("on (treatment)", on)] {
            out.push_str(&format!("  {name:<14} {:>8} {:>9} {:>11.2}% {:>10}\n", v.0, v.1, v.2, v.3));
        }
        out.push_str(&format!("\n  latest decision: {action}\n  {reason}\n\n  Ctrl-C stops the demo.\n"));
        print!("{out}");
        let _ = std::io::stdout().flush();
    }
}

/// The ramp's decisions that changed something (and the last), its events, and DORA.
pub(crate) fn summary(ramp: &Value, dora: &Value) {
    let start = ramp["started_ms"].as_i64().unwrap_or(0);
    let at = |t: &Value| t.as_i64().map_or("–".to_owned(), |t| format!("{:+.1} s", (t - start) as f64 / 1000.0));
    println!("\nRamp of new-checkout → on: {} at {}%", ramp["state"].as_str().unwrap_or("?"), ramp["percent"]);
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
    let secs = |v: &Value| v.as_f64().map_or("–".to_owned(), |s| format!("{s:.1} s"));
    println!("\nDORA (this demo's history):");
    println!(
        "  deployments {}   completed {}   rolled back {}",
        dora["deployments"], dora["completed"], dora["rolled_back"]
    );
    let cfr = dora["change_failure_rate"].as_f64().map_or("–".to_owned(), |r| format!("{:.0}%", r * 100.0));
    println!(
        "  change failure rate {cfr}   time to detect {}   recovery time {}",
        secs(&dora["time_to_detect_s"]),
        secs(&dora["recovery_time_s"])
    );
    println!("  requests served by the bad variant before the rollback took effect: {}", dora["bad_variant_requests"]);
}
