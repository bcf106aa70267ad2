//! Always-valid sequential tests on *where failing units land*, safe to look at every second.
//!
//! Each stratum (a report window, see `window.rs`) gives, per arm, the units it served and the
//! units that failed (or were slow). Given the stratum's failing units `m` and the treatment's share
//! of its units `ρ`, a failing unit is the treatment's with probability `q(r) = rρ / (rρ + 1 − ρ)`
//! when the treatment's per-unit risk is `r` times the control's — whatever the base rate is in that
//! window. A shift shared by both arms (a drift, an incident, a slower dependency) changes `m`, not
//! `q`, so it cancels. Every test below is a product over strata of likelihood ratios of that
//! conditional binomial (exact for Poisson counts; for Bernoulli units the conditional law is
//! hypergeometric, which is smaller in the convex order, so the products stay supermartingales),
//! mixed over alternatives: a mixture of test supermartingales is one, so by Ville's inequality
//! `P(sup E ≥ 1/α) ≤ α` under the null, however often one looks.
//!
//! - [`Harm`]: "the treatment is worse" (H0: `r ≤ 1`) → rollback.
//! - [`RiskBound`]: an upper confidence sequence on `r`; "below 1 + δ" advances.
//! - [`Ratio`]: the sample-ratio test of the treatment's share of units against the set percent.
//! - [`proportion_upper`]: an always-valid upper bound on a failure proportion (the error budget).

use serde::{Deserialize, Serialize};

/// One stratum of one guardrail: failing (or slow) units and units served, per arm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cell {
    pub x_t: u64,
    pub u_t: u64,
    pub x_c: u64,
    pub u_c: u64,
}

impl Cell {
    /// `(k, m, ρ)`: treatment failures, all failures, the treatment's share of units. `None` when
    /// the stratum says nothing (no failure, or one arm absent). A unit count below its failure
    /// count (sketch noise, or a report split across workers) is raised to it.
    fn conditional(&self) -> Option<(f64, f64, f64)> {
        let (u_t, u_c) = (self.u_t.max(self.x_t), self.u_c.max(self.x_c));
        let m = self.x_t + self.x_c;
        if m == 0 || u_t == 0 || u_c == 0 {
            return None;
        }
        Some((self.x_t as f64, m as f64, u_t as f64 / (u_t + u_c) as f64))
    }
}

/// The probability that a failing unit is the treatment's when its relative risk is `r`.
fn q(r: f64, rho: f64) -> f64 {
    r * rho / (r * rho + 1.0 - rho)
}

/// Log likelihood ratio of "relative risk `alt`" against "relative risk `null`" for one stratum.
fn log_lr(k: f64, m: f64, rho: f64, alt: f64, null: f64) -> f64 {
    let (qa, qn) = (q(alt, rho), q(null, rho));
    k * (qa / qn).ln() + (m - k) * ((1.0 - qa) / (1.0 - qn)).ln()
}

/// `ln Σ wᵢ e^{lᵢ}`, computed without overflow.
fn log_mix(weights: &[f64], logs: &[f64]) -> f64 {
    let top = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !top.is_finite() {
        return 0.0;
    }
    top + weights.iter().zip(logs).map(|(w, l)| w * (l - top).exp()).sum::<f64>().ln()
}

/// An e-value for display and comparison: `e^{log}`, capped so it stays a finite JSON number.
pub fn e_of(log: f64) -> f64 {
    log.min(700.0).exp()
}

/// Relative risks the harm test bets on, and their weights: most on the regressions that matter
/// most (5–20×), some on small ones (found later) and on catastrophic ones (found at once, at any
/// sample size: 10 failing units of 10 against a 0.5% control roll back; 1 of 2 does not).
const HARM_RISKS: [f64; 8] = [1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0];
const HARM_WEIGHTS: [f64; 8] = [0.1, 0.1, 0.1, 0.15, 0.2, 0.15, 0.1, 0.1];

/// The harm e-process: a mixture over [`HARM_RISKS`] of products of "relative risk r" against
/// "relative risk 1". Carried over the whole ramp (every step, every stratum).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Harm {
    logs: Vec<f64>,
}

impl Default for Harm {
    fn default() -> Self {
        Harm { logs: vec![0.0; HARM_RISKS.len()] }
    }
}

