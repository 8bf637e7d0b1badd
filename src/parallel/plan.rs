//! `ParallelPlan`: a [`Layout`] resolved for one model — the rank grid, every layer's expert
//! placement, the pipeline split — and turned into each rank's [`Shard`]. The layout module
//! owns the rules (validation, placements, stage split); this only applies them.

use super::Shard;
use crate::comm::RankGrid;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::layout::Layout;
use switchyard_experts::Placement;

/// The layout as the ranks need it.
#[derive(Debug, Clone)]
pub struct ParallelPlan {
    /// TP, EP and PP sizes.
    pub grid: RankGrid,
    /// The layout it came from.
    pub layout: Layout,
}

impl ParallelPlan {
    /// The plan of `layout`; fails if its sizes do not form a grid.
    pub fn from_layout(layout: Layout) -> Result<Self> {
        let grid = layout.grid()?;
        Ok(Self { grid, layout })
    }

    /// One rank.
    pub fn single() -> Self {
        Self::from_layout(Layout::default()).expect("the default layout is one rank")
    }

    /// Checks the layout against the model (the layout's rules, naming the wrong number), and
    /// what the ranks additionally need.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        self.layout.validate(cfg, None)?;
        let ep = self.grid.ep;
        if !ep.is_multiple_of(self.stage_ranks_per_node()) {
            return Err(Error::Ranks(format!(
                "ep {ep} is not a whole number of nodes of {} ranks",
                self.stage_ranks_per_node()
            )));
        }
        if cfg.moe.is_some() && self.layout.moe_tp(cfg) > 1 {
            return Err(Error::Ranks(format!(
                "moe_tp {} splits routed experts, which the ranks do not run yet; use moe_tp 1",
                self.layout.moe_tp(cfg)
            )));
        }
        if !cfg.intermediate_size.is_multiple_of(self.dense_split(cfg)) {
            return Err(Error::Ranks(format!(
                "moe_tp {} does not divide the dense intermediate size {}",
                self.dense_split(cfg),
                cfg.intermediate_size
            )));
        }
        Ok(())
    }

    /// Ranks of one stage per node (`gpus_per_node`; a stage smaller than a node lives in one).
    fn stage_ranks_per_node(&self) -> usize {
        self.layout
            .parallel
            .gpus_per_node
            .unwrap_or(self.grid.ep)
            .clamp(1, self.grid.ep)
    }

    /// How many parts a dense MLP is split into (Megatron-style, over the intermediate dim):
    /// the layout's moe_tp for dense models, 1 for the dense layers of MoE models.
    fn dense_split(&self, cfg: &ModelConfig) -> usize {
        if cfg.moe.is_some() {
            1
        } else {
            self.layout.moe_tp(cfg).max(1)
        }
    }

    /// The placement of every sparse layer (None for dense layers).
    pub fn placements(&self, cfg: &ModelConfig) -> Result<Vec<Option<Placement>>> {
        Ok(self.layout.placements(cfg)?)
    }

    /// The shard of global rank `rank`.
    pub fn shard(&self, cfg: &ModelConfig, rank: usize) -> Result<Shard> {
        self.validate(cfg)?;
        let c = self.grid.coords(rank);
        let parts = self.dense_split(cfg);
        let ep = self.grid.ep;
        // A dense MLP's parts are experts every token visits; spare slots hold replicas so every
        // rank holds one part (parts = ep: one each; parts = 1: a full copy everywhere).
        let spare = (ep - parts % ep) % ep;
        let dense_placement =
            Placement::contiguous(parts, ep, spare).map_err(|e| Error::Ranks(e.to_string()))?;
        Ok(Shard {
            tp_rank: c.tp_rank,
            tp: self.grid.tp,
            ep_rank: c.ep_rank,
            ep,
            stage: c.stage,
            pp: self.grid.pp,
            layers: self.layout.stage_layers(cfg.num_layers)[c.stage].clone(),
            placements: self.placements(cfg)?,
            dense_placement,
            ranks_per_node: self.stage_ranks_per_node(),
        })
    }
}
