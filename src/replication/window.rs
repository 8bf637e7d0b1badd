//! `LoadWindow`: routed-token counts over the last `window` steps in a bounded number of
//! buckets, so a long window at DeepSeek scale (4096 steps x 58 layers x 256 experts) costs a few
//! megabytes instead of a copy of every step.

use switchyard_experts::{LoadError, LoadStats};

/// Most buckets a window keeps; steps are summed into buckets of `window / MAX_BUCKETS`.
pub const MAX_BUCKETS: usize = 64;

/// Per MoE layer, per logical expert counts over about the last `window` steps: whole buckets
/// in a [`LoadStats`] ring plus the bucket being filled (so the span is `window` steps to within
/// one bucket).
#[derive(Debug, Clone)]
pub(crate) struct LoadWindow {
    buckets: LoadStats,
    bucket_steps: usize,
    partial: Vec<Vec<u64>>,
    partial_steps: usize,
}

impl LoadWindow {
    /// An empty window of `window` steps over `layers` layers of `experts` experts.
    pub fn new(layers: usize, experts: usize, window: usize) -> Result<Self, LoadError> {
        let bucket_steps = window.div_ceil(MAX_BUCKETS).max(1);
        Ok(Self {
            buckets: LoadStats::new(layers, experts, window.div_ceil(bucket_steps).max(1))?,
            bucket_steps,
            partial: vec![vec![0; experts]; layers],
            partial_steps: 0,
        })
    }

    /// Adds one step's `counts[layer][expert]`.
    pub fn record(&mut self, counts: &[Vec<u64>]) -> Result<(), LoadError> {
        if counts.len() != self.partial.len()
            || counts
                .iter()
                .zip(&self.partial)
                .any(|(c, p)| c.len() != p.len())
        {
            return Err(LoadError::Shape(format!(
                "a step of {} layers for a window of {} layers of {} experts",
                counts.len(),
                self.partial.len(),
                self.partial.first().map_or(0, Vec::len)
            )));
        }
        for (p, c) in self.partial.iter_mut().zip(counts) {
            p.iter_mut()
                .zip(c)
                .for_each(|(p, &c)| *p = p.saturating_add(c));
        }
        self.partial_steps += 1;
        if self.partial_steps == self.bucket_steps {
            self.buckets.record_step(&self.partial)?;
            self.partial.iter_mut().for_each(|p| p.fill(0));
            self.partial_steps = 0;
        }
        Ok(())
    }

    /// Counts over the window, `[layer][expert]`, as the input of the rebalancer.
    pub fn loads_f64(&self) -> Vec<Vec<f64>> {
        self.buckets
            .loads()
            .iter()
            .zip(&self.partial)
            .map(|(b, p)| {
                b.iter()
                    .zip(p)
                    .map(|(&b, &p)| b.saturating_add(p) as f64)
                    .collect()
            })
            .collect()
    }

    /// Tokens over the window, all layers.
    pub fn total(&self) -> u64 {
        self.buckets.total() + self.partial.iter().flatten().sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_window_keeps_every_step() {
        let mut w = LoadWindow::new(1, 2, 3).unwrap();
        for s in 1..=5u64 {
            w.record(&[vec![s, 1]]).unwrap();
        }
        assert_eq!(w.loads_f64(), vec![vec![3.0 + 4.0 + 5.0, 3.0]]);
    }

    #[test]
    fn a_long_window_sums_buckets_and_the_partial_one() {
        // 256 steps: buckets of 4 steps.
        let mut w = LoadWindow::new(1, 1, 256).unwrap();
        for _ in 0..300 {
            w.record(&[vec![1]]).unwrap();
        }
        // 64 full buckets (256 steps) after 300 steps; the partial one is empty.
        assert_eq!(w.loads_f64(), vec![vec![256.0]]);
        w.record(&[vec![1]]).unwrap();
        assert_eq!(w.total(), 257);
        assert!(w.record(&[vec![1, 2]]).is_err());
    }
}
