//! `Layout`: the resolved parallel layout, its defaults, and what it means for a model.

use super::file::{
    ExpertsFile, LayoutFile, ParallelFile, PipelineFile, PlacementValue, SchedulerFile,
};
use super::{LayoutError, LayoutOverrides, PlacementSpec};
use crate::comm::RankGrid;
use crate::config::ModelConfig;
use std::ops::Range;
use std::path::{Path, PathBuf};
use switchyard_experts::{Placement, EMPTY_SLOT};

/// `[parallel]`: how many ranks and how they are grouped.
#[derive(Debug, Clone, PartialEq)]
pub struct ParallelLayout {
    /// Tensor-parallel group size for attention (default 1).
    pub tp: usize,
    /// Ranks per pipeline stage over which experts are split (default: tp).
    pub ep: usize,
    /// Pipeline stages (default 1).
    pub pp: usize,
    /// Split of each expert's intermediate dim; `None`: 1 for MoE models, `ep` for dense models
    /// (a dense MLP split Megatron-style over the stage; equal to tp when ep is not given).
    pub moe_tp: Option<usize>,
    /// Nodes the ranks span, if stated (checked against the world size).
    pub nodes: Option<usize>,
    /// GPUs per node, if stated (checked against the world size).
    pub gpus_per_node: Option<usize>,
    /// Memory of one GPU in GB (1e9 bytes), if stated (checked against the weights).
    pub gpu_mem_gb: Option<f64>,
}

/// `[experts]`: physical slots and rebalancing.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertsLayout {
    /// Extra physical slots per MoE layer (over the stage) for replicas of hot experts.
    pub redundant: usize,
    /// Rebalance every this many steps (0: never).
    pub rebalance_every: usize,
    /// Steps of routing statistics a rebalance looks at.
    pub window: usize,
    /// Initial placement of every MoE layer.
    pub placement: PlacementSpec,
}

/// `[scheduler]`: batching and KV-cache budget.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerLayout {
    /// Most sequences running at once.
    pub max_num_seqs: usize,
    /// Most tokens in one step.
    pub max_batched_tokens: usize,
    /// Token slots per KV-cache block.
    pub kv_block_size: usize,
    /// Share of GPU memory the engine may use (weights + KV cache).
    pub memory_fraction: f64,
}

/// A parallel layout: `world = ep * pp` ranks.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Ranks and groups.
    pub parallel: ParallelLayout,
    /// Expert slots.
    pub experts: ExpertsLayout,
    /// Batching.
    pub scheduler: SchedulerLayout,
    /// Explicit layers per pipeline stage (`None`: as even as possible, earlier stages first).
    pub pipeline: Option<Vec<usize>>,
}

impl Default for Layout {
    fn default() -> Self {
        Self::resolve(
            LayoutFile::default(),
            &LayoutOverrides::default(),
            Path::new("."),
        )
        .expect("the default layout resolves")
    }
}

impl Layout {
    /// Reads a layout file (placement files are relative to its folder).
    pub fn from_file(path: &Path) -> Result<Self, LayoutError> {
        Self::from_file_with(path, &LayoutOverrides::default())
    }

