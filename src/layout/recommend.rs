//! `plan --recommend`: a layout for a set of GPUs, and why.
//!
//! The rules: a model that fits one GPU runs on one rank (no communication at all). An MoE
//! model spreads its experts first (EP over the fewest ranks of one node that hold it), with
//! attention TP inside the node — as wide as the KV heads allow for GQA, and data-parallel
//! attention for MLA, whose latent cache TP would only duplicate. Past one node: EP over every
//! GPU with data-parallel attention when there are at least as many experts as GPUs (the
//! All-to-All stays one hop and no stage waits for another), else pipeline stages across nodes.
//! A dense model uses TP inside a node and PP across nodes.

use super::memory::{model_weights, stage_weights, Dtypes};
use super::validate::{or_list, tp_fits, GB};
use super::{Layout, LayoutError};
use crate::config::{AttentionKind, ModelConfig};

/// A proposed layout and the reasons for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    /// The layout (validated against the model and the GPU memory).
    pub layout: Layout,
    /// Why, one line per decision.
    pub reasons: Vec<String>,
}

/// Proposes a layout for `model` on `gpus` GPUs of `gpu_mem_gb` GB over `nodes` nodes.
pub fn recommend(
    model: &ModelConfig,
    gpus: usize,
    gpu_mem_gb: f64,
    nodes: usize,
) -> Result<Recommendation, LayoutError> {
    if gpus == 0
        || nodes == 0
        || !gpus.is_multiple_of(nodes)
        || gpu_mem_gb.is_nan()
        || gpu_mem_gb <= 0.0
    {
        return Err(LayoutError::NoFit(format!(
            "--gpus {gpus} must be a positive multiple of --nodes {nodes} and --gpu-mem {gpu_mem_gb} positive"
        )));
    }
    let per_node = gpus / nodes;
    let weights = model_weights(model, Dtypes::default()) as f64 / GB;
    let mut reasons = vec![format!("the model's weights are {weights:.2} GB in bf16")];
    let single = (
        Layout::default(),
        vec![format!("they fit one {gpu_mem_gb} GB GPU with room for the KV cache: one rank, no communication")],
    );
    let mut options = vec![single];
    options.extend(candidates(model, per_node, nodes));
    // First the fewest ranks whose weights leave at least half of each GPU to the KV cache,
    // then the fewest that fit at all.
    for roomy in [true, false] {
        for (layout, why) in &options {
            if layout.validate(model, Some(gpu_mem_gb)).is_err()
                || (roomy && !leaves_half(model, layout, gpu_mem_gb))
            {
                continue;
            }
            reasons.extend(why.iter().cloned());
            reasons.push(if roomy {
                "the fewest ranks whose weights leave at least half of each GPU to the KV cache".to_string()
            } else {
                "the only layouts that fit leave less than half of each GPU to the KV cache: add GPUs for longer batches".to_string()
            });
            let used_nodes = if layout.world() > per_node { nodes } else { 1 };
            return Ok(finish(
                layout.clone(),
                used_nodes,
                gpus,
                gpu_mem_gb,
                reasons,
            ));
        }
    }
    Err(LayoutError::NoFit(format!(
        "{weights:.2} GB of weights do not fit {gpus} GPU(s) of {gpu_mem_gb} GB under any layout \
         tried (EP/TP within a node, EP or PP across {nodes} node(s)); add GPUs"
    )))
}

/// Whether every stage's weights take at most half of what a rank may use.
fn leaves_half(model: &ModelConfig, layout: &Layout, gpu_mem_gb: f64) -> bool {
    let usable = gpu_mem_gb * GB * layout.scheduler.memory_fraction;
    (0..layout.parallel.pp)
        .all(|s| stage_weights(model, layout, s, Dtypes::default()).total() as f64 <= usable / 2.0)
}

fn finish(
    mut layout: Layout,
    nodes: usize,
    gpus: usize,
    gpu_mem_gb: f64,
    mut reasons: Vec<String>,
) -> Recommendation {
    let world = layout.world();
    if world > 1 {
        layout.parallel.nodes = Some(nodes.min(world));
        layout.parallel.gpus_per_node = Some(world / nodes.min(world));
    }
    layout.parallel.gpu_mem_gb = Some(gpu_mem_gb);
    if world < gpus {
        reasons.push(format!(
            "uses {world} of the {gpus} GPUs: run {} replicas for throughput",
            gpus / world
        ));
    }
    Recommendation { layout, reasons }
}

