//! `Directive`: what the driver tells every rank about its experts in each step's message.

use super::LayerMigration;
use std::sync::Arc;

/// Sent with every step to every rank. A rank applies it before the step's forward pass, in
/// step order, so all ranks of an EP group run each step under the same placement.
#[derive(Debug, Clone, Default)]
pub struct Directive {
    /// The placement epoch the step runs with. A rank still on the previous epoch installs the
    /// shadow banks it staged for this one first (the switch at a step boundary).
    pub epoch: u64,
    /// Weights to copy into the shadows of the next epoch before the step runs.
    pub migrate: Option<Arc<MigrationChunk>>,
}

/// A few layers' copies towards placement epoch `epoch`.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationChunk {
    /// The epoch these shadows belong to (the running epoch + 1).
    pub epoch: u64,
    /// The layers migrated in this step.
    pub layers: Vec<LayerMigration>,
}

impl Directive {
    /// MoE layers whose weights this step copies.
    pub fn migrated_layers(&self) -> usize {
        self.migrate.as_ref().map_or(0, |c| c.layers.len())
    }
}
