//! The reference router: router logits -> top-k experts and their weights.
//!
//! This is the simple, exact (f32) CPU reference that the fused kernels are tested against. It
//! follows Hugging Face transformers 5.x step by step:
//! - Mixtral (`MixtralTopKRouter`): softmax, top-k, renormalise (no epsilon).
//! - Qwen2-MoE / Qwen3-MoE (`Qwen2MoeTopKRouter`): softmax, top-k, renormalise iff `norm_topk_prob`.
//! - DeepSeek-V2 (`DeepseekV2Moe.route_tokens_to_experts`): softmax, `greedy` or
//!   `group_limited_greedy` (group score = max of the group), weights multiplied by
//!   `routed_scaling_factor`; transformers 5.x never renormalises here (`norm_topk_prob` is
//!   ignored). The hub's remote code instead renormalises (with `+ 1e-20`) when `norm_topk_prob`
//!   and scales only otherwise: that is [`RoutedScaling::UnlessNormalized`].
//! - DeepSeek-V3 (`DeepseekV3MoE.route_tokens_to_experts`): sigmoid, `noaux_tc` (selection score =
//!   score + `e_score_correction_bias`, group score = sum of the group's two best selection
//!   scores), weights gathered from the *unbiased* scores, renormalised with `+ 1e-20` iff
//!   `norm_topk_prob`, then always multiplied by `routed_scaling_factor`.
//!
//! Both DeepSeek variants fill the experts of dropped groups with `0.0` (not `-inf`) before the
//! final top-k ([`GroupMask::ZeroFill`]); with negative biased scores a dropped expert can then
//! win. That is what transformers does, so it is the default; [`GroupMask::Exclude`] gives the
//! DeepSeek reference-inference behaviour (`-inf`).
//!
//! Order of the output: descending selection score, ties to the lower expert index (torch leaves
//! the order of `topk(sorted=False)` unspecified; we fix one).

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

pub use crate::router_config::{
    GroupMask, RoutedScaling, RouterConfig, RoutingError, ScoreFunction, TopkMethod,
};

/// The router's decision for a batch of tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Routing {
    /// Experts per token.
    pub top_k: usize,
    /// Token-major: token t's experts are `experts[t*top_k..(t+1)*top_k]`, ordered by descending
    /// selection score, ties to the lower expert index.
    pub experts: Vec<u32>,
    /// The combine weights, aligned with `experts`.
    pub weights: Vec<f32>,
}

impl Routing {
    /// Number of tokens routed.
    pub fn n_tokens(&self) -> usize {
        self.experts.len().checked_div(self.top_k).unwrap_or(0)
    }
}

/// Descending by value, ties to the lower index. Values are never NaN here.
fn by_score_desc(values: &[f32]) -> impl Fn(&usize, &usize) -> Ordering + '_ {
    move |&a, &b| {
        values[b]
            .partial_cmp(&values[a])
            .unwrap_or(Ordering::Equal)
            .then(a.cmp(&b))
    }
}

/// Indices of the `k` largest `values` (descending, ties to the lower index) among `candidates`.
fn top_indices(values: &[f32], candidates: impl Iterator<Item = usize>, k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = candidates.collect();
    idx.sort_by(by_score_desc(values));
    idx.truncate(k);
    idx
}

fn scores_of(logits: &[f32], score: ScoreFunction) -> Vec<f32> {
    match score {
        ScoreFunction::Sigmoid => logits.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect(),
        ScoreFunction::Softmax => {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
            let sum: f32 = exps.iter().sum();
            exps.into_iter().map(|e| e / sum).collect()
        }
    }
}

/// Routes one token; `out_e`/`out_w` receive `top_k` entries.
fn route_token(
    logits: &[f32],
    cfg: &RouterConfig,
    bias: Option<&[f32]>,
    out_e: &mut Vec<u32>,
    out_w: &mut Vec<f32>,
) {
    let scores = scores_of(logits, cfg.score);
    let n = cfg.n_experts;
    let (chosen, weights): (Vec<usize>, Vec<f32>) = match cfg.method {
        TopkMethod::Greedy => {
            let c = top_indices(&scores, 0..n, cfg.top_k);
            let w = c.iter().map(|&e| scores[e]).collect();
            (c, w)
        }
        TopkMethod::GroupLimitedGreedy {
            n_group,
            topk_group,
        } => {
            let per = n / n_group;
            let group_scores: Vec<f32> = (0..n_group)
                .map(|g| {
                    scores[g * per..(g + 1) * per]
                        .iter()
                        .copied()
                        .fold(f32::NEG_INFINITY, f32::max)
                })
                .collect();
            let sel = masked(&scores, &group_scores, per, topk_group, cfg.group_mask);
            let c = top_indices(&sel, candidates(&sel, cfg.group_mask), cfg.top_k);
            // transformers takes the weights from the masked scores themselves.
            let w = c.iter().map(|&e| sel[e]).collect();
            (c, w)
        }
        TopkMethod::NoAuxTc {
            n_group,
            topk_group,
        } => {
            let per = n / n_group;
            let biased: Vec<f32> = match bias {
                Some(b) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
                None => scores.clone(),
            };
            let group_scores: Vec<f32> = (0..n_group)
                .map(|g| {
                    let top2 = top_indices(&biased, g * per..(g + 1) * per, 2);
                    biased[top2[0]] + biased[top2[1]]
                })
                .collect();
            let sel = masked(&biased, &group_scores, per, topk_group, cfg.group_mask);
            let c = top_indices(&sel, candidates(&sel, cfg.group_mask), cfg.top_k);
            // The bias only selects: weights are the unbiased scores.
            let w = c.iter().map(|&e| scores[e]).collect();
            (c, w)
        }
    };
    let weights = finish_weights(weights, cfg);
    out_e.extend(chosen.iter().map(|&e| e as u32));
    out_w.extend(weights);
}

