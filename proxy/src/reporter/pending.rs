//! Reports not yet acknowledged by the control plane. Each interval's delta becomes a report with
//! the next sequence number and stays here until acknowledged. While the control plane is away,
//! reports pile up to `max_unsent`; past that, new deltas are merged into the newest report that
//! was never sent (safe: nothing of it can have been applied), so memory stays bounded while no
//! count is lost. Reports once sent are never merged: the control plane may have applied them.
//!
//! Sequence numbers have no gaps: a merge uses none, and nothing is sent on a stream before its
//! Welcome, which renumbers what is pending to follow the control plane's last applied report. The
//! control plane refuses a report that jumps past the next number, so a stream that knows a
//! sidecar's epoch cannot silence it with a huge sequence.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rampart_proto::convert;
use rampart_proto::rampart::v1::StatsReport;
use rampart_stats::Delta;

#[derive(Debug)]
struct Entry {
    seq: u64,
    window_start_ms: i64,
    window_end_ms: i64,
    series: BTreeMap<(String, String), Delta>,
    overflow: u64,
    /// Flags evaluated in the window.
    evaluated: BTreeSet<String>,
    /// Sent on some stream at some time: may have been applied, must never be merged.
    ever_sent: bool,
    /// Sent on the current stream, awaiting its ack.
    in_flight: bool,
}

#[derive(Debug)]
pub(crate) struct Pending {
    entries: VecDeque<Entry>,
    next_seq: u64,
    max_unsent: usize,
    max_in_flight: usize,
    /// The current stream's Welcome arrived: reports may be sent.
    welcomed: bool,
}

impl Pending {
    pub(crate) fn new(max_unsent: usize, max_in_flight: usize) -> Pending {
        Pending {
            entries: VecDeque::new(),
            next_seq: 1,
            max_unsent: max_unsent.max(1),
            max_in_flight: max_in_flight.max(1),
            welcomed: false,
        }
    }

