//! Distinct units per report window: [`UnitSet`], a lock-free counter of 64-bit unit hashes that is
//! exact for a few units and degrades to linear counting over a fixed atomic bitmap, so memory per
//! series stays bounded however many units a window sees.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Units the exact set holds before the count becomes an estimate.
pub const EXACT_SLOTS: usize = 32;

/// Stands for a hash of 0, which marks an empty exact slot. Two units collide only if one hashes
/// to 0 and the other to this constant.
const ZERO_ALIAS: u64 = 0x9E37_79B9_7F4A_7C15;

/// A bitmap of 2^15 bits (4 KiB): the per-variant unit count, within about 1 % up to ten thousand
/// units per window.
pub type UnitSetLarge = UnitSet<512>;
/// A bitmap of 2^12 bits (512 B): failing or slow units, which are few unless the variant is
/// broken; within about 2 % up to a thousand per window.
pub type UnitSetSmall = UnitSet<64>;

/// Distinct 64-bit unit hashes seen since the last [`take`](Self::take), with a bitmap of
/// `WORDS × 64` bits (`WORDS` a power of two).
///
/// Below [`EXACT_SLOTS`] distinct units the count is exact: each unit sits in a slot, claimed by
/// compare-and-swap. Every unit also sets one bitmap bit, picked by the hash's high bits (the low
/// bits modulo 100 000 chose the ramp bucket, so they are not uniform within one variant); once the
/// slots overflow, the count is the linear-counting estimate `m ln(m / zero bits)` over that
/// bitmap, and a full bitmap saturates at the number of inserts (an honest upper bound).
///
/// [`insert`](Self::insert) is lock-free and allocation-free: a scan of the slots until the set
/// overflows (then skipped), one atomic load of the bit, and a write only when the bit was clear.
/// As with the other counters, a `take` racing with inserts may put an insert in either window.
pub struct UnitSet<const WORDS: usize> {
    slots: [AtomicU64; EXACT_SLOTS],
    overflowed: AtomicBool,
    inserts: AtomicU64,
    bits: [AtomicU64; WORDS],
}

/// What a [`UnitSet`] counted over one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Taken {
    /// Calls to `insert`, repeats included.
    pub inserts: u64,
    /// Distinct units: exact below [`EXACT_SLOTS`], else estimated.
    pub units: u64,
}

impl<const WORDS: usize> UnitSet<WORDS> {
    /// log2 of the number of bitmap bits.
    const BITS_LOG2: u32 = {
        assert!(WORDS.is_power_of_two(), "the bitmap size must be a power of two");
        WORDS.trailing_zeros() + 6
    };

    /// An empty set.
    pub fn new() -> Self {
        UnitSet {
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
            overflowed: AtomicBool::new(false),
            inserts: AtomicU64::new(0),
            bits: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Records one sighting of the unit whose hash is `hash`.
    #[inline]
    pub fn insert(&self, hash: u64) {
        let hash = if hash == 0 { ZERO_ALIAS } else { hash };
        self.inserts.fetch_add(1, Ordering::Relaxed);
        let index = hash >> (64 - Self::BITS_LOG2);
        let (word, mask) = (&self.bits[(index >> 6) as usize], 1u64 << (index & 63));
        if word.load(Ordering::Relaxed) & mask == 0 {
            word.fetch_or(mask, Ordering::Relaxed);
        }
        if !self.overflowed.load(Ordering::Relaxed) && !self.insert_exact(hash) {
            self.overflowed.store(true, Ordering::Relaxed);
        }
    }

    /// Records one sighting of a unit already counted (its distinct count stays): see
    /// `SeriesStats::record_split`, which counts a failing unit once per horizon.
    #[inline]
    pub fn sighting(&self) {
        self.inserts.fetch_add(1, Ordering::Relaxed);
    }

    /// Puts `hash` in the exact set; `false` when every slot holds another unit. Slots fill in
    /// order and every inserter claims the first empty one, so a unit never takes two slots.
    fn insert_exact(&self, hash: u64) -> bool {
        for slot in &self.slots {
            let current = slot.load(Ordering::Relaxed);
            if current == hash {
                return true;
            }
            if current == 0 {
                match slot.compare_exchange(0, hash, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => return true,
                    Err(now) if now == hash => return true,
                    Err(_) => {}
                }
            }
        }
        false
    }

    /// Drains the set: the inserts and distinct units since the last `take`, all back to zero.
    pub fn take(&self) -> Taken {
        // Load first: most words are zero, and a load does not take the cache line exclusively.
        let drain = |a: &AtomicU64| if a.load(Ordering::Relaxed) == 0 { 0 } else { a.swap(0, Ordering::Relaxed) };
        let overflowed = self.overflowed.swap(false, Ordering::Relaxed);
        let exact = self.slots.iter().filter(|s| drain(s) != 0).count() as u64;
        let zero_bits: u32 = self.bits.iter().map(|w| drain(w).count_zeros()).sum();
        let inserts = self.inserts.swap(0, Ordering::Relaxed);
        Self::count(overflowed, exact, zero_bits, inserts)
    }

    /// What [`take`](Self::take) would return now, leaving the set as it is (for inspection).
    pub fn peek(&self) -> Taken {
        let overflowed = self.overflowed.load(Ordering::Relaxed);
        let exact = self.slots.iter().filter(|s| s.load(Ordering::Relaxed) != 0).count() as u64;
        let zero_bits: u32 = self.bits.iter().map(|w| w.load(Ordering::Relaxed).count_zeros()).sum();
        Self::count(overflowed, exact, zero_bits, self.inserts.load(Ordering::Relaxed))
    }

    fn count(overflowed: bool, exact: u64, zero_bits: u32, inserts: u64) -> Taken {
        let units = if !overflowed {
            exact
        } else if zero_bits == 0 {
            inserts
        } else {
            let m = (1u64 << Self::BITS_LOG2) as f64;
            // Never below what the exact slots held: they are a subset of the units.
            ((m * (m / f64::from(zero_bits)).ln()).round() as u64).max(exact)
        };
        Taken { inserts, units }
    }
}

impl<const WORDS: usize> Default for UnitSet<WORDS> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const WORDS: usize> fmt::Debug for UnitSet<WORDS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnitSet")
            .field("bits", &(1u64 << Self::BITS_LOG2))
            .field("inserts", &self.inserts.load(Ordering::Relaxed))
            .field("overflowed", &self.overflowed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::thread;

    use super::*;

    /// Unit hashes as the ramp computes them: well mixed 64-bit values (splitmix64).
    fn hash(i: u64) -> u64 {
        let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 30)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 27)
    }

