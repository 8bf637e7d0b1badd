//! Load statistics: tokens per logical expert over a sliding window of steps, and the imbalance
//! of a placement under a load.

use thiserror::Error;

use crate::placement::{Placement, EMPTY_SLOT};

/// Errors of the load statistics.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// Shapes disagree; the message names the number.
    #[error("invalid load input: {0}")]
    Shape(String),
}

/// Per layer, per logical expert token counts summed over the last `window` steps.
///
/// A ring buffer keeps the counts of each step in the window; a running sum makes
/// [`LoadStats::loads`] O(layers x experts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadStats {
    n_layers: usize,
    n_experts: usize,
    window: usize,
    /// `ring[i]`: flattened `[layer][expert]` counts of one step.
    ring: Vec<Vec<u64>>,
    /// Next ring position to overwrite once the ring is full.
    next: usize,
    sums: Vec<u64>,
    steps: u64,
}

impl LoadStats {
    /// Empty statistics for `n_layers` MoE layers of `n_experts` experts over `window` steps.
    pub fn new(n_layers: usize, n_experts: usize, window: usize) -> Result<Self, LoadError> {
        if window == 0 {
            return Err(LoadError::Shape(
                "window is 0 steps; need at least 1".into(),
            ));
        }
        Ok(LoadStats {
            n_layers,
            n_experts,
            window,
            ring: Vec::with_capacity(window.min(1024)),
            next: 0,
            sums: vec![0; n_layers * n_experts],
            steps: 0,
        })
    }

    /// Records one step: `layer_counts[layer][expert]` tokens. The oldest step leaves the window.
    pub fn record_step(&mut self, layer_counts: &[Vec<u64>]) -> Result<(), LoadError> {
        check_shape(layer_counts, self.n_layers, self.n_experts)?;
        let flat: Vec<u64> = layer_counts.iter().flatten().copied().collect();
        if self.ring.len() < self.window {
            self.ring.push(flat);
            for (s, &c) in self
                .sums
                .iter_mut()
                .zip(self.ring.last().into_iter().flatten())
            {
                *s = s.saturating_add(c);
            }
        } else {
            let old = std::mem::replace(&mut self.ring[self.next], flat);
            for ((s, &o), &c) in self.sums.iter_mut().zip(&old).zip(&self.ring[self.next]) {
                *s = s.saturating_sub(o).saturating_add(c);
            }
            self.next = (self.next + 1) % self.window;
        }
        self.steps += 1;
        Ok(())
    }

    /// Counts summed over the window, `[layer][expert]`.
    pub fn loads(&self) -> Vec<Vec<u64>> {
        if self.n_experts == 0 {
            return vec![Vec::new(); self.n_layers];
        }
        self.sums
            .chunks(self.n_experts)
            .map(|c| c.to_vec())
            .collect()
    }

    /// [`LoadStats::loads`] as f64, the input of [`crate::rebalance`].
    pub fn loads_f64(&self) -> Vec<Vec<f64>> {
        self.loads()
            .into_iter()
            .map(|l| l.into_iter().map(|c| c as f64).collect())
            .collect()
    }

    /// Total pairs per layer over the window.
    pub fn layer_totals(&self) -> Vec<u64> {
        self.loads().iter().map(|l| l.iter().sum()).collect()
    }

    /// Total pairs over the window, all layers.
    pub fn total(&self) -> u64 {
        self.sums.iter().sum()
    }

    /// Steps recorded since creation (not capped by the window).
    pub fn steps_recorded(&self) -> u64 {
        self.steps
    }

    /// Steps currently in the window.
    pub fn steps_in_window(&self) -> usize {
        self.ring.len()
    }
}

fn check_shape(counts: &[Vec<u64>], n_layers: usize, n_experts: usize) -> Result<(), LoadError> {
    if counts.len() != n_layers {
        return Err(LoadError::Shape(format!(
            "{} layers given, expected {n_layers}",
            counts.len()
        )));
    }
    if let Some(l) = counts.iter().position(|c| c.len() != n_experts) {
        return Err(LoadError::Shape(format!(
            "layer {l} has {} experts, expected {n_experts}",
            counts[l].len()
        )));
    }
    Ok(())
}

/// Sums the `[layer][expert]` counts of several ranks (EP-group aggregation).
pub fn merge_counts(per_rank: &[Vec<Vec<u64>>]) -> Result<Vec<Vec<u64>>, LoadError> {
    let Some(first) = per_rank.first() else {
        return Ok(Vec::new());
    };
    let n_experts = first.first().map_or(0, |l| l.len());
    let mut out = vec![vec![0u64; n_experts]; first.len()];
    for (r, counts) in per_rank.iter().enumerate() {
        check_shape(counts, first.len(), n_experts)
            .map_err(|e| LoadError::Shape(format!("rank {r}: {e}")))?;
        for (o, c) in out.iter_mut().zip(counts) {
            for (o, &c) in o.iter_mut().zip(c) {
                *o = o.saturating_add(c);
            }
        }
    }
    Ok(out)
}

/// Load of every rank: each expert's load split equally among its replicas.
pub fn rank_loads(loads: &[f64], placement: &Placement) -> Result<Vec<f64>, LoadError> {
    if loads.len() != placement.n_logical() {
        return Err(LoadError::Shape(format!(
            "{} expert loads for a placement of {} logical experts",
            loads.len(),
            placement.n_logical()
        )));
    }
    let spr = placement.slots_per_rank();
    let mut ranks = vec![0.0f64; placement.n_ranks()];
    for (p, &e) in placement.slots().iter().enumerate() {
        if e != EMPTY_SLOT {
            let e = e as usize;
            ranks[p / spr] += loads[e] / placement.replicas(e).len() as f64;
        }
    }
    Ok(ranks)
}

/// Max over mean of the per-rank loads ([`rank_loads`]); 1.0 for a zero load (1.0 is perfect).
pub fn imbalance(loads: &[f64], placement: &Placement) -> Result<f64, LoadError> {
    let ranks = rank_loads(loads, placement)?;
    Ok(max_over_mean(&ranks))
}

pub(crate) fn max_over_mean(ranks: &[f64]) -> f64 {
    let sum: f64 = ranks.iter().sum();
    if ranks.is_empty() || sum <= 0.0 {
        return 1.0;
    }
    let max = ranks.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    max / (sum / ranks.len() as f64)
}