    /// Adds one interval's deltas and the flags evaluated in it (nothing when both are empty).
    pub(crate) fn push(
        &mut self,
        deltas: Vec<(String, String, Delta)>,
        overflow: u64,
        evaluated: Vec<String>,
        start_ms: i64,
        end_ms: i64,
    ) {
        if deltas.is_empty() && overflow == 0 && evaluated.is_empty() {
            return;
        }
        let unsent = self.entries.iter().filter(|e| !e.ever_sent).count();
        if unsent >= self.max_unsent
            && let Some(last) = self.entries.back_mut().filter(|e| !e.ever_sent)
        {
            for (flag, variant, d) in deltas {
                last.series.entry((flag, variant)).or_default().merge(&d);
            }
            last.overflow += overflow;
            last.evaluated.extend(evaluated);
            last.window_end_ms = end_ms;
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let series = deltas.into_iter().map(|(f, v, d)| ((f, v), d)).collect();
        self.entries.push_back(Entry {
            seq,
            window_start_ms: start_ms,
            window_end_ms: end_ms,
            series,
            overflow,
            evaluated: evaluated.into_iter().collect(),
            ever_sent: false,
            in_flight: false,
        });
    }

    /// A new stream is opening: nothing is sent on it before its Welcome.
    pub(crate) fn new_stream(&mut self) {
        self.welcomed = false;
        self.entries.iter_mut().for_each(|e| e.in_flight = false);
    }

    /// The stream's Welcome: drop what the control plane already applied; everything else is
    /// resent, numbered from the one after `last_applied` (a control plane that lost its store
    /// would otherwise see a jump and refuse it).
    pub(crate) fn welcome(&mut self, last_applied: u64) {
        self.ack(last_applied);
        let mut seq = last_applied;
        for e in &mut self.entries {
            seq += 1;
            e.seq = seq;
            e.in_flight = false;
        }
        self.next_seq = seq + 1;
        self.welcomed = true;
    }

    /// Everything up to `seq` is applied.
    pub(crate) fn ack(&mut self, seq: u64) {
        while self.entries.front().is_some_and(|e| e.seq <= seq) {
            self.entries.pop_front();
        }
    }

    /// The reports to send now, in order, within the in-flight window; marks them sent.
    pub(crate) fn next_to_send(&mut self) -> Vec<StatsReport> {
        if !self.welcomed {
            return Vec::new();
        }
        let mut room = self.max_in_flight.saturating_sub(self.entries.iter().filter(|e| e.in_flight).count());
        let mut out = Vec::new();
        for e in self.entries.iter_mut().filter(|e| !e.in_flight) {
            if room == 0 {
                break;
            }
            room -= 1;
            e.in_flight = true;
            e.ever_sent = true;
            out.push(StatsReport {
                seq: e.seq,
                first_seq: e.seq,
                window_start_ms: e.window_start_ms,
                window_end_ms: e.window_end_ms,
                stats: e.series.iter().map(|((f, v), d)| convert::variant_stats(f, v, d)).collect(),
                overflow: e.overflow,
                evaluated_flags: e.evaluated.iter().cloned().collect(),
            });
        }
        out
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `requests` requests, all randomised, from one unit.
    fn delta(requests: u64) -> Vec<(String, String, Delta)> {
        let split = rampart_stats::Split { requests, units: 1, ..Default::default() };
        vec![("f".into(), "on".into(), Delta { requests, split, ..Delta::default() })]
    }

    fn total(reports: &[StatsReport]) -> u64 {
        reports.iter().flat_map(|r| &r.stats).map(|s| s.requests).sum()
    }

    #[test]
    fn sequences_acks_and_resend() {
        let mut p = Pending::new(10, 2);
        p.push(delta(1), 0, Vec::new(), 0, 1);
        assert!(p.next_to_send().is_empty(), "nothing before the Welcome");
        p.welcome(0);
        p.push(Vec::new(), 0, Vec::new(), 1, 2); // empty: no report, no sequence used
        p.push(delta(2), 0, Vec::new(), 2, 3);
        p.push(delta(3), 0, Vec::new(), 3, 4);
        let sent = p.next_to_send();
        assert_eq!(sent.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2], "window of two in flight");
        assert!(p.next_to_send().is_empty());
        p.ack(1);
        assert_eq!(p.next_to_send().iter().map(|r| r.seq).collect::<Vec<_>>(), [3]);
        // The stream breaks; the control plane had applied 2: only 3 is resent.
        p.welcome(2);
        assert_eq!(p.next_to_send().iter().map(|r| r.seq).collect::<Vec<_>>(), [3]);
        p.ack(3);
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn bounded_while_disconnected_without_losing_counts() {
        let mut p = Pending::new(3, 8);
        p.push(delta(1), 0, Vec::new(), 0, 1);
        p.welcome(0);
        let first = p.next_to_send(); // seq 1 went out, then the stream broke
        p.new_stream();
        assert_eq!(first.len(), 1);
        for i in 2..=100 {
            p.push(delta(i), 1, Vec::new(), i as i64, i as i64 + 1);
        }
        assert!(p.len() <= 4, "bounded: {}", p.len());
        p.welcome(0); // seq 1 was not applied
        let resent = p.next_to_send();
        assert_eq!(resent[0].seq, 1, "the sent report is resent as it was, never merged");
        assert_eq!(total(&resent), (1..=100).sum::<u64>());
        let split = || resent.iter().flat_map(|r| &r.stats).filter_map(|s| s.split.as_ref());
        assert_eq!(split().map(|s| s.requests).sum::<u64>(), (1..=100).sum::<u64>());
        assert_eq!(split().map(|s| s.units).sum::<u64>(), 100, "merged windows count unit-windows");
        assert_eq!(resent.iter().map(|r| r.overflow).sum::<u64>(), 99);
        assert!(resent.windows(2).all(|w| w[1].seq == w[0].seq + 1), "merges use no sequence numbers");
        assert_eq!(resent.last().unwrap().seq, resent.len() as u64);
    }

    #[test]
    fn a_control_plane_that_lost_its_store_gets_numbers_it_can_apply() {
        let mut p = Pending::new(10, 8);
        p.welcome(0);
        for i in 1..=5 {
            p.push(delta(i), 0, Vec::new(), i as i64, i as i64 + 1);
        }
        let sent = p.next_to_send();
        assert_eq!(sent.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        p.ack(3);
        p.new_stream();
        p.push(delta(6), 0, Vec::new(), 6, 7);
        assert!(p.next_to_send().is_empty());
        // A fresh store: nothing applied. What is pending follows on from there, counts intact.
        p.welcome(0);
        let resent = p.next_to_send();
        assert_eq!(resent.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(total(&resent), 4 + 5 + 6);
        p.push(delta(7), 0, Vec::new(), 7, 8);
        assert_eq!(p.next_to_send().iter().map(|r| r.seq).collect::<Vec<_>>(), [4]);
    }
}
