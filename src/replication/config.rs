//! `ReplicationConfig`: when the driver rebalances and how fast weights move.

use super::ReplicationError;
use crate::layout::ExpertsLayout;
use switchyard_experts::RebalanceOptions;

/// When to rebalance, over which statistics, and how many layers to migrate per step.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicationConfig {
    /// Rebalance every this many steps (the layout's `[experts] rebalance_every`; 0: never on a
    /// schedule).
    pub rebalance_every: usize,
    /// Steps of routing statistics a rebalance looks at (the layout's `[experts] window`).
    pub window: usize,
    /// Rebalance early when the worst MoE layer's imbalance over the window (max over mean rank
    /// load under the current placement) passes this.
    pub imbalance_threshold: Option<f64>,
    /// Steps at least between two rebalances the threshold starts.
    pub min_interval: usize,
    /// MoE layers whose weights move per step while a migration runs.
    pub layers_per_step: usize,
    /// Knobs of the rebalancing algorithm (expert groups for hierarchical balancing).
    pub options: RebalanceOptions,
}

impl ReplicationConfig {
    /// Rebalance every `rebalance_every` steps over a window of `window` steps, two layers
    /// migrated per step, no threshold.
    pub fn every(rebalance_every: usize, window: usize) -> Self {
        Self {
            rebalance_every,
            window,
            imbalance_threshold: None,
            min_interval: rebalance_every.max(1),
            layers_per_step: 2,
            options: RebalanceOptions::default(),
        }
    }

    /// The layout's `[experts] rebalance_every` and `window`.
    pub fn from_layout(experts: &ExpertsLayout) -> Self {
        Self::every(experts.rebalance_every, experts.window)
    }

    /// Whether anything ever starts a rebalance.
    pub fn is_active(&self) -> bool {
        self.rebalance_every > 0 || self.imbalance_threshold.is_some()
    }

    /// Checks the numbers, naming the one that cannot work.
    pub fn validate(&self) -> Result<(), ReplicationError> {
        if self.window == 0 {
            return Err(ReplicationError::Config(
                "window is 0 steps; the statistics need at least 1".into(),
            ));
        }
        if self.layers_per_step == 0 {
            return Err(ReplicationError::Config(
                "layers_per_step is 0; a migration would never finish".into(),
            ));
        }
        if let Some(t) = self.imbalance_threshold {
            if !(t.is_finite() && t >= 1.0) {
                return Err(ReplicationError::Config(format!(
                    "imbalance threshold {t} must be a number >= 1 (max over mean rank load)"
                )));
            }
        }
        Ok(())
    }
}