/// The widest attention TP for `ranks` ranks: divides the ranks and the heads, and for GQA stays
/// within the KV heads (no replicated KV cache); 1 (data-parallel attention) for MLA.
fn attention_tp(model: &ModelConfig, ranks: usize) -> usize {
    match model.attention {
        AttentionKind::Mla(_) => 1,
        AttentionKind::Gqa { .. } => tp_fits(model)
            .into_iter()
            .filter(|&t| ranks.is_multiple_of(t) && t <= model.num_kv_heads)
            .max()
            .unwrap_or(1),
    }
}

fn moe_layout(model: &ModelConfig, tp: usize, ep: usize, pp: usize) -> Layout {
    let mut l = Layout::default();
    l.parallel.tp = tp;
    l.parallel.ep = ep;
    l.parallel.pp = pp;
    let n = Layout::n_experts(model);
    if model.moe.is_some() && n < ep && ep.is_multiple_of(n) {
        l.parallel.moe_tp = Some(ep / n);
    }
    let groups = l.expert_groups(model);
    l.experts.redundant = (groups - n % groups) % groups;
    l
}

fn tp_reason(model: &ModelConfig, tp: usize) -> String {
    match model.attention {
        AttentionKind::Mla(_) => "attention data-parallel (tp 1): MLA caches one latent per token that TP would copy to every rank".into(),
        AttentionKind::Gqa { .. } => format!(
            "attention TP {tp} inside the node: {} query / {} KV heads split evenly (tp that would: {})",
            model.num_heads,
            model.num_kv_heads,
            or_list(&tp_fits(model))
        ),
    }
}

/// Layouts to try in order, each with its reasons.
fn candidates(model: &ModelConfig, per_node: usize, nodes: usize) -> Vec<(Layout, Vec<String>)> {
    let mut out = Vec::new();
    let sizes: Vec<usize> = (2..=per_node)
        .filter(|d| per_node.is_multiple_of(*d))
        .collect();
    let is_moe = model.moe.is_some();
    for &ranks in &sizes {
        let tp = if is_moe {
            attention_tp(model, ranks)
        } else {
            tp_fits(model)
                .into_iter()
                .filter(|t| ranks % t == 0)
                .max()
                .unwrap_or(1)
        };
        let l = moe_layout(model, tp, ranks, 1);
        let mut why = vec![format!("{ranks} GPUs of one node")];
        if is_moe {
            why.push(format!(
                "MoE: experts first — {} experts over ep {ranks} ({} slots per rank)",
                Layout::n_experts(model),
                l.slots_per_group(model)
            ));
            why.push(tp_reason(model, tp));
        } else {
            why.push(format!(
                "dense: MLP split over the {ranks} ranks, {}",
                tp_reason(model, tp)
            ));
        }
        out.push((l, why));
    }
    if nodes > 1 {
        let world = per_node * nodes;
        let tp_node = |r: usize| {
            if is_moe {
                attention_tp(model, r)
            } else {
                tp_fits(model)
                    .into_iter()
                    .filter(|t| r.is_multiple_of(*t) && *t <= per_node)
                    .max()
                    .unwrap_or(1)
            }
        };
        let ep_all = (moe_layout(model, tp_node(per_node), world, 1), vec![
            format!("past one node: {} experts >= {world} GPUs: EP over all {world} GPUs of {nodes} nodes with data-parallel attention (one All-to-All hop, no pipeline bubbles)", Layout::n_experts(model)),
            tp_reason(model, tp_node(per_node)),
        ]);
        let pp_nodes = (moe_layout(model, tp_node(per_node), per_node, nodes), vec![
            format!("past one node: pipeline stages across the {nodes} nodes (pp {nodes}), each stage ep {per_node} inside its node so the All-to-All stays on the node's links"),
            tp_reason(model, tp_node(per_node)),
        ]);
        if is_moe && Layout::n_experts(model) >= world {
            out.push(ep_all);
            out.push(pp_nodes);
        } else {
            out.push(pp_nodes);
            if is_moe {
                out.push(ep_all);
            }
        }
    }
    out
}
