//! `Shard`: the part of the model one rank holds.

use std::ops::Range;
use switchyard_experts::Placement;

/// What one rank holds and computes: its attention heads (TP), its expert slots (EP) and its
/// pipeline stage's layers (PP).
#[derive(Debug, Clone)]
pub struct Shard {
    /// Index in the TP group.
    pub tp_rank: usize,
    /// TP group size.
    pub tp: usize,
    /// Index in the EP group (the stage).
    pub ep_rank: usize,
    /// EP group size.
    pub ep: usize,
    /// Pipeline stage.
    pub stage: usize,
    /// Pipeline stages.
    pub pp: usize,
    /// The model layers of this stage.
    pub layers: Range<usize>,
    /// Expert placement of each sparse layer of the model (None for dense layers).
    pub placements: Vec<Option<Placement>>,
    /// Where the parts of a dense MLP live (its intermediate dim split into `n_logical` parts,
    /// every token visiting all of them).
    pub dense_placement: Placement,
    /// Ranks per node (replica choice prefers the same node).
    pub ranks_per_node: usize,
}

impl Shard {
    /// The whole model on one rank.
    pub fn single(num_layers: usize, placements: Vec<Option<Placement>>) -> Self {
        let dense_placement = Placement::contiguous(1, 1, 0).expect("one part on one rank");
        Self {
            tp_rank: 0,
            tp: 1,
            ep_rank: 0,
            ep: 1,
            stage: 0,
            pp: 1,
            layers: 0..num_layers,
            placements,
            dense_placement,
            ranks_per_node: 1,
        }
    }

    /// Whether this rank embeds tokens.
    pub fn is_first_stage(&self) -> bool {
        self.stage == 0
    }

    /// Whether this rank computes logits.
    pub fn is_last_stage(&self) -> bool {
        self.stage + 1 == self.pp
    }

    /// This rank's share of `n` items split evenly over the TP group (heads).
    pub fn tp_range(&self, n: usize) -> Range<usize> {
        let per = n / self.tp;
        self.tp_rank * per..(self.tp_rank + 1) * per
    }

    /// Data-parallel attention groups in the stage.
    pub fn dp(&self) -> usize {
        self.ep / self.tp
    }

    /// This rank's data-parallel attention group.
    pub fn dp_rank(&self) -> usize {
        self.ep_rank / self.tp
    }
}
