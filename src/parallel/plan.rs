//! `ParallelPlan`: the layout as the model needs it, checked against the model, turned into
//! each rank's [`Shard`].

use super::Shard;
use crate::comm::RankGrid;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use switchyard_experts::Placement;

/// How logical experts are laid onto physical slots.
#[derive(Debug, Clone, PartialEq)]
pub enum PlacementSpec {
    /// Experts in order, spare slots filled with replicas.
    Contiguous,
    /// An explicit slot → logical expert map, the same for every sparse layer.
    Explicit(Vec<u32>),
}

/// Parallel sizes and expert placement.
#[derive(Debug, Clone)]
pub struct ParallelPlan {
    /// TP, EP and PP sizes.
    pub grid: RankGrid,
    /// Spare expert slots per sparse layer (replicas).
    pub redundant: usize,
    /// Initial placement.
    pub placement: PlacementSpec,
    /// Layers per pipeline stage (None: as even as possible).
    pub stage_layers: Option<Vec<usize>>,
    /// Ranks per node.
    pub ranks_per_node: usize,
}

impl ParallelPlan {
    /// One rank.
    pub fn single() -> Self {
        Self { grid: RankGrid::single(), redundant: 0, placement: PlacementSpec::Contiguous, stage_layers: None, ranks_per_node: 1 }
    }

    /// Checks the plan against the model, naming the number that does not fit.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        let RankGrid { tp, ep, pp } = self.grid;
        if cfg.num_heads % tp != 0 {
            let fits: Vec<usize> = (1..=cfg.num_heads).filter(|d| cfg.num_heads % d == 0).collect();
            return Err(Error::Layout(format!("tp {tp} does not divide the {} attention heads; tp could be {fits:?}", cfg.num_heads)));
        }
        let kv = cfg.num_kv_heads;
        if kv % tp != 0 && tp % kv != 0 {
            return Err(Error::Layout(format!("tp {tp} and the {kv} KV heads must divide one another")));
        }
        if ep % self.stage_ranks_per_node() != 0 {
            return Err(Error::Layout(format!("ep {ep} is not a whole number of nodes of {} ranks", self.ranks_per_node)));
        }
        if pp > cfg.num_layers {
            return Err(Error::Layout(format!("pp {pp} exceeds the {} layers", cfg.num_layers)));
        }
        if let Some(split) = &self.stage_layers {
            let total: usize = split.iter().sum();
            if split.len() != pp || total != cfg.num_layers || split.contains(&0) {
                return Err(Error::Layout(format!(
                    "pipeline layers {split:?} must be {pp} positive counts summing to {} (they sum to {total})",
                    cfg.num_layers
                )));
            }
        }
        if let Some(moe) = &cfg.moe {
            let slots = moe.n_experts + self.redundant;
            if slots % ep != 0 {
                let fit = (ep - moe.n_experts % ep) % ep;
                return Err(Error::Layout(format!(
                    "experts ({}) + redundant ({}) = {slots} slots is not divisible by ep {ep}; redundant could be {fit} or {}",
                    moe.n_experts,
                    self.redundant,
                    fit + ep
                )));
            }
        }
        Ok(())
    }

    /// Ranks of one stage per node: a stage smaller than a node lives in one node.
    fn stage_ranks_per_node(&self) -> usize {
        self.ranks_per_node.clamp(1, self.grid.ep)
    }

    /// The layers of each stage.
    pub fn stage_ranges(&self, num_layers: usize) -> Vec<std::ops::Range<usize>> {
        let pp = self.grid.pp;
        let counts: Vec<usize> = match &self.stage_layers {
            Some(c) => c.clone(),
            None => (0..pp).map(|s| num_layers / pp + usize::from(s < num_layers % pp)).collect(),
        };
        let mut start = 0;
        counts
            .iter()
            .map(|c| {
                let r = start..start + c;
                start += c;
                r
            })
            .collect()
    }

    /// The placement of every layer (None for dense layers).
    pub fn placements(&self, cfg: &ModelConfig) -> Result<Vec<Option<Placement>>> {
        let ep = self.grid.ep;
        (0..cfg.num_layers)
            .map(|layer| {
                let Some(moe) = cfg.moe.as_ref().filter(|_| cfg.is_sparse_layer(layer)) else { return Ok(None) };
                let p = match &self.placement {
                    PlacementSpec::Contiguous => Placement::contiguous(moe.n_experts, ep, self.redundant),
                    PlacementSpec::Explicit(slots) => Placement::from_slots(slots.clone(), moe.n_experts, ep),
                };
                p.map(Some).map_err(|e| Error::Layout(e.to_string()))
            })
            .collect()
    }

    /// The shard of global rank `rank`.
    pub fn shard(&self, cfg: &ModelConfig, rank: usize) -> Result<Shard> {
        self.validate(cfg)?;
        let c = self.grid.coords(rank);
        Ok(Shard {
            tp_rank: c.tp_rank,
            tp: self.grid.tp,
            ep_rank: c.ep_rank,
            ep: self.grid.ep,
            stage: c.stage,
            pp: self.grid.pp,
            layers: self.stage_ranges(cfg.num_layers)[c.stage].clone(),
            placements: self.placements(cfg)?,
            ranks_per_node: self.stage_ranks_per_node(),
        })
    }
}
