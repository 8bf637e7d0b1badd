//! `RankGrid`: where a global rank sits in the TP, EP and PP groups.
//!
//! `world = ep * pp`. Global rank `g` is in pipeline stage `g / ep` at index `g % ep` within the
//! stage; the stage's `ep` ranks form its EP group; groups of `tp` consecutive ranks of a stage
//! form TP groups (`ep / tp` of them per stage, each serving its own sequences: data-parallel
//! attention); ranks with the same index in every stage form a PP group.

use super::CommError;

/// The parallel sizes of a world of ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankGrid {
    /// Tensor-parallel group size (attention heads split).
    pub tp: usize,
    /// Ranks per pipeline stage (experts split); a multiple of `tp`.
    pub ep: usize,
    /// Pipeline stages.
    pub pp: usize,
}

/// One rank's position in the grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankCoords {
    /// Global rank, `0..world`.
    pub global: usize,
    /// Pipeline stage, `0..pp` (also the rank's id in its PP group).
    pub stage: usize,
    /// Index within the stage, `0..ep` (the rank's id in its EP group).
    pub ep_rank: usize,
    /// Which TP group of the stage, `0..ep / tp` (the data-parallel attention replica).
    pub dp_rank: usize,
    /// Index within the TP group, `0..tp`.
    pub tp_rank: usize,
}

impl RankGrid {
    /// A grid; every size must be positive and `tp` must divide `ep`.
    pub fn new(tp: usize, ep: usize, pp: usize) -> Result<Self, CommError> {
        if tp == 0 || ep == 0 || pp == 0 {
            return Err(CommError::Grid(format!(
                "tp {tp}, ep {ep}, pp {pp}: all must be positive"
            )));
        }
        if !ep.is_multiple_of(tp) {
            return Err(CommError::Grid(format!("tp {tp} does not divide ep {ep}")));
        }
        Ok(RankGrid { tp, ep, pp })
    }

    /// One rank: tp = ep = pp = 1.
    pub fn single() -> Self {
        RankGrid {
            tp: 1,
            ep: 1,
            pp: 1,
        }
    }

    /// Number of ranks, `ep * pp`.
    pub fn world(&self) -> usize {
        self.ep * self.pp
    }

    /// TP groups per stage (data-parallel attention replicas), `ep / tp`.
    pub fn dp(&self) -> usize {
        self.ep / self.tp
    }

    /// Where global rank `global` sits.
    pub fn coords(&self, global: usize) -> RankCoords {
        let stage = global / self.ep;
        let ep_rank = global % self.ep;
        RankCoords {
            global,
            stage,
            ep_rank,
            dp_rank: ep_rank / self.tp,
            tp_rank: ep_rank % self.tp,
        }
    }

    /// Global ranks of `global`'s TP group, in group-rank order.
    pub fn tp_group(&self, global: usize) -> Vec<usize> {
        let first = global - global % self.tp;
        (first..first + self.tp).collect()
    }

    /// Global ranks of `global`'s EP group (its stage), in group-rank order.
    pub fn ep_group(&self, global: usize) -> Vec<usize> {
        let first = global - global % self.ep;
        (first..first + self.ep).collect()
    }

    /// Global ranks of `global`'s PP group (same index in every stage), in stage order.
    pub fn pp_group(&self, global: usize) -> Vec<usize> {
        let index = global % self.ep;
        (0..self.pp).map(|s| s * self.ep + index).collect()
    }
}