/// Selection values after dropping all but the `topk_group` best groups. Dropped experts get 0.0
/// (`ZeroFill`) or NaN (`Exclude`, filtered out by [`candidates`]).
fn masked(
    values: &[f32],
    group_scores: &[f32],
    per: usize,
    topk_group: usize,
    mask: GroupMask,
) -> Vec<f32> {
    let kept = top_indices(group_scores, 0..group_scores.len(), topk_group);
    let mut keep = vec![false; group_scores.len()];
    for g in kept {
        keep[g] = true;
    }
    let fill = match mask {
        GroupMask::ZeroFill => 0.0,
        GroupMask::Exclude => f32::NAN,
    };
    values
        .iter()
        .enumerate()
        .map(|(e, &v)| if keep[e / per] { v } else { fill })
        .collect()
}

fn candidates(sel: &[f32], mask: GroupMask) -> Box<dyn Iterator<Item = usize> + '_> {
    match mask {
        GroupMask::ZeroFill => Box::new(0..sel.len()),
        GroupMask::Exclude => Box::new((0..sel.len()).filter(move |&e| !sel[e].is_nan())),
    }
}

/// Renormalisation and routed scaling, in the order transformers applies them.
fn finish_weights(mut w: Vec<f32>, cfg: &RouterConfig) -> Vec<f32> {
    if cfg.normalize {
        let denom = w.iter().sum::<f32>() + cfg.norm_epsilon;
        for x in &mut w {
            *x /= denom;
        }
    }
    let factor = match cfg.scaling {
        RoutedScaling::None => None,
        RoutedScaling::Always(f) => Some(f),
        RoutedScaling::UnlessNormalized(f) => (!cfg.normalize).then_some(f),
    };
    if let Some(f) = factor {
        for x in &mut w {
            *x *= f;
        }
    }
    w
}

/// Routes `n_tokens` tokens whose logits are token-major `[n_tokens, n_experts]`.
///
/// `correction_bias` (length `n_experts`) is the DeepSeek-V3 `e_score_correction_bias`; it is
/// accepted only with [`TopkMethod::NoAuxTc`], where `None` means zeros.
pub fn route(
    logits: &[f32],
    n_tokens: usize,
    cfg: &RouterConfig,
    correction_bias: Option<&[f32]>,
) -> Result<Routing, RoutingError> {
    cfg.validate()?;
    let n = cfg.n_experts;
    let expected = n_tokens.checked_mul(n).ok_or_else(|| {
        RoutingError::Input(format!("n_tokens {n_tokens} x n_experts {n} overflows"))
    })?;
    if logits.len() != expected {
        return Err(RoutingError::Input(format!(
            "logits has {} values, expected n_tokens {n_tokens} x n_experts {n} = {expected}",
            logits.len()
        )));
    }
    if let Some(i) = logits.iter().position(|x| !x.is_finite()) {
        return Err(RoutingError::Input(format!(
            "logit of token {} expert {} is {}",
            i / n,
            i % n,
            logits[i]
        )));
    }
    if let Some(b) = correction_bias {
        if !matches!(cfg.method, TopkMethod::NoAuxTc { .. }) {
            return Err(RoutingError::Input(
                "a correction bias is only used by the NoAuxTc method".into(),
            ));
        }
        if b.len() != n {
            return Err(RoutingError::Input(format!(
                "correction bias has {} values, expected n_experts {n}",
                b.len()
            )));
        }
        if let Some(i) = b.iter().position(|x| !x.is_finite()) {
            return Err(RoutingError::Input(format!(
                "correction bias of expert {i} is {}",
                b[i]
            )));
        }
    }
    let mut experts = Vec::with_capacity(n_tokens * cfg.top_k);
    let mut weights = Vec::with_capacity(n_tokens * cfg.top_k);
    for t in 0..n_tokens {
        route_token(
            &logits[t * n..(t + 1) * n],
            cfg,
            correction_bias,
            &mut experts,
            &mut weights,
        );
    }
    Ok(Routing {
        top_k: cfg.top_k,
        experts,
        weights,
    })
}

/// Tokens (token, k) pairs per logical expert. Experts `>= n_experts` are ignored.
pub fn expert_counts(routing: &Routing, n_experts: usize) -> Vec<u64> {
    let mut counts = vec![0u64; n_experts];
    for &e in &routing.experts {
        if let Some(c) = counts.get_mut(e as usize) {
            *c += 1;
        }
    }
    counts
}
