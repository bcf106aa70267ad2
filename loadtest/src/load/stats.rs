//! What one load run measured: latencies in an HdrHistogram (microseconds, 3 significant digits),
//! outcomes by kind, and the generator's own lateness against the schedule.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Highest latency tracked exactly; slower requests are clamped to it (and still counted).
const MAX_US: u64 = 120_000_000;

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A response with this status, its body read to the end.
    Status(u16),
    /// Connect, write or read failed (the connection is replaced).
    Transport,
    /// No complete response within the request timeout.
    Timeout,
}

/// One worker's (or the whole run's) measurements; merged by addition.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    latency: Histogram<u64>,
    /// From the moment the request was actually sent: the service time alone.
    service: Histogram<u64>,
    /// How late the generator sent a request after its intended time (open loop only).
    lateness: Histogram<u64>,
    pub(crate) ok: u64,
    pub(crate) non_2xx: u64,
    pub(crate) transport: u64,
    pub(crate) timeouts: u64,
    /// Completed during the warm-up (not measured; counted for CPU per request).
    pub(crate) warm: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        let h = || Histogram::new_with_bounds(1, MAX_US, 3).unwrap_or_else(|_| unreachable!("static bounds are valid"));
        Recorder { latency: h(), service: h(), lateness: h(), ok: 0, non_2xx: 0, transport: 0, timeouts: 0, warm: 0 }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).clamp(1, MAX_US)
}

impl Recorder {
    /// Records a finished request: `latency` from its intended start (open loop) or its send
    /// (closed loop), `service` from its send. Every outcome has a latency: a failure that took
    /// 5 s is as much of a stall as a slow success.
    pub(crate) fn record(&mut self, outcome: Outcome, latency: Duration, service: Duration) {
        self.latency.saturating_record(micros(latency));
        self.service.saturating_record(micros(service));
        match outcome {
            Outcome::Status(s) if (200..300).contains(&s) => self.ok += 1,
            Outcome::Status(_) => self.non_2xx += 1,
            Outcome::Transport => self.transport += 1,
            Outcome::Timeout => self.timeouts += 1,
        }
    }

    pub(crate) fn record_lateness(&mut self, late: Duration) {
        self.lateness.saturating_record(micros(late));
    }

    pub(crate) fn merge(&mut self, other: &Recorder) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.service.add(&other.service);
        let _ = self.lateness.add(&other.lateness);
        self.ok += other.ok;
        self.non_2xx += other.non_2xx;
        self.transport += other.transport;
        self.timeouts += other.timeouts;
        self.warm += other.warm;
    }

    pub(crate) fn completed(&self) -> u64 {
        self.ok + self.non_2xx + self.transport + self.timeouts
    }

    /// The figures over `elapsed` (the measured phase).
    pub(crate) fn summary(&self, elapsed: Duration) -> Summary {
        let q = |h: &Histogram<u64>, q: f64| if h.is_empty() { 0 } else { h.value_at_quantile(q) };
        let secs = elapsed.as_secs_f64();
        Summary {
            requests: self.completed(),
            ok: self.ok,
            non_2xx: self.non_2xx,
            transport_errors: self.transport,
            timeouts: self.timeouts,
            warmup_requests: self.warm,
            elapsed_s: secs,
            rps: if secs > 0.0 { self.completed() as f64 / secs } else { 0.0 },
            p50_us: q(&self.latency, 0.5),
            p90_us: q(&self.latency, 0.9),
            p99_us: q(&self.latency, 0.99),
            p999_us: q(&self.latency, 0.999),
            max_us: if self.latency.is_empty() { 0 } else { self.latency.max() },
            mean_us: if self.latency.is_empty() { 0.0 } else { self.latency.mean() },
            service_p50_us: q(&self.service, 0.5),
            service_p99_us: q(&self.service, 0.99),
            service_p999_us: q(&self.service, 0.999),
            late_p99_us: q(&self.lateness, 0.99),
            late_max_us: if self.lateness.is_empty() { 0 } else { self.lateness.max() },
            connections_opened: 0,
            tls_handshakes: 0,
            tls: None,
        }
    }
}