impl Harm {
    pub fn update(&mut self, cell: &Cell) {
        let Some((k, m, rho)) = cell.conditional() else { return };
        if self.logs.len() != HARM_RISKS.len() {
            *self = Harm::default();
        }
        for (log, r) in self.logs.iter_mut().zip(HARM_RISKS) {
            *log += log_lr(k, m, rho, r, 1.0);
        }
    }

    /// `ln E`.
    pub fn log_e(&self) -> f64 {
        if self.logs.len() != HARM_RISKS.len() {
            return 0.0;
        }
        log_mix(&HARM_WEIGHTS, &self.logs)
    }
}

/// Alternatives of each bound test `r₀`: relative risk 1 (an equal treatment, the case a ramp
/// must get through quickly) with most of the weight, and `r₀` divided by these, for treatments a
/// little worse than equal, or better.
const BOUND_DIVISORS: [f64; 4] = [1.25, 2.0, 3.0, 5.0];
const BOUND_WEIGHTS: [f64; 5] = [0.6, 0.1, 0.1, 0.1, 0.1];
const BOUND_ALTERNATIVES: usize = BOUND_DIVISORS.len() + 1;

/// The alternatives of the bound `r₀`, in the order of [`BOUND_WEIGHTS`].
fn bound_alternatives(r0: f64) -> impl Iterator<Item = f64> {
    std::iter::once(1.0).chain(BOUND_DIVISORS.iter().map(move |d| r0 / d))
}
/// The bounds whose rejection the confidence sequence reports (the upper end of the sequence is
/// the lowest grid value above which every value is rejected).
const GRID: [f64; 14] = [1.1, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 7.0, 10.0, 20.0, 50.0, 100.0];

/// An upper confidence sequence on the relative risk: for each bound `r₀` (the policy's `1 + δ`
/// first, then [`GRID`]), an e-process against "relative risk ≥ r₀" (mixing alternatives below
/// `r₀`; by monotone likelihood ratio the product is a supermartingale for every risk ≥ r₀). The
/// evidence runs over the whole ramp: every stratum compares the arms at the same time, so the
/// early steps' evidence still counts at the later ones (the harm test covers a treatment whose
/// risk grows with its share).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RiskBound {
    /// The decision bound `1 + δ`.
    pub bound: f64,
    /// `[bound, GRID…]` × `BOUND_DIVISORS`, row-major.
    logs: Vec<f64>,
    /// Mantel–Haenszel sums for the point estimate: Σ k(1−ρ), Σ (m−k)ρ.
    mh: (f64, f64),
}

impl RiskBound {
    pub fn new(bound: f64) -> RiskBound {
        RiskBound { bound, logs: vec![0.0; (GRID.len() + 1) * BOUND_ALTERNATIVES], mh: (0.0, 0.0) }
    }

    fn nulls(&self) -> impl Iterator<Item = f64> + '_ {
        std::iter::once(self.bound).chain(GRID)
    }

    pub fn update(&mut self, cell: &Cell) {
        let Some((k, m, rho)) = cell.conditional() else { return };
        if self.logs.len() != (GRID.len() + 1) * BOUND_ALTERNATIVES {
            *self = RiskBound::new(self.bound);
        }
        let nulls: Vec<f64> = self.nulls().collect();
        for (row, r0) in self.logs.chunks_mut(BOUND_ALTERNATIVES).zip(nulls) {
            for (log, alt) in row.iter_mut().zip(bound_alternatives(r0)) {
                *log += log_lr(k, m, rho, alt, r0);
            }
        }
        self.mh.0 += k * (1.0 - rho);
        self.mh.1 += (m - k) * rho;
    }

    fn log_e_row(&self, row: usize) -> f64 {
        let n = BOUND_ALTERNATIVES;
        match self.logs.get(row * n..(row + 1) * n) {
            Some(logs) => log_mix(&BOUND_WEIGHTS, logs),
            None => 0.0,
        }
    }

    /// `ln E` against "relative risk ≥ 1 + δ".
    pub fn log_e(&self) -> f64 {
        self.log_e_row(0)
    }

    /// The upper end of the confidence sequence at level `alpha`: `None` while no grid bound is
    /// rejected (unbounded).
    pub fn upper(&self, alpha: f64) -> Option<f64> {
        let threshold = (1.0 / alpha).ln();
        let mut upper = None;
        for (i, r0) in GRID.iter().enumerate().rev() {
            if self.log_e_row(i + 1) >= threshold {
                upper = Some(*r0);
            } else {
                break;
            }
        }
        upper
    }

    /// The Mantel–Haenszel estimate of the relative risk (`None` without failures in both arms).
    pub fn estimate(&self) -> Option<f64> {
        (self.mh.1 > 0.0 && self.mh.0 > 0.0).then(|| self.mh.0 / self.mh.1)
    }
}

