//! What the replication manager has done, for metrics and dashboards.

use serde::Serialize;
use std::sync::Arc;

/// The replication state after a step: cheap to pass around (rebuilt only when it changes).
///
/// Prometheus: `switchyard_expert_replicas{layer,expert}` = `replicas[i][e]` with `layer =
/// layers[i]`, `switchyard_rebalances_total` = `rebalances_total`,
/// `switchyard_expert_bytes_migrated_total` = `bytes_migrated_total`, and the imbalance
/// before/after of `last`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicationStatus {
    /// Placement epoch in use: 0 for the layout's placement, +1 per completed rebalance.
    pub epoch: u64,
    /// Model layer index of every MoE layer, in the order of `replicas`.
    pub layers: Vec<usize>,
    /// `replicas[i][e]`: physical slots holding logical expert `e` in MoE layer `layers[i]`.
    pub replicas: Vec<Vec<u32>>,
    /// Rebalances completed (a new placement switched in).
    pub rebalances_total: u64,
    /// Rebalances computed that found nothing better (no weight moved).
    pub rebalances_unchanged: u64,
    /// Slots whose weights were copied, over every rebalance.
    pub slots_migrated_total: u64,
    /// Of those, copies whose source was on another rank (the rest copy within a rank).
    pub slots_copied_remote_total: u64,
    /// Expert weight bytes copied into those slots (slots x bytes of one expert).
    pub bytes_migrated_total: u64,
    /// Of those, the bytes that crossed between ranks, as the EP communicators counted them.
    pub wire_bytes_total: u64,
    /// Bytes of one expert's weights as they travel (f32 on CPU ranks).
    pub expert_bytes: u64,
    /// Whether a migration is under way (shadows being filled).
    pub migrating: bool,
    /// The last completed rebalance.
    pub last: Option<RebalanceSummary>,
}

/// One completed rebalance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RebalanceSummary {
    /// The epoch it switched to.
    pub epoch: u64,
    /// Step whose statistics it used (the step at which the algorithm started).
    pub decided_at_step: u64,
    /// First step that ran under the new placement.
    pub switched_at_step: u64,
    /// Per MoE layer, max over mean rank load of the window under the old placement.
    pub imbalance_before: Vec<f64>,
    /// The same under the new placement.
    pub imbalance_after: Vec<f64>,
    /// Slots whose expert changed.
    pub moved_slots: usize,
    /// Of those, copies from another rank.
    pub remote_copies: usize,
    /// Wall time of the algorithm (on a background thread), milliseconds.
    pub algorithm_ms: f64,
    /// Steps that carried copies.
    pub migration_steps: u64,
}

impl RebalanceSummary {
    /// Worst layer before.
    pub fn max_imbalance_before(&self) -> f64 {
        self.imbalance_before.iter().copied().fold(1.0, f64::max)
    }

    /// Worst layer after.
    pub fn max_imbalance_after(&self) -> f64 {
        self.imbalance_after.iter().copied().fold(1.0, f64::max)
    }
}

/// What one step did, in its [`crate::model::StepOutput`].
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicationStep {
    /// The placement epoch the step ran with.
    pub epoch: u64,
    /// MoE layers whose weights the step copied into shadows.
    pub migrated_layers: usize,
    /// Migration bytes the EP communicators sent during the step.
    pub wire_bytes: u64,
    /// The state after the step.
    pub status: Arc<ReplicationStatus>,
}