    /// Parses layout TOML; `path` names it in errors and its folder anchors placement files.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, LayoutError> {
        let file = parse(text, path)?;
        Self::resolve(
            file,
            &LayoutOverrides::default(),
            path.parent().unwrap_or(Path::new(".")),
        )
    }

    /// Reads a layout file and applies CLI overrides (before defaults, so `--tp 4` on a file
    /// without `ep` also means ep 4).
    pub(crate) fn from_file_with(path: &Path, o: &LayoutOverrides) -> Result<Self, LayoutError> {
        let text = std::fs::read_to_string(path).map_err(|source| LayoutError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file = parse(&text, path)?;
        Self::resolve(file, o, path.parent().unwrap_or(Path::new(".")))
    }

    pub(crate) fn resolve(
        f: LayoutFile,
        o: &LayoutOverrides,
        base: &Path,
    ) -> Result<Self, LayoutError> {
        let tp = o.tp.or(f.parallel.tp).unwrap_or(1);
        let ep = o.ep.or(f.parallel.ep).unwrap_or(tp);
        let pp = o.pp.or(f.parallel.pp).unwrap_or(1);
        Ok(Layout {
            parallel: ParallelLayout {
                tp,
                ep,
                pp,
                moe_tp: o.moe_tp.or(f.parallel.moe_tp),
                nodes: f.parallel.nodes,
                gpus_per_node: f.parallel.gpus_per_node,
                gpu_mem_gb: f.parallel.gpu_mem_gb,
            },
            experts: ExpertsLayout {
                redundant: o.redundant.or(f.experts.redundant).unwrap_or(0),
                rebalance_every: f.experts.rebalance_every.unwrap_or(0),
                window: f.experts.window.unwrap_or(1024),
                placement: PlacementSpec::from_value(f.experts.placement, base)?,
            },
            scheduler: SchedulerLayout {
                max_num_seqs: f.scheduler.max_num_seqs.unwrap_or(256),
                max_batched_tokens: f.scheduler.max_batched_tokens.unwrap_or(8192),
                kv_block_size: f.scheduler.kv_block_size.unwrap_or(16),
                memory_fraction: f.scheduler.memory_fraction.unwrap_or(0.9),
            },
            pipeline: f.pipeline.map(|p| p.layers),
        })
    }

    /// The layout as TOML (a file `Layout::from_toml` reads back to the same layout).
    pub fn to_toml(&self) -> String {
        let p = &self.parallel;
        let placement = match &self.experts.placement {
            PlacementSpec::Contiguous => PlacementValue::Name("contiguous".into()),
            PlacementSpec::Explicit(maps) => PlacementValue::Maps(
                maps.iter()
                    .map(|m| {
                        m.iter()
                            .map(|&e| if e == EMPTY_SLOT { -1 } else { i64::from(e) })
                            .collect()
                    })
                    .collect(),
            ),
        };
        let file = LayoutFile {
            parallel: ParallelFile {
                tp: Some(p.tp),
                ep: Some(p.ep),
                pp: Some(p.pp),
                moe_tp: p.moe_tp,
                nodes: p.nodes,
                gpus_per_node: p.gpus_per_node,
                gpu_mem_gb: p.gpu_mem_gb,
            },
            experts: ExpertsFile {
                redundant: Some(self.experts.redundant),
                rebalance_every: Some(self.experts.rebalance_every),
                window: Some(self.experts.window),
                placement: Some(placement),
            },
            scheduler: SchedulerFile {
                max_num_seqs: Some(self.scheduler.max_num_seqs),
                max_batched_tokens: Some(self.scheduler.max_batched_tokens),
                kv_block_size: Some(self.scheduler.kv_block_size),
                memory_fraction: Some(self.scheduler.memory_fraction),
            },
            pipeline: self.pipeline.clone().map(|layers| PipelineFile { layers }),
        };
        toml::to_string(&file).expect("a layout serialises to TOML")
    }

    /// Number of ranks, `ep * pp`.
    pub fn world(&self) -> usize {
        self.parallel.ep * self.parallel.pp
    }

    /// The rank grid for [`crate::comm::World`]; fails like [`RankGrid::new`].
    pub fn grid(&self) -> Result<RankGrid, crate::comm::CommError> {
        RankGrid::new(self.parallel.tp, self.parallel.ep, self.parallel.pp)
    }

    /// The expert-intermediate split for `model` (see [`ParallelLayout::moe_tp`]).
    pub fn moe_tp(&self, model: &ModelConfig) -> usize {
        self.parallel.moe_tp.unwrap_or(if model.moe.is_some() {
            1
        } else {
            self.parallel.ep
        })
    }

    /// Logical experts per MoE layer: the routed experts, or 1 for a dense model.
    pub fn n_experts(model: &ModelConfig) -> usize {
        model.moe.as_ref().map_or(1, |m| m.n_experts)
    }

    /// Expert groups of a stage (`ep / moe_tp`): the ranks experts are placed over, each group
    /// of `moe_tp` ranks holding one slice of the same slots.
    pub fn expert_groups(&self, model: &ModelConfig) -> usize {
        (self.parallel.ep / self.moe_tp(model).max(1)).max(1)
    }

    /// Redundant slots that apply to `model`: `[experts] redundant`, or 0 for a dense model
    /// (its one expert is split by moe_tp, never replicated).
    pub fn redundant(&self, model: &ModelConfig) -> usize {
        if model.moe.is_some() {
            self.experts.redundant
        } else {
            0
        }
    }

    /// Physical expert slots each expert group holds per MoE layer.
    pub fn slots_per_group(&self, model: &ModelConfig) -> usize {
        (Self::n_experts(model) + self.redundant(model)).div_ceil(self.expert_groups(model))
    }

    /// Layers of every pipeline stage (explicit split or as even as possible); assumes the
    /// layout validated against a model with `num_layers` layers.
    pub fn stage_layers(&self, num_layers: usize) -> Vec<Range<usize>> {
        let pp = self.parallel.pp.max(1);
        let counts: Vec<usize> = match &self.pipeline {
            Some(split) => split.clone(),
            None => crate::comm::even_counts(num_layers, pp),
        };
        let mut start = 0;
        counts
            .into_iter()
            .map(|c| {
                let r = start..start + c;
                start += c;
                r
            })
            .collect()
    }

    /// The placement of every layer: `Some` for a sparse MoE layer (over the stage's expert
    /// groups), `None` for a dense layer (or every layer of a dense model).
    pub fn placements(&self, model: &ModelConfig) -> Result<Vec<Option<Placement>>, LayoutError> {
        let Some(moe) = &model.moe else {
            return Ok(vec![None; model.num_layers]);
        };
        let groups = self.expert_groups(model);
        let n_moe = moe.sparse_layers.iter().filter(|&&s| s).count();
        let mut i = 0;
        let mut out = Vec::with_capacity(model.num_layers);
        for (layer, &sparse) in moe.sparse_layers.iter().enumerate() {
            if !sparse {
                out.push(None);
                continue;
            }
            let p = self.experts.placement.build(
                i,
                n_moe,
                layer,
                moe.n_experts,
                groups,
                self.experts.redundant,
            )?;
            out.push(Some(p));
            i += 1;
        }
        Ok(out)
    }
}

fn parse(text: &str, path: &Path) -> Result<LayoutFile, LayoutError> {
    toml::from_str(text).map_err(|e| LayoutError::Parse {
        path: PathBuf::from(path),
        message: e.to_string(),
    })
}
