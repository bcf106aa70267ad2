//! [`DenseHistogram`]: every bucket's count in one array, for summing many sparse histograms
//! (a batch of reports) before merging the sum into a total once. Adding a pair is one indexed
//! add whatever the sum already holds, where merging into a [`SparseHistogram`] walks it.

use crate::histogram::{BucketOutOfRange, NUM_BUCKETS, SparseHistogram};

/// A sum of histograms as an array of [`NUM_BUCKETS`] counts (15.5 KiB, allocated once: reuse it)
/// and the list of buckets it touched, so taking the sum out costs what it holds, not the layout.
#[derive(Debug, Clone)]
pub struct DenseHistogram {
    counts: Box<[u64]>,
    /// Buckets with a non-zero count, in the order they were first added to.
    touched: Vec<u32>,
}

impl DenseHistogram {
    /// An empty sum.
    pub fn new() -> Self {
        Self { counts: vec![0; NUM_BUCKETS].into_boxed_slice(), touched: Vec::new() }
    }

    /// Whether nothing was added since the last [`drain_into`](Self::drain_into).
    pub fn is_empty(&self) -> bool {
        self.touched.is_empty()
    }

    /// Adds `count` values to bucket `index` (counts saturate at `u64::MAX`).
    ///
    /// # Errors
    ///
    /// [`BucketOutOfRange`] if `index` is not below [`NUM_BUCKETS`]; nothing is added.
    #[inline]
    pub fn add(&mut self, index: u32, count: u64) -> Result<(), BucketOutOfRange> {
        let slot = self.counts.get_mut(index as usize).ok_or(BucketOutOfRange { index })?;
        if count != 0 {
            if *slot == 0 {
                self.touched.push(index);
            }
            *slot = slot.saturating_add(count);
        }
        Ok(())
    }

    /// Merges the sum into `into` and leaves `self` empty, ready for reuse.
    pub fn drain_into(&mut self, into: &mut SparseHistogram) {
        if self.touched.is_empty() {
            return;
        }
        self.touched.sort_unstable();
        let (touched, counts) = (&self.touched, &self.counts);
        into.merge_sorted_from(touched.len(), |j| (touched[j], counts[touched[j] as usize]));
        for &index in &self.touched {
            self.counts[index as usize] = 0;
        }
        self.touched.clear();
    }
}

impl Default for DenseHistogram {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summing_then_draining_is_merging_each() {
        let parts = [vec![(3u32, 1u64), (200, 5), (1983, 2)], vec![(200, 1), (4, 7)], vec![], vec![(3, u64::MAX)]];
        let mut dense = DenseHistogram::new();
        let mut expected = SparseHistogram::from_pairs([(200, 10)]).unwrap();
        let mut total = expected.clone();
        for p in &parts {
            for &(i, c) in p {
                dense.add(i, c).unwrap();
            }
            expected.merge(&SparseHistogram::from_pairs(p.iter().copied()).unwrap());
        }
        dense.drain_into(&mut total);
        assert_eq!(total, expected);
        assert!(dense.is_empty());
        // Reused: nothing of the first sum is left.
        dense.add(5, 1).unwrap();
        dense.add(5, 0).unwrap();
        let mut again = SparseHistogram::new();
        dense.drain_into(&mut again);
        assert_eq!(again.iter().collect::<Vec<_>>(), [(5, 1)]);
        assert_eq!(dense.add(NUM_BUCKETS as u32, 1), Err(BucketOutOfRange { index: NUM_BUCKETS as u32 }));
    }
}
