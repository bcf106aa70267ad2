//! The deterministic simulation harness: a seeded random source, a simulated clock and synthetic
//! per-second stats (Poisson traffic split by the ramp's percent, binomial errors, lognormal
//! latencies binned into the real histogram layout) drive the real ramp state machine and
//! decision engine ([`Ramp::observe`] / [`Ramp::apply`]) one simulated second at a time.

use rampart_stats::{Delta, SparseHistogram, bucket_index};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Binomial, Distribution, Poisson};

use super::decide::Policy;
use super::model::{Ramp, State, Transition};

/// One simulated world.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Requests per second over both variants (Poisson).
    pub rps: f64,
    pub steps: Vec<f64>,
    pub policy: Policy,
    pub control_error_rate: f64,
    pub treatment_error_rate: f64,
    /// Lognormal latency: median (µs) and shape.
    pub latency_median_us: f64,
    pub latency_sigma: f64,
    /// Treatment latencies are the control's times this factor.
    pub treatment_latency_factor: f64,
    /// The simulation stops here if the ramp has not finished.
    pub max_seconds: u64,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            rps: 1000.0,
            steps: vec![1.0, 5.0, 25.0, 50.0, 100.0],
            policy: Policy::default(),
            control_error_rate: 0.005,
            treatment_error_rate: 0.005,
            latency_median_us: 20_000.0,
            latency_sigma: 0.5,
            treatment_latency_factor: 1.0,
            max_seconds: 1800,
        }
    }
}

/// How one simulated ramp ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub state: State,
    /// Simulated seconds until the ramp finished (or `max_seconds`).
    pub seconds: u64,
    /// The highest percent the treatment reached.
    pub max_percent: f64,
    /// Treatment requests served before the ramp finished.
    pub treatment_requests: u64,
}

/// Runs `scenario` once with `seed`.
pub fn run(scenario: &Scenario, seed: u64) -> Outcome {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let control_latency = LatencyModel::lognormal(scenario.latency_median_us, scenario.latency_sigma);
    let treatment_latency =
        LatencyModel::lognormal(scenario.latency_median_us * scenario.treatment_latency_factor, scenario.latency_sigma);
    let (mut t, mut c) = (Delta::default(), Delta::default());
    let mut ramp = Ramp::new(0, "sim", "on", "off", scenario.steps.clone(), scenario.policy.clone(), 0, (&t, &c));
    let traffic = Poisson::new(scenario.rps.max(1e-9)).ok();
    let mut max_percent = ramp.percent();
    for second in 1..=scenario.max_seconds {
        let n = traffic.as_ref().map_or(0, |p| p.sample(&mut rng) as u64);
        let n_t = binomial(&mut rng, n, ramp.percent() / 100.0);
        let n_c = n - n_t;
        add(&mut t, n_t, scenario.treatment_error_rate, &treatment_latency, &mut rng);
        add(&mut c, n_c, scenario.control_error_rate, &control_latency, &mut rng);
        let now_ms = i64::try_from(second * 1000).unwrap_or(i64::MAX);
        let decision = ramp.observe(now_ms, &t, &c);
        match ramp.apply(&decision, now_ms) {
            Some(Transition::Percent(p)) => max_percent = max_percent.max(p),
            Some(Transition::Completed | Transition::RolledBack) => {
                return Outcome {
                    state: ramp.state,
                    seconds: second,
                    max_percent,
                    treatment_requests: ramp.treatment_requests,
                };
            }
            None => {}
        }
    }
    Outcome {
        state: ramp.state,
        seconds: scenario.max_seconds,
        max_percent,
        treatment_requests: ramp.treatment_requests,
    }
}

fn binomial(rng: &mut ChaCha8Rng, n: u64, p: f64) -> u64 {
    if n == 0 || p <= 0.0 {
        return 0;
    }
    if p >= 1.0 {
        return n;
    }
    Binomial::new(n, p).map_or(0, |b| b.sample(rng))
}

/// One second of one arm: `n` requests, binomial errors, latencies spread over the model's bins.
fn add(total: &mut Delta, n: u64, error_rate: f64, latency: &LatencyModel, rng: &mut ChaCha8Rng) {
    let errors = binomial(rng, n, error_rate);
    let mut second = Delta { requests: n, errors, timeouts: 0, latency: SparseHistogram::default() };
    // Multinomial over the bins by successive binomials.
    let (mut left, mut mass) = (n, 1.0);
    let mut pairs = Vec::with_capacity(latency.bins.len());
    for &(bucket, p) in &latency.bins {
        if left == 0 {
            break;
        }
        let k = if mass <= p { left } else { binomial(rng, left, p / mass) };
        pairs.push((bucket, k));
        left -= k;
        mass -= p;
    }
    second.latency = SparseHistogram::from_pairs(pairs).unwrap_or_default();
    total.merge(&second);
}

/// A latency distribution as (histogram bucket, probability) bins: lognormal, cut at fixed
/// z-scores (finer in the tail, where the p99 guardrail looks).
#[derive(Debug, Clone)]
struct LatencyModel {
    bins: Vec<(u32, f64)>,
}

impl LatencyModel {
    fn lognormal(median_us: f64, sigma: f64) -> LatencyModel {
        const EDGES: [f64; 17] =
            [-6.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.25, 2.5, 2.75, 3.0, 3.25, 3.5, 6.0];
        let bins = EDGES
            .windows(2)
            .map(|w| {
                let p = phi(w[1]) - phi(w[0]);
                let z = (w[0] + w[1]) / 2.0;
                let value = (median_us * (sigma * z).exp()).max(1.0);
                (bucket_index(value as u64), p)
            })
            .collect();
        LatencyModel { bins }
    }
}

/// The standard normal CDF (Abramowitz & Stegun 7.1.26, error < 1.5e-7).
fn phi(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly =
        t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    if z >= 0.0 { 0.5 * (1.0 + erf) } else { 0.5 * (1.0 - erf) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi_and_bins() {
        assert!((phi(0.0) - 0.5).abs() < 1e-7);
        assert!((phi(2.326) - 0.99).abs() < 1e-3);
        let m = LatencyModel::lognormal(20_000.0, 0.5);
        let total: f64 = m.bins.iter().map(|b| b.1).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!(m.bins.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn deterministic_for_a_seed() {
        let s = Scenario { max_seconds: 120, ..Scenario::default() };
        assert_eq!(run(&s, 42), run(&s, 42));
    }
}
