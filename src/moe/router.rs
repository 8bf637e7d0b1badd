//! The router: logits = x · W_gateᵀ, then the reference top-k of the experts crate.

use crate::checkpoint::WeightSource;
use crate::error::Result;
use crate::ops;
use crate::tensor::Tensor;
use switchyard_experts::{route, RouterConfig, Routing};

/// How a block's tokens pick experts.
#[derive(Debug, Clone)]
pub enum Router {
    /// A dense MLP split into `parts` along its intermediate dim (Megatron-style): every token
    /// visits every part with weight 1, and the parts' outputs sum to the MLP's.
    Dense {
        /// Parts of the split (1: the whole MLP).
        parts: usize,
    },
    /// A learned top-k router.
    Learned {
        /// [n_experts, hidden].
        gate: Tensor,
        /// Selection-only bias (DeepSeek-V3's `e_score_correction_bias`).
        correction_bias: Option<Vec<f32>>,
        /// The routing variant.
        config: RouterConfig,
    },
}

impl Router {
    /// Loads `{prefix}.gate.weight` (and the correction bias when `with_bias`).
    pub fn load(
        src: &dyn WeightSource,
        prefix: &str,
        config: RouterConfig,
        hidden: usize,
        with_bias: bool,
    ) -> Result<Self> {
        let n = config.n_experts;
        let gate = src.load(&format!("{prefix}.gate.weight"), &[n, hidden])?;
        let correction_bias = if with_bias {
            Some(
                src.load(&format!("{prefix}.gate.e_score_correction_bias"), &[n])?
                    .into_cpu()?
                    .into_vec(),
            )
        } else {
            None
        };
        Ok(Router::Learned {
            gate,
            correction_bias,
            config,
        })
    }

    /// Moves the gate to `device`, in f32: routing decisions flip on small logit differences,
    /// and transformers computes the routers of DeepSeek-V3 in f32 too.
    pub fn to_device(&mut self, device: &crate::backend::Device) -> Result<()> {
        if let Router::Learned { gate, .. } = self {
            *gate = gate.to_device(device)?;
        }
        Ok(())
    }

    /// Experts chosen per token.
    pub fn top_k(&self) -> usize {
        match self {
            Router::Dense { parts } => *parts,
            Router::Learned { config, .. } => config.top_k,
        }
    }

    /// Logical experts.
    pub fn n_experts(&self) -> usize {
        match self {
            Router::Dense { parts } => *parts,
            Router::Learned { config, .. } => config.n_experts,
        }
    }

    /// Routes the rows of `x` [T, hidden].
    pub fn route(&self, x: &Tensor) -> Result<Routing> {
        let n_tokens = x.dims()[0];
        match self {
            Router::Dense { parts } => Ok(Routing {
                top_k: *parts,
                experts: (0..n_tokens).flat_map(|_| 0..*parts as u32).collect(),
                weights: vec![1.0; n_tokens * parts],
            }),
            Router::Learned {
                gate,
                correction_bias,
                config,
            } => {
                // The top-k runs on the host for now (one copy of [T, n_experts] logits per layer).
                let logits = ops::linear(x, gate, None)?.into_cpu()?;
                Ok(route(
                    logits.as_slice(),
                    n_tokens,
                    config,
                    correction_bias.as_deref(),
                )?)
            }
        }
    }
}
