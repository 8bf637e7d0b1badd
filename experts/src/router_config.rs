//! The typed router configuration and its validation (see [`crate::routing`] for the semantics).

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
            method: TopkMethod::NoAuxTc {
                n_group,
                topk_group,
            },
            normalize: norm_topk_prob,
            norm_epsilon: 1e-20,
            scaling: RoutedScaling::Always(factor),
            group_mask: GroupMask::ZeroFill,
        }
    }

    /// Checks the numbers; every error names the offending value.
    pub fn validate(&self) -> Result<(), RoutingError> {
        if self.n_experts == 0 {
            return Err(RoutingError::Config(
                "n_experts is 0; need at least 1".into(),
            ));
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
        if let TopkMethod::GroupLimitedGreedy {
            n_group,
            topk_group,
        }
        | TopkMethod::NoAuxTc {
            n_group,
            topk_group,
        } = self.method
        {
            if n_group == 0 || !self.n_experts.is_multiple_of(n_group) {
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
                return Err(RoutingError::Config(format!(
                    "routed scaling factor {f} is not finite"
                )));
            }
        }
        Ok(())
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