/// Treatment shares the sample-ratio test bets on, as multipliers of the configured share.
const RATIO_MULTIPLIERS: [f64; 4] = [0.5, 0.75, 1.5, 2.0];

/// The sample-ratio test: the treatment's units in a stratum are binomial with the configured
/// share (assignment is by a hash of the unit). A mixture of likelihood ratios against shares far
/// from it catches a treatment that loses its units (it crashes before they are recorded) or an
/// assignment that is not what the control plane set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    logs: Vec<f64>,
    /// Units seen by the test, per arm.
    pub units: (u64, u64),
}

impl Default for Ratio {
    fn default() -> Self {
        Ratio { logs: vec![0.0; RATIO_MULTIPLIERS.len()], units: (0, 0) }
    }
}

impl Ratio {
    /// Adds a stratum served at `percent`.
    pub fn update(&mut self, u_t: u64, u_c: u64, percent: f64) {
        let p0 = percent / 100.0;
        if !(p0 > 0.0 && p0 < 1.0) || u_t + u_c == 0 {
            return;
        }
        if self.logs.len() != RATIO_MULTIPLIERS.len() {
            *self = Ratio::default();
        }
        let (k, rest) = (u_t as f64, u_c as f64);
        for (log, mult) in self.logs.iter_mut().zip(RATIO_MULTIPLIERS) {
            // Shares above p0 are taken halfway to 1 at most, so the alternative stays a share.
            let p = if mult < 1.0 { p0 * mult } else { (p0 * mult).min((1.0 + p0) / 2.0) };
            *log += k * (p / p0).ln() + rest * ((1.0 - p) / (1.0 - p0)).ln();
        }
        self.units.0 += u_t;
        self.units.1 += u_c;
    }

    pub fn log_e(&self) -> f64 {
        if self.logs.len() != RATIO_MULTIPLIERS.len() {
            return 0.0;
        }
        log_mix(&[1.0 / RATIO_MULTIPLIERS.len() as f64; RATIO_MULTIPLIERS.len()], &self.logs)
    }

    /// The observed treatment share of units.
    pub fn share(&self) -> Option<f64> {
        let n = self.units.0 + self.units.1;
        (n > 0).then(|| self.units.0 as f64 / n as f64)
    }
}

/// An always-valid upper bound on a proportion from `x` failures in `n` trials at level `alpha`:
/// the largest `p` that the Beta(½, ½)-mixture likelihood ratio has not rejected. `1.0` without
/// trials.
pub fn proportion_upper(x: u64, n: u64, alpha: f64) -> f64 {
    if n == 0 {
        return 1.0;
    }
    let (x, n) = (x as f64, n as f64);
    let threshold = (1.0 / alpha).ln();
    // ln of the mixture's marginal likelihood: B(x + ½, n − x + ½) / B(½, ½).
    let log_marginal = ln_beta(x + 0.5, n - x + 0.5) - ln_beta(0.5, 0.5);
    let log_lr = |p: f64| log_marginal - (x * p.ln() + (n - x) * (1.0 - p).ln());
    let (mut lo, mut hi) = ((x / n).max(1e-12), 1.0 - 1e-12);
    if log_lr(hi) < threshold {
        return 1.0;
    }
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if log_lr(mid) >= threshold { hi = mid } else { lo = mid }
    }
    hi
}

fn ln_beta(a: f64, b: f64) -> f64 {
    libm::lgamma(a) + libm::lgamma(b) - libm::lgamma(a + b)
}

#[cfg(test)]
mod tests;
