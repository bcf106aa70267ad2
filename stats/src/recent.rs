//! Which units were counted lately: a unit counts at most once per horizon across report windows —
//! as failing (or slow), so one user's retries spread over a few seconds are one failing unit, not
//! one per window; and as a *new* unit, so a user who stays for minutes is one unit in the
//! sample-ratio test, not one per window. Lock-free and fixed-size: a direct-mapped table of
//! (unit tag, second) in 32-bit atomics; a collision forgets a unit early (it may then count
//! twice), and two units alike in slot and 16-bit tag (1 in 65 536 of the units sharing a slot)
//! count as one — on every arm of a flag alike, the table being the flag's.
//!
//! Four bytes a slot, not eight: a flag's table of new units is resident in full once the flag has
//! seen that many users, so its size is the sidecar's memory — 256 KiB per ramped flag.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// Slots of a failing/slow table: 1 024 × 4 B = 4 KiB.
pub(crate) const SMALL: usize = 1024;
/// Slots of a flag's new-units table: 65 536 × 4 B = 256 KiB, allocated at the flag's first
/// randomised request (beyond about that many units within [`NEW_HORIZON_S`], units start to be
/// forgotten early and counted again — on every arm alike, the table being the flag's).
pub(crate) const LARGE: usize = 65_536;
/// Bits of the stored second (wraps after 2^16 s ≈ 18 hours; comparisons are modular, so a unit
/// whose slot was left untouched for a multiple of that, give or take a horizon, counts as recent).
const TIME_BITS: u32 = 16;
const TIME_MASK: u32 = (1 << TIME_BITS) - 1;

/// How long a unit counted as failing (slow) is not counted again, seconds.
pub const HORIZON_S: u32 = 60;
/// How long a unit counted as new is not counted again, seconds.
pub const NEW_HORIZON_S: u32 = 600;

#[derive(Debug)]
pub(crate) struct Recent {
    slots: Box<[AtomicU32]>,
    horizon_s: u32,
}

impl Recent {
    /// A table of `slots` (a power of two) that forgets a unit after `horizon_s` seconds.
    pub(crate) fn new(slots: usize, horizon_s: u32) -> Recent {
        debug_assert!(slots.is_power_of_two());
        Recent { slots: (0..slots).map(|_| AtomicU32::new(0)).collect(), horizon_s }
    }

    /// Whether `unit` (a 64-bit unit hash) should count at second `now_s`: true unless it was
    /// counted within the horizon; counting it records `now_s`.
    #[inline]
    pub(crate) fn first(&self, unit: u64, now_s: u32) -> bool {
        let (slot, mixed) = self.slot(unit);
        // Bits 32..48 of the mixed hash: apart from the slot's (the top ones).
        let tag = ((mixed >> 32) as u32 & TIME_MASK).max(1);
        let now = now_s & TIME_MASK;
        let seen = slot.load(Ordering::Relaxed);
        if seen >> TIME_BITS == tag && (now.wrapping_sub(seen & TIME_MASK) & TIME_MASK) < self.horizon_s {
            return false;
        }
        slot.store(tag << TIME_BITS | now, Ordering::Relaxed);
        true
    }

    /// `unit`'s slot and its mixed hash. Mixed first (Fibonacci hashing), so keys that differ
    /// only in a few bits spread over the table; the slot from the top bits, the tag from others;
    /// tag 0 means "empty".
    #[inline]
    fn slot(&self, unit: u64) -> (&AtomicU32, u64) {
        let mixed = unit.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (&self.slots[(mixed >> (64 - self.slots.len().trailing_zeros())) as usize], mixed)
    }
}

/// A flag's table of units seen, shared by the series of all its variants, so that when units
/// are forgotten early (the table is full) it happens to every arm alike and the arms' counts of
/// new units stay comparable. Allocated on first use: only ramped flags record randomised units.
#[derive(Debug)]
pub(crate) struct Shared {
    table: OnceLock<Recent>,
}

impl Shared {
    pub(crate) fn new() -> Shared {
        Shared { table: OnceLock::new() }
    }

    /// Reads `unit`'s slot and discards it, to bring its cache line in ahead of
    /// [`first`](Self::first); nothing when the table is not allocated yet.
    #[inline]
    pub(crate) fn warm(&self, unit: u64) {
        if let Some(table) = self.table.get() {
            std::hint::black_box(table.slot(unit).0.load(Ordering::Relaxed));
        }
    }

    /// [`Recent::first`] on the flag's table of new units.
    #[inline]
    pub(crate) fn first(&self, unit: u64, now_s: u32) -> bool {
        self.table.get_or_init(|| Recent::new(LARGE, NEW_HORIZON_S)).first(unit, now_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_counts_once_per_horizon() {
        let r = Recent::new(SMALL, HORIZON_S);
        let unit = 0x1234_5678_9abc_def0;
        assert!(r.first(unit, 100));
        assert!(!r.first(unit, 100));
        assert!(!r.first(unit, 100 + HORIZON_S - 1));
        assert!(r.first(unit, 100 + HORIZON_S), "counts again after the horizon");
        assert!(r.first(unit ^ (1 << 63), 100 + HORIZON_S), "another unit counts");
    }

    #[test]
    fn the_clock_wraps() {
        let r = Recent::new(LARGE, NEW_HORIZON_S);
        let unit = 42 << 40;
        let late = (1u32 << TIME_BITS) - 5;
        assert!(r.first(unit, late));
        assert!(!r.first(unit, late + 10), "10 s later, across the wrap");
    }

    #[test]
    fn units_in_one_slot_evict_each_other() {
        let r = Recent::new(SMALL, HORIZON_S);
        let a = 0x0123_4567_89ab_cdef_u64;
        // The unit whose mixed hash differs from `a`'s only in the tag bits: same slot.
        let mixed = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (0x5a5a << 32);
        let b = mixed.wrapping_mul(0xF1DE_83E1_9937_733D); // the multiplier's inverse mod 2^64
        assert_eq!(r.slot(a).0 as *const _, r.slot(b).0 as *const _);
        assert!(r.first(a, 10));
        assert!(r.first(b, 11), "another tag in the slot is another unit");
        assert!(r.first(a, 12), "`a` was forgotten early: it counts again");
        assert!(!r.first(a, 13));
    }
}
