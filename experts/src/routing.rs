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
use thiserror::Error;

/// How router logits become per-expert scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScoreFunction {
    /// `softmax(logits)` over the experts, in f32 with the maximum subtracted.
    Softmax,
    /// `sigmoid(logits)` element-wise.
    Sigmoid,
}

/// How the top-k experts are selected from the scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TopkMethod {
    /// Plain top-k of the scores (Mixtral, Qwen-MoE, DeepSeek-V2 `greedy`).
    Greedy,
    /// DeepSeek-V2 `group_limited_greedy`: keep the `topk_group` groups with the highest maximum
    /// score, then top-k among their experts.
    GroupLimitedGreedy {
        /// Number of contiguous expert groups.
        n_group: usize,
        /// Number of groups kept per token.
        topk_group: usize,
    },
    /// DeepSeek-V3 `noaux_tc`: selection scores carry the correction bias; a group's score is the
    /// sum of its two best selection scores; weights come from the unbiased scores.
    NoAuxTc {
        /// Number of contiguous expert groups.
        n_group: usize,
        /// Number of groups kept per token.
        topk_group: usize,
    },
}

/// How `routed_scaling_factor` is applied after the optional renormalisation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum RoutedScaling {
    /// No scaling (Mixtral, Qwen-MoE).
    None,
    /// Always multiply by the factor (DeepSeek-V3, and DeepSeek-V2 in transformers 5.x).
    Always(f32),
    /// Multiply only when the weights were not renormalised (DeepSeek-V2 hub remote code).
    UnlessNormalized(f32),
}

/// What the dropped groups' experts score in the final top-k of a group-limited method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupMask {
    /// `masked_fill(~mask, 0.0)` as in transformers: dropped experts compete with score 0.0.
    ZeroFill,
    /// Dropped experts can never be chosen (`-inf`, DeepSeek reference inference, vLLM).
    Exclude,
}

/// A typed router configuration.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouterConfig {
    /// Number of routed (logical) experts.
    pub n_experts: usize,
    /// Experts chosen per token.
    pub top_k: usize,
    /// Logits -> scores.
    pub score: ScoreFunction,
    /// Selection method.
    pub method: TopkMethod,
    /// Divide the chosen weights by their sum.
    pub normalize: bool,
    /// Added to the sum before dividing: `0.0` for Mixtral/Qwen, `1e-20` for DeepSeek.
    pub norm_epsilon: f32,
    /// The routed scaling factor and when it applies.
    pub scaling: RoutedScaling,
    /// Score of dropped groups' experts (group-limited methods only).
    pub group_mask: GroupMask,
}

impl RouterConfig {
    /// Mixtral: softmax, greedy top-k, renormalised, no scaling.
    pub fn mixtral(n_experts: usize, top_k: usize) -> Self {
        Self::qwen_moe(n_experts, top_k, true)
    }

    /// Qwen2-MoE / Qwen3-MoE: softmax, greedy top-k, renormalised iff `norm_topk_prob`.
    pub fn qwen_moe(n_experts: usize, top_k: usize, norm_topk_prob: bool) -> Self {
        RouterConfig {
            n_experts,
            top_k,
            score: ScoreFunction::Softmax,
            method: TopkMethod::Greedy,
            normalize: norm_topk_prob,
            norm_epsilon: 0.0,
            scaling: RoutedScaling::None,
            group_mask: GroupMask::ZeroFill,
        }
    }

    /// DeepSeek-V2 as in transformers 5.x: softmax, `method`, never renormalised, always scaled.
    pub fn deepseek_v2(n_experts: usize, top_k: usize, method: TopkMethod, factor: f32) -> Self {
        RouterConfig {
            n_experts,
            top_k,
            score: ScoreFunction::Softmax,
            method,
            normalize: false,
            norm_epsilon: 1e-20,
            scaling: RoutedScaling::Always(factor),
            group_mask: GroupMask::ZeroFill,
        }
    }

    /// DeepSeek-V3 as in transformers 5.x: sigmoid, `noaux_tc`, renormalised (`+1e-20`) iff
    /// `norm_topk_prob`, always scaled.
    pub fn deepseek_v3(
        n_experts: usize,
        top_k: usize,
        n_group: usize,
        topk_group: usize,
        norm_topk_prob: bool,
        factor: f32,
    ) -> Self {
        RouterConfig {
            n_experts,
            top_k,
            score: ScoreFunction::Sigmoid,
            method: TopkMethod::NoAuxTc { n_group, topk_group },
            normalize: norm_topk_prob,
            norm_epsilon: 1e-20,
            scaling: RoutedScaling::Always(factor),
            group_mask: GroupMask::ZeroFill,
        }
    }

