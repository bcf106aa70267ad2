//! Always-valid sequential tests, safe to look at every second:
//!
//! - [`difference`]: a normal-mixture mSPRT and its confidence sequence for the difference of two
//!   proportions (Johari et al., "Always Valid Inference"; Howard et al., "Time-uniform confidence
//!   sequences"). Used on error rates and on the share of requests slower than the control's p99.
//! - [`ErrorShare`]: an e-process on where errors land. Under "treatment is no worse", each error
//!   belongs to treatment with probability at most its traffic share ρ, whatever the base error
//!   rate (rate-robust). The e-process is a mixture, over relative risks r, of products of
//!   per-window likelihood ratios of "errors land in treatment with probability rρ/(rρ+1−ρ)".
//!   A mixture of test martingales is one, so by Ville's inequality P(sup E ≥ 1/α) ≤ α.

/// Successes out of trials, for treatment and control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub x_t: u64,
    pub n_t: u64,
    pub x_c: u64,
    pub n_c: u64,
}

/// The state of a difference-of-proportions test at one look.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Difference {
    /// p̂_treatment − p̂_control.
    pub estimate: f64,
    /// The always-valid confidence sequence at this look.
    pub lower: f64,
    pub upper: f64,
    /// Mixture likelihood ratio against "no difference": evidence of harm when `estimate > 0`.
    pub e_value: f64,
}

/// The mSPRT and confidence sequence for `p_t − p_c` with mixing variance `tau2` at level `alpha`.
/// `None` while either arm has no trials.
pub fn difference(c: Counts, tau2: f64, alpha: f64) -> Option<Difference> {
    if c.n_t == 0 || c.n_c == 0 {
        return None;
    }
    let (nt, nc) = (c.n_t as f64, c.n_c as f64);
    let (pt, pc) = (c.x_t as f64 / nt, c.x_c as f64 / nc);
    // Variance from shrunk estimates, so a zero count does not claim zero variance.
    let shrink = |x: u64, n: f64| (x as f64 + 0.5) / (n + 1.0);
    let (st, sc) = (shrink(c.x_t, nt), shrink(c.x_c, nc));
    let v = st * (1.0 - st) / nt + sc * (1.0 - sc) / nc;
    let estimate = pt - pc;
    let e_value = ((v / (v + tau2)).sqrt().ln() + tau2 * estimate * estimate / (2.0 * v * (v + tau2))).exp();
    let radius = (v * (v + tau2) / tau2 * (((v + tau2) / v).ln() + 2.0 * (1.0 / alpha).ln())).sqrt();
    Some(Difference { estimate, lower: estimate - radius, upper: estimate + radius, e_value })
}

/// The confidence sequence for `p_t − p_c` with the variance taken at the non-inferiority margin
/// (`p_t = max(p̂_t, p̂_c + margin)`, as in Farrington–Manning): with rare events a low observed
/// treatment count would otherwise claim a small variance and a falsely tight bound. `upper` below
/// `margin` shows non-inferiority. `None` while either arm has no trials.
pub fn non_inferiority(c: Counts, margin: f64, tau2: f64, alpha: f64) -> Option<Difference> {
    if c.n_t == 0 || c.n_c == 0 {
        return None;
    }
    let (nt, nc) = (c.n_t as f64, c.n_c as f64);
    let shrink = |x: u64, n: f64| (x as f64 + 0.5) / (n + 1.0);
    let sc = shrink(c.x_c, nc);
    let st = shrink(c.x_t, nt).max((sc + margin).min(1.0));
    let v = st * (1.0 - st) / nt + sc * (1.0 - sc) / nc;
    let estimate = c.x_t as f64 / nt - c.x_c as f64 / nc;
    let radius = (v * (v + tau2) / tau2 * (((v + tau2) / v).ln() + 2.0 * (1.0 / alpha).ln())).sqrt();
    let e_value = ((v / (v + tau2)).sqrt().ln() + tau2 * (estimate - margin).powi(2) / (2.0 * v * (v + tau2))).exp();
    Some(Difference { estimate, lower: estimate - radius, upper: estimate + radius, e_value })
}

/// Relative risks the error-share e-process bets on, equally weighted.
const RISKS: [f64; 6] = [1.25, 1.5, 2.0, 3.0, 5.0, 10.0];

