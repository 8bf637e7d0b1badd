//! All-to-All bytes of the MoE blocks, assuming routing spreads tokens evenly over the experts.
//!
//! Each (token, chosen expert) pair goes to the `moe_tp` ranks of the expert group that holds
//! the expert; with `g = ep / moe_tp` groups a rank's own group holds it with probability `1/g`,
//! so a pair leaves the rank `moe_tp - 1/g` times on average. Combine ships every pair's result
//! back: `top_k * hidden * bytes * (moe_tp - 1/g)` bytes per token per MoE layer. Dispatch ships
//! a token once to each rank that holds any of its experts (moe::dispatch), plus a 4-byte row
//! index per off-rank pair: a group of `E / g` of the `E` experts is missed by all `top_k` picks
//! (distinct experts) with probability `p = Π_i (E - E/g - i) / (E - i)`, so a token reaches
//! `(1 - p) * (g * moe_tp - 1)` other ranks. A dense model is one expert, top-1.

use super::memory::Dtypes;
use super::Layout;
use crate::config::ModelConfig;
use serde::Serialize;

/// All-to-All traffic of a layout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Traffic {
    /// Expected off-rank destinations of one (token, expert) pair: `moe_tp - 1/groups`.
    pub off_rank_per_pair: f64,
    /// Expected other ranks a token's hidden state is dispatched to (once each).
    pub off_rank_per_token: f64,
    /// Bytes one token moves in one MoE layer (dispatch + combine).
    pub bytes_per_token_layer: f64,
    /// MoE layers of each stage.
    pub moe_layers_per_stage: Vec<usize>,
    /// Bytes one token moves through the whole model (every stage's MoE layers).
    pub bytes_per_token: f64,
    /// Tokens in the step this estimate is for.
    pub batch_tokens: usize,
    /// Bytes the whole step moves (all stages, all ranks).
    pub bytes_per_step: f64,
    /// Bytes one rank of each stage sends in the step (the stage's tokens spread over its ranks).
    pub bytes_per_rank_step: Vec<f64>,
}

/// Routed experts per token: `top_k`, or 1 for a dense model.
fn top_k(model: &ModelConfig) -> usize {
    model.moe.as_ref().map_or(1, |m| m.router.top_k)
}

/// Whether layer `i` runs the MoE path (every layer of a dense model does).
fn is_moe_layer(model: &ModelConfig, i: usize) -> bool {
    model.moe.as_ref().is_none_or(|m| m.sparse_layers[i])
}

/// Experts of the model: 1 for a dense model.
fn n_experts(model: &ModelConfig) -> usize {
    model.moe.as_ref().map_or(1, |m| m.n_experts)
}

/// Probability that none of `k` distinct picks among `e` experts falls in a group of `m`.
fn group_missed(e: f64, m: f64, k: usize) -> f64 {
    (0..k)
        .map(|i| ((e - m - i as f64) / (e - i as f64)).max(0.0))
        .product()
}

/// The All-to-All traffic of `layout` for a step of `batch_tokens` tokens.
pub fn traffic(model: &ModelConfig, layout: &Layout, batch_tokens: usize, dt: Dtypes) -> Traffic {
    let groups = layout.expert_groups(model) as f64;
    let moe_tp = layout.moe_tp(model) as f64;
    let (k, e) = (top_k(model), n_experts(model) as f64);
    let off = moe_tp - 1.0 / groups;
    let off_token = (1.0 - group_missed(e, e / groups, k)) * (groups * moe_tp - 1.0);
    let row = model.hidden_size as f64 * dt.activation as f64;
    let index = std::mem::size_of::<u32>() as f64;
    let per_layer = row * off_token + (index + row) * k as f64 * off;
    let moe_layers_per_stage: Vec<usize> = layout
        .stage_layers(model.num_layers)
        .into_iter()
        .map(|r| r.filter(|&i| is_moe_layer(model, i)).count())
        .collect();
    let total_layers: usize = moe_layers_per_stage.iter().sum();
    let per_token = per_layer * total_layers as f64;
    let ep = layout.parallel.ep as f64;
    Traffic {
        off_rank_per_pair: off,
        off_rank_per_token: off_token,
        bytes_per_token_layer: per_layer,
        bytes_per_token: per_token,
        batch_tokens,
        bytes_per_step: per_token * batch_tokens as f64,
        bytes_per_rank_step: moe_layers_per_stage
            .iter()
            .map(|&l| per_layer * l as f64 * batch_tokens as f64 / ep)
            .collect(),
        moe_layers_per_stage,
    }
}

#[cfg(test)]
mod tests {
    use super::group_missed;

    /// Against counting every k-subset of the experts (groups of m consecutive experts).
    #[test]
    fn group_missed_counts_subsets() {
        for (e, m, k) in [
            (4usize, 2usize, 2usize),
            (8, 2, 3),
            (12, 3, 4),
            (6, 6, 1),
            (5, 1, 5),
        ] {
            let (mut all, mut missed) = (0u32, 0u32);
            for mask in 0u32..(1 << e) {
                if mask.count_ones() as usize != k {
                    continue;
                }
                all += 1;
                if mask & ((1 << m) - 1) == 0 {
                    missed += 1;
                }
            }
            let want = missed as f64 / all as f64;
            let got = group_missed(e as f64, m as f64, k);
            assert!(
                (got - want).abs() < 1e-12,
                "e {e} m {m} k {k}: {got} vs {want}"
            );
        }
    }
}
