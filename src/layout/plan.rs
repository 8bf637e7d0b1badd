//! The report of `switchyard plan`: each stage's memory per rank, the KV cache it leaves, and
//! the All-to-All traffic.

use super::memory::{kv_bytes_per_token, model_weights, stage_weights, Dtypes, RankWeights};
use super::traffic::{traffic, Traffic};
use super::validate::GB;
use super::Layout;
use crate::config::ModelConfig;
use serde::Serialize;
use std::fmt::Write;

/// Memory of every rank of one pipeline stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StagePlan {
    /// Stage index.
    pub stage: usize,
    /// Global ranks of the stage, first and last.
    pub ranks: [usize; 2],
    /// Layers of the stage, `[start, end)`.
    pub layers: [usize; 2],
    /// MoE layers of the stage (every layer of a dense model).
    pub moe_layers: usize,
    /// Weight bytes per rank, by part.
    pub weights: RankWeights,
    /// Weight bytes per rank in total.
    pub weight_bytes: u64,
    /// KV-cache bytes one cached token costs a rank.
    pub kv_bytes_per_token: u64,
    /// Bytes a rank has left for its KV cache (GPU memory known), 0 if the weights do not fit.
    pub kv_budget_bytes: Option<u64>,
    /// Tokens a rank's KV cache holds.
    pub kv_tokens_per_rank: Option<u64>,
    /// KV blocks a rank's cache holds.
    pub kv_blocks_per_rank: Option<u64>,
    /// Tokens the stage holds: every data-parallel attention group caches its own sequences.
    pub kv_tokens_per_stage: Option<u64>,
}

/// What a layout costs for a model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// The model's model_type.
    pub model_type: String,
    /// Ranks.
    pub world: usize,
    /// Attention TP group size.
    pub tp: usize,
    /// Ranks per stage.
    pub ep: usize,
    /// Stages.
    pub pp: usize,
    /// Data-parallel attention groups per stage (ep / tp).
    pub dp: usize,
    /// Split of each expert.
    pub moe_tp: usize,
    /// Expert groups per stage (ep / moe_tp).
    pub expert_groups: usize,
    /// Expert slots per group per MoE layer.
    pub slots_per_group: usize,
    /// Redundant slots per MoE layer.
    pub redundant: usize,
    /// GPU memory in GB, if known.
    pub gpu_mem_gb: Option<f64>,
    /// Share of it the engine uses.
    pub memory_fraction: f64,
    /// Weight bytes of the whole model.
    pub model_weight_bytes: u64,
    /// Per stage.
    pub stages: Vec<StagePlan>,
    /// All-to-All traffic.
    pub all_to_all: Traffic,
}

/// The plan of `layout` for `model` (which should validate without memory), with
/// `batch_tokens` tokens per step and GPUs of `gpu_mem_gb` (else the layout's) GB.
pub fn plan(
    model: &ModelConfig,
    layout: &Layout,
    gpu_mem_gb: Option<f64>,
    batch_tokens: usize,
) -> Plan {
    let dt = Dtypes::default();
    let p = &layout.parallel;
    let gpu_mem_gb = gpu_mem_gb.or(p.gpu_mem_gb);
    let usable = gpu_mem_gb.map(|g| (g * GB * layout.scheduler.memory_fraction) as u64);
    let traffic = traffic(model, layout, batch_tokens, dt);
    let stages = layout
        .stage_layers(model.num_layers)
        .into_iter()
        .enumerate()
        .map(|(stage, layers)| {
            let weights = stage_weights(model, layout, stage, dt);
            let weight_bytes = weights.total();
            let per_token = kv_bytes_per_token(model, layout, stage, dt);
            let budget = usable.map(|u| u.saturating_sub(weight_bytes));
            let tokens = budget.map(|b| b / per_token.max(1));
            StagePlan {
                stage,
                ranks: [stage * p.ep, (stage + 1) * p.ep - 1],
                layers: [layers.start, layers.end],
                moe_layers: traffic.moe_layers_per_stage[stage],
                weights,
                weight_bytes,
                kv_bytes_per_token: per_token,
                kv_budget_bytes: budget,
                kv_tokens_per_rank: tokens,
                kv_blocks_per_rank: tokens.map(|t| t / layout.scheduler.kv_block_size as u64),
                kv_tokens_per_stage: tokens.map(|t| t * (p.ep / p.tp) as u64),
            }
        })
        .collect();
    Plan {
        model_type: model.architecture.model_type().to_string(),
        world: layout.world(),
        tp: p.tp,
        ep: p.ep,
        pp: p.pp,
        dp: p.ep / p.tp,
        moe_tp: layout.moe_tp(model),
        expert_groups: layout.expert_groups(model),
        slots_per_group: layout.slots_per_group(model),
        redundant: layout.redundant(model),
        gpu_mem_gb,
        memory_fraction: layout.scheduler.memory_fraction,
        model_weight_bytes: model_weights(model, dt),
        stages,
        all_to_all: traffic,
    }
}