    /// Checks the numbers; every error names the offending value.
    pub fn validate(&self) -> Result<(), RoutingError> {
        if self.n_experts == 0 {
            return Err(RoutingError::Config("n_experts is 0; need at least 1".into()));
        }
        if u32::try_from(self.n_experts).is_err() {
            return Err(RoutingError::Config(format!(
                "n_experts {} does not fit in u32",
                self.n_experts
            )));
        }
        if self.top_k == 0 || self.top_k > self.n_experts {
            return Err(RoutingError::Config(format!(
                "top_k {} must be in 1..={} (n_experts)",
                self.top_k, self.n_experts
            )));
        }
        if let TopkMethod::GroupLimitedGreedy { n_group, topk_group }
        | TopkMethod::NoAuxTc { n_group, topk_group } = self.method
        {
            if n_group == 0 || self.n_experts % n_group != 0 {
                return Err(RoutingError::Config(format!(
                    "n_group {} does not divide n_experts {}",
                    n_group, self.n_experts
                )));
            }
            if topk_group == 0 || topk_group > n_group {
                return Err(RoutingError::Config(format!(
                    "topk_group {topk_group} must be in 1..={n_group} (n_group)"
                )));
            }
            let per_group = self.n_experts / n_group;
            if topk_group * per_group < self.top_k {
                return Err(RoutingError::Config(format!(
                    "topk_group {topk_group} x {per_group} experts per group = {} < top_k {}",
                    topk_group * per_group,
                    self.top_k
                )));
            }
            if matches!(self.method, TopkMethod::NoAuxTc { .. }) && per_group < 2 {
                return Err(RoutingError::Config(format!(
                    "noaux_tc scores a group by its top-2 experts but groups have {per_group} expert"
                )));
            }
        }
        if !(self.norm_epsilon.is_finite() && self.norm_epsilon >= 0.0) {
            return Err(RoutingError::Config(format!(
                "norm_epsilon {} must be finite and >= 0",
                self.norm_epsilon
            )));
        }
        if let RoutedScaling::Always(f) | RoutedScaling::UnlessNormalized(f) = self.scaling {
            if !f.is_finite() {
                return Err(RoutingError::Config(format!("routed scaling factor {f} is not finite")));
            }
        }
        Ok(())
    }
}

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
        if self.top_k == 0 {
            0
        } else {
            self.experts.len() / self.top_k
        }
    }
}

/// Errors of [`route`] and [`RouterConfig::validate`].
#[derive(Debug, Error, Clone, PartialEq)]
pub enum RoutingError {
    /// The configuration cannot work.
    #[error("invalid router config: {0}")]
    Config(String),
    /// The inputs do not match the configuration.
    #[error("invalid router input: {0}")]
    Input(String),
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
        TopkMethod::GroupLimitedGreedy { n_group, topk_group } => {
            let per = n / n_group;
            let group_scores: Vec<f32> = (0..n_group)
                .map(|g| scores[g * per..(g + 1) * per].iter().copied().fold(f32::NEG_INFINITY, f32::max))
                .collect();
            let sel = masked(&scores, &group_scores, per, topk_group, cfg.group_mask);
            let c = top_indices(&sel, candidates(&sel, cfg.group_mask), cfg.top_k);
            // transformers takes the weights from the masked scores themselves.
            let w = c.iter().map(|&e| sel[e]).collect();
            (c, w)
        }
        TopkMethod::NoAuxTc { n_group, topk_group } => {
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
fn masked(values: &[f32], group_scores: &[f32], per: usize, topk_group: usize, mask: GroupMask) -> Vec<f32> {
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
            return Err(RoutingError::Input(format!("correction bias of expert {i} is {}", b[i])));
        }
    }
    let mut experts = Vec::with_capacity(n_tokens * cfg.top_k);
    let mut weights = Vec::with_capacity(n_tokens * cfg.top_k);
    for t in 0..n_tokens {
        route_token(&logits[t * n..(t + 1) * n], cfg, correction_bias, &mut experts, &mut weights);
    }
    Ok(Routing { top_k: cfg.top_k, experts, weights })
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
