//! What a soak measured, as JSON and as the markdown table the README quotes: one row per
//! interval (normal traffic's latency and outcomes, the proxy's RSS, descriptors and CPU), and
//! what each attack got from the proxy.

use std::path::Path;

use anyhow::Context as _;

use super::attacks::{Counts, Kind, Pace};
use crate::load::Summary;

/// One interval of the run.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Row {
    /// Seconds since the attacks began at the end of the interval (≤ 0: the quiet baseline).
    pub(crate) t_s: f64,
    pub(crate) attacked: bool,
    pub(crate) normal: Summary,
    /// Why the interval's traffic could not run, if it could not.
    pub(crate) error: Option<String>,
    pub(crate) rss_bytes: u64,
    pub(crate) peak_rss_bytes: u64,
    pub(crate) open_fds: usize,
    /// The proxy's CPU over the interval, % of one core.
    pub(crate) cpu_percent: f64,
    /// The last good flags still served (a request through the proxy carried the flag header).
    pub(crate) flags_live: bool,
}

/// A whole run.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Report {
    pub(crate) mode: &'static str,
    /// `git describe --always --dirty` of the tree the binaries were built from.
    pub(crate) commit: String,
    pub(crate) rampart_version: String,
    pub(crate) started_utc: String,
    pub(crate) machine: String,
    pub(crate) loadavg_before: String,
    pub(crate) loadavg_after: String,
    pub(crate) rate: f64,
    pub(crate) connections: usize,
    pub(crate) interval_s: f64,
    pub(crate) duration_s: f64,
    pub(crate) proxy_config: String,
    /// Whether the attacks ran (`--no-attacks`: the normal traffic alone; its rows after the
    /// baseline are still marked `attacked`, i.e. in the soak proper).
    pub(crate) attacks_run: bool,
    pub(crate) attacks: Vec<AttackLine>,
    pub(crate) rows: Vec<Row>,
    /// `rampart_config_reload_failures_total` at the end.
    pub(crate) reload_failures: Option<f64>,
    pub(crate) proxy_alive_at_end: bool,
}

/// One attack: what it was, its pace and what it got.
#[derive(Debug, serde::Serialize)]
pub(crate) struct AttackLine {
    pub(crate) kind: Kind,
    pub(crate) what: &'static str,
    pub(crate) pace: Pace,
    pub(crate) counts: Counts,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl Report {
    pub(crate) fn write(&self, out: &Path) -> anyhow::Result<()> {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let json = out.with_extension("json");
        std::fs::write(&json, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("write {}", json.display()))?;
        let md = out.with_extension("md");
        std::fs::write(&md, self.markdown()).with_context(|| format!("write {}", md.display()))?;
        Ok(())
    }

    /// The attacked intervals' worst p99, first and last RSS, and the largest RSS.
    pub(crate) fn summary(&self) -> String {
        let attacked: Vec<&Row> = self.rows.iter().filter(|r| r.attacked && r.error.is_none()).collect();
        let base = self.rows.iter().find(|r| !r.attacked);
        let mut sorted: Vec<u64> = attacked.iter().map(|r| r.normal.p99_us).collect();
        sorted.sort_unstable();
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0);
        let worst = sorted.last().copied().unwrap_or(0);
        let errors: u64 = attacked.iter().map(|r| r.normal.errors()).sum();
        let requests: u64 = attacked.iter().map(|r| r.normal.requests).sum();
        let rss_max = self.rows.iter().map(|r| r.rss_bytes).max().unwrap_or(0);
        let (first, last) = (attacked.first().map_or(0, |r| r.rss_bytes), attacked.last().map_or(0, |r| r.rss_bytes));
        let leaks: u64 = self.attacks.iter().map(|a| a.counts.leaks).sum();
        let held: u64 = self.attacks.iter().map(|a| a.counts.held).sum();
        let mut late: Vec<u64> = attacked.iter().map(|r| r.normal.late_p99_us).collect();
        late.sort_unstable();
        let late = late.get(late.len() / 2).copied().unwrap_or(0);
        if !self.attacks_run {
            return format!(
                "normal traffic {:.0} req/s, no attacks: {requests} requests, {errors} failed; p99 per interval: median \
                 {median} µs, worst {worst} µs (first interval {} µs; the generator's own lateness p99, median {late} µs); \
                 proxy RSS {:.1} MiB at the first interval after it, {:.1} MiB at the last, {:.1} MiB at most",
                self.rate,
                base.map_or(0, |b| b.normal.p99_us),
                mib(first),
                mib(last),
                mib(rss_max),
            );
        }
        format!(
            "normal traffic {:.0} req/s: {requests} requests under attack, {errors} failed; p99 per 10 s: median {median} µs, \
             worst {worst} µs (quiet baseline {} µs; the generator's own lateness p99, median {late} µs); proxy RSS {:.1} MiB at the first attacked interval, {:.1} MiB at \
             the last, {:.1} MiB at most; {held} attack connections held past our limit, {leaks} header tricks through",
            self.rate,
            base.map_or(0, |b| b.normal.p99_us),
            mib(first),
            mib(last),
            mib(rss_max),
        )
    }