/// The error-share e-process; its state is the log of each component's running product.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ErrorShare {
    log_products: Vec<f64>,
}

impl Default for ErrorShare {
    fn default() -> Self {
        ErrorShare { log_products: vec![0.0; RISKS.len()] }
    }
}

impl ErrorShare {
    /// Adds one window: `errors_t` of `errors_t + errors_c` errors landed in treatment, which had
    /// `n_t` of the window's `n_t + n_c` requests.
    pub fn update(&mut self, errors_t: u64, errors_c: u64, n_t: u64, n_c: u64) {
        let m = errors_t + errors_c;
        if m == 0 || n_t == 0 || n_c == 0 || self.log_products.len() != RISKS.len() {
            return;
        }
        let rho = n_t as f64 / (n_t + n_c) as f64;
        let (k, rest) = (errors_t as f64, errors_c as f64);
        for (log, r) in self.log_products.iter_mut().zip(RISKS) {
            let q = r * rho / (r * rho + 1.0 - rho);
            *log += k * (q / rho).ln() + rest * ((1.0 - q) / (1.0 - rho)).ln();
        }
    }

    /// The e-value: the mixture's current value.
    pub fn e_value(&self) -> f64 {
        if self.log_products.is_empty() {
            return 1.0;
        }
        self.log_products.iter().map(|l| l.exp()).sum::<f64>() / self.log_products.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Binomial, Distribution};

    use super::*;

    #[test]
    fn difference_bounds_shrink_and_contain_the_truth() {
        let few = difference(Counts { x_t: 5, n_t: 1_000, x_c: 5, n_c: 1_000 }, 1e-4, 0.05).unwrap();
        let many = difference(Counts { x_t: 500, n_t: 100_000, x_c: 500, n_c: 100_000 }, 1e-4, 0.05).unwrap();
        assert!(many.upper - many.lower < few.upper - few.lower);
        assert!(many.lower < 0.0 && many.upper > 0.0);
        assert!(many.e_value < 1.0, "no evidence of a difference: {}", many.e_value);
        let harm = difference(Counts { x_t: 100, n_t: 2_000, x_c: 10, n_c: 2_000 }, 1e-4, 0.05).unwrap();
        assert!(harm.lower > 0.0 && harm.e_value > 20.0, "{harm:?}");
        assert_eq!(difference(Counts { x_t: 0, n_t: 0, x_c: 1, n_c: 10 }, 1e-4, 0.05), None);
    }

    #[test]
    fn error_share_grows_under_harm_and_not_under_equality() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut harm = ErrorShare::default();
        let mut same = ErrorShare::default();
        for _ in 0..100_000 {
            let (n_t, n_c) = (10, 990);
            let bt = Binomial::new(n_t, 0.01).unwrap().sample(&mut rng);
            let bc = Binomial::new(n_c, 0.001).unwrap().sample(&mut rng);
            harm.update(bt, bc, n_t, n_c);
            let st = Binomial::new(n_t, 0.001).unwrap().sample(&mut rng);
            let sc = Binomial::new(n_c, 0.001).unwrap().sample(&mut rng);
            same.update(st, sc, n_t, n_c);
        }
        assert!(harm.e_value() > 60.0, "{}", harm.e_value());
        assert!(same.e_value() < 20.0, "{}", same.e_value());
    }

    /// Ville's inequality in practice: under equal error rates the e-process crosses 1/α in at
    /// most about α of runs, looking every window.
    #[test]
    fn error_share_is_valid_under_the_null() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let runs = 400;
        let mut crossed = 0;
        for _ in 0..runs {
            let mut e = ErrorShare::default();
            for _ in 0..300 {
                let n_t = rng.random_range(5..60);
                let n_c = 1000 - n_t;
                let et = Binomial::new(n_t, 0.005).unwrap().sample(&mut rng);
                let ec = Binomial::new(n_c, 0.005).unwrap().sample(&mut rng);
                e.update(et, ec, n_t, n_c);
                if e.e_value() >= 20.0 {
                    crossed += 1;
                    break;
                }
            }
        }
        assert!(crossed as f64 / runs as f64 <= 0.05, "{crossed} of {runs} crossed 1/α = 20");
    }
}