    #[test]
    fn exact_below_the_slot_count() {
        let set = UnitSetLarge::new();
        for _ in 0..3 {
            for i in 0..10 {
                set.insert(hash(i));
            }
        }
        assert_eq!(set.take(), Taken { inserts: 30, units: 10 });
        // Zero is a unit like any other.
        let set = UnitSetSmall::new();
        set.insert(0);
        set.insert(0);
        set.insert(1);
        assert_eq!(set.take(), Taken { inserts: 3, units: 2 });
        for i in 0..EXACT_SLOTS as u64 {
            set.insert(hash(i));
            set.insert(hash(i));
        }
        assert_eq!(set.take().units, EXACT_SLOTS as u64, "a full exact set is still exact");
    }

    #[test]
    fn take_resets() {
        let set = UnitSetLarge::new();
        for i in 0..1_000 {
            set.insert(hash(i));
        }
        let peeked = set.peek();
        assert_eq!(peeked.inserts, 1_000);
        assert_eq!(set.peek(), peeked, "peek leaves the set as it is");
        assert_eq!(set.take(), peeked);
        assert_eq!(set.take(), Taken::default());
        set.insert(hash(7));
        assert_eq!(set.take(), Taken { inserts: 1, units: 1 }, "exact again after an overflowed window");
    }

    fn assert_within(got: u64, want: u64, tolerance: f64) {
        let error = (got as f64 - want as f64).abs() / want as f64;
        assert!(error <= tolerance, "estimated {got} for {want} distinct ({:.2} %)", error * 100.0);
    }

    #[test]
    fn estimates_within_a_few_percent() {
        for (distinct, seed) in [(33u64, 0u64), (1_000, 1 << 32), (10_000, 2 << 32)] {
            let large = UnitSetLarge::new();
            let small = UnitSetSmall::new();
            for round in 0..3 {
                for i in 0..distinct {
                    large.insert(hash(seed + i));
                    if round == 0 && i < 1_000 {
                        small.insert(hash(seed + i));
                    }
                }
            }
            let taken = large.take();
            assert_eq!(taken.inserts, 3 * distinct);
            assert_within(taken.units, distinct, 0.02);
            assert_within(small.take().units, distinct.min(1_000), 0.05);
        }
    }

    #[test]
    fn a_full_bitmap_saturates_at_the_inserts() {
        let set = UnitSet::<1>::new();
        for i in 0..5_000 {
            set.insert(hash(i));
        }
        assert_eq!(set.take(), Taken { inserts: 5_000, units: 5_000 });
    }

    #[test]
    fn concurrent_inserts_lose_nothing_in_the_exact_regime() {
        for _ in 0..200 {
            let set = Arc::new(UnitSetLarge::new());
            let threads: Vec<_> = (0..4)
                .map(|t| {
                    let set = Arc::clone(&set);
                    // Each thread inserts all 24 units, in its own order.
                    thread::spawn(move || {
                        for i in 0..24 {
                            set.insert(hash((i * 7 + t * 5) % 24));
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(set.take(), Taken { inserts: 96, units: 24 });
        }
    }
}