    pub(crate) fn markdown(&self) -> String {
        let (title, attacks) = if self.attacks_run {
            ("normal traffic under mixed attack", "attacks from 127.0.0.2, all at the same time")
        } else {
            ("normal traffic, no attacks", "no attacks (`--no-attacks`)")
        };
        let mut md = format!(
            "# Soak: {title}\n\n\
             `rampart-loadtest soak`, Rampart at `{}` ({}), started {} UTC; {}; load average {} → {}.\n\
             Normal traffic: {} req/s open loop, {} connections from 127.0.0.1, latency from the intended start \
             (HdrHistogram); {attacks}, for {:.0} s. The proxy runs its \
             defaults (one worker) — configuration:\n\n```toml\n{}```\n\n{}.\n\n",
            self.commit,
            self.rampart_version,
            self.started_utc,
            self.machine,
            self.loadavg_before,
            self.loadavg_after,
            self.rate,
            self.connections,
            self.duration_s,
            self.proxy_config,
            self.summary(),
        );
        md.push_str(
            "| t (s) | req/s | errors | p50 µs | p99 µs | p99.9 µs | max µs | generator late p99 µs | proxy RSS MiB | fds | proxy CPU % | flags live |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|\n",
        );
        for r in &self.rows {
            let t = if r.attacked { format!("{:.0}", r.t_s) } else { "baseline".to_owned() };
            if let Some(e) = &r.error {
                md.push_str(&format!(
                    "| {t} | – | {e} | | | | | {:.1} | {} | {:.0} | |\n",
                    mib(r.rss_bytes),
                    r.open_fds,
                    r.cpu_percent
                ));
                continue;
            }
            let n = &r.normal;
            md.push_str(&format!(
                "| {t} | {:.0} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {:.0} | {} |\n",
                n.rps,
                n.errors(),
                n.p50_us,
                n.p99_us,
                n.p999_us,
                n.max_us,
                n.late_p99_us,
                mib(r.rss_bytes),
                r.open_fds,
                r.cpu_percent,
                if r.flags_live { "yes" } else { "**no**" }
            ));
        }
        if !self.attacks_run {
            md.push_str(&format!(
                "\nProxy alive at the end: {}.\n",
                if self.proxy_alive_at_end { "yes" } else { "**no**" }
            ));
            return md;
        }
        md.push_str(
            "\n| attack | pace | started | refused | closed by proxy | answered 4xx | answered other | held past our limit | \
             time to close mean / max | got through |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for a in &self.attacks {
            let c = &a.counts;
            md.push_str(&format!(
                "| {} | {:.1}/s, ≤ {} open, our limit {} s | {} | {} | {} | {} | {} | {} | {:.1} s / {:.1} s | {} |\n",
                a.what,
                a.pace.per_second,
                a.pace.max_open,
                a.pace.hold.as_secs(),
                c.started,
                c.refused,
                c.closed,
                c.answered_4xx,
                c.answered_other,
                c.held,
                c.close_ms_mean / 1000.0,
                c.close_ms_max as f64 / 1000.0,
                c.leaks,
            ));
        }
        md.push_str(&format!(
            "\nReload failures counted by the proxy: {}. Proxy alive at the end: {}.\n",
            self.reload_failures.map_or("?".to_owned(), |f| format!("{f:.0}")),
            if self.proxy_alive_at_end { "yes" } else { "**no**" }
        ));
        md
    }
}