fn gb(bytes: f64) -> String {
    if bytes >= 1e9 {
        format!("{:.2} GB", bytes / 1e9)
    } else if bytes >= 1e6 {
        format!("{:.2} MB", bytes / 1e6)
    } else if bytes >= 1e3 {
        format!("{:.2} KB", bytes / 1e3)
    } else {
        format!("{bytes:.0} B")
    }
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{}: {} weights (bf16) on {} ranks = pp {} x ep {} (tp {} attention, {} data-parallel group(s) per stage)",
            self.model_type,
            gb(self.model_weight_bytes as f64),
            self.world,
            self.pp,
            self.ep,
            self.tp,
            self.dp
        );
        let _ = writeln!(
            s,
            "experts: {} group(s) of moe_tp {} rank(s) per stage, {} slot(s) per group per MoE layer ({} redundant)",
            self.expert_groups, self.moe_tp, self.slots_per_group, self.redundant
        );
        match self.gpu_mem_gb {
            Some(g) => {
                let _ = writeln!(
                    s,
                    "GPU memory: {g} GB x memory_fraction {} per rank",
                    self.memory_fraction
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "GPU memory: unknown (give --gpu-mem GB for the KV-cache budget)"
                );
            }
        }
        for st in &self.stages {
            let w = &st.weights;
            let _ = writeln!(
                s,
                "stage {} (ranks {}-{}, layers {}..{}, {} MoE): weights per rank {} \
                 [attention {}, experts {}, shared {}, dense MLP {}, router {}, embedding {}, lm_head {}, norms {}]",
                st.stage,
                st.ranks[0],
                st.ranks[1],
                st.layers[0],
                st.layers[1],
                st.moe_layers,
                gb(st.weight_bytes as f64),
                gb(w.attention as f64),
                gb(w.experts as f64),
                gb(w.shared_experts as f64),
                gb(w.dense_mlp as f64),
                gb(w.router as f64),
                gb(w.embedding as f64),
                gb(w.lm_head as f64),
                gb(w.norms as f64),
            );
            let _ = write!(
                s,
                "  KV cache: {} per token per rank",
                gb(st.kv_bytes_per_token as f64)
            );
            if let (Some(b), Some(t), Some(blocks), Some(stage_t)) = (
                st.kv_budget_bytes,
                st.kv_tokens_per_rank,
                st.kv_blocks_per_rank,
                st.kv_tokens_per_stage,
            ) {
                let _ = write!(s, "; budget {} per rank = {t} tokens ({blocks} blocks), {stage_t} tokens per stage", gb(b as f64));
                if b == 0 {
                    let _ = write!(s, " -- the weights do not fit");
                }
            }
            let _ = writeln!(s);
        }
        let a = &self.all_to_all;
        let _ = writeln!(
            s,
            "All-to-All (dispatch + combine, uniform routing): {} per token per MoE layer \
             ({:.3} other ranks per token out, {:.3} per token-expert pair back), {} per token \
             over {} MoE layers",
            gb(a.bytes_per_token_layer),
            a.off_rank_per_token,
            a.off_rank_per_pair,
            gb(a.bytes_per_token),
            a.moe_layers_per_stage.iter().sum::<usize>()
        );
        let per_rank: Vec<String> = a.bytes_per_rank_step.iter().map(|b| gb(*b)).collect();
        let _ = write!(
            s,
            "  per step of {} tokens: {} in all, per rank by stage: {}",
            a.batch_tokens,
            gb(a.bytes_per_step),
            per_rank.join(", ")
        );
        f.write_str(&s)
    }
}