/// A run's figures, as printed and written to JSON.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub(crate) struct Summary {
    pub(crate) requests: u64,
    pub(crate) ok: u64,
    pub(crate) non_2xx: u64,
    pub(crate) transport_errors: u64,
    pub(crate) timeouts: u64,
    /// Requests completed during the unmeasured warm-up.
    pub(crate) warmup_requests: u64,
    pub(crate) elapsed_s: f64,
    /// Completed requests per second of the measured phase.
    pub(crate) rps: f64,
    pub(crate) p50_us: u64,
    pub(crate) p90_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) p999_us: u64,
    pub(crate) max_us: u64,
    pub(crate) mean_us: f64,
    /// Measured from the actual send, not the intended start: what a closed-loop tool would show.
    pub(crate) service_p50_us: u64,
    pub(crate) service_p99_us: u64,
    pub(crate) service_p999_us: u64,
    /// The generator's lateness against the schedule (open loop; 0 for closed loop). When it is
    /// high the generator, not the target, was the bottleneck.
    pub(crate) late_p99_us: u64,
    pub(crate) late_max_us: u64,
    /// TCP connections opened over the whole run (warm-up and reconnects included).
    pub(crate) connections_opened: u64,
    /// TLS handshakes completed over the whole run: one per connection, none per request.
    pub(crate) tls_handshakes: u64,
    /// What the first TLS handshake negotiated (version, cipher suite, ALPN); none for plaintext.
    pub(crate) tls: Option<String>,
}

impl Summary {
    pub(crate) fn errors(&self) -> u64 {
        self.non_2xx + self.transport_errors + self.timeouts
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests in {:.1} s = {:.0} req/s; latency p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs; \
             errors: {} non-2xx, {} transport, {} timeouts",
            self.requests,
            self.elapsed_s,
            self.rps,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.non_2xx,
            self.transport_errors,
            self.timeouts
        )?;
        if self.late_max_us > 0 {
            write!(f, "; generator lateness p99 {} µs, max {} µs", self.late_p99_us, self.late_max_us)?;
        }
        if let Some(tls) = &self.tls {
            write!(
                f,
                "; {tls}: {} TLS handshakes for {} connections opened",
                self.tls_handshakes, self.connections_opened
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_count_every_outcome_and_merge_adds() {
        let mut a = Recorder::default();
        for us in 1..=1000 {
            a.record(Outcome::Status(200), Duration::from_micros(us), Duration::from_micros(1));
        }
        let mut b = Recorder::default();
        b.record(Outcome::Status(503), Duration::from_millis(50), Duration::from_millis(50));
        b.record(Outcome::Transport, Duration::from_millis(1), Duration::from_millis(1));
        b.record(Outcome::Timeout, Duration::from_secs(500), Duration::from_secs(500));
        b.record_lateness(Duration::from_micros(30));
        a.merge(&b);
        let s = a.summary(Duration::from_secs(2));
        assert_eq!((s.requests, s.ok, s.non_2xx, s.transport_errors, s.timeouts), (1003, 1000, 1, 1, 1));
        assert_eq!(s.errors(), 3);
        assert!((s.rps - 501.5).abs() < 1e-9);
        assert!((499..=503).contains(&s.p50_us), "{s:?}");
        assert!((989..=994).contains(&s.p99_us), "{s:?}");
        assert!(s.max_us >= MAX_US && s.max_us <= MAX_US + MAX_US / 500, "clamped, within the precision: {s:?}");
        assert_eq!(s.late_max_us, 30);
    }

    #[test]
    fn an_empty_run_has_zeros() {
        let s = Recorder::default().summary(Duration::ZERO);
        assert_eq!(s, Summary::default());
    }
}
