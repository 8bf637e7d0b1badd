//! How each architecture names its feed-forward tensors in hub checkpoints.

use crate::config::Architecture;

/// Tensor names of one architecture's feed-forward block, relative to `model.layers.{i}`.
#[derive(Debug, Clone, Copy)]
pub struct ExpertNames {
    /// The sparse block's module (`block_sparse_moe` or `mlp`).
    pub sparse: &'static str,
    /// Per-expert projections (gate, up, down).
    pub proj: [&'static str; 3],
    /// The shared expert module, if the architecture has one.
    pub shared: Option<&'static str>,
}

impl ExpertNames {
    /// The names for `arch`.
    pub fn of(arch: Architecture) -> Self {
        use Architecture::*;
        let gud = ["gate_proj", "up_proj", "down_proj"];
        match arch {
            Mixtral => Self {
                sparse: "block_sparse_moe",
                proj: ["w1", "w3", "w2"],
                shared: None,
            },
            Qwen2Moe => Self {
                sparse: "mlp",
                proj: gud,
                shared: Some("shared_expert"),
            },
            DeepseekV2 | DeepseekV3 => Self {
                sparse: "mlp",
                proj: gud,
                shared: Some("shared_experts"),
            },
            Llama | Mistral | Qwen3Moe => Self {
                sparse: "mlp",
                proj: gud,
                shared: None,
            },
        }
    }

    /// The dense MLP's projections (always gate_proj/up_proj/down_proj under `mlp`).
    pub const DENSE: [&'static str; 3] = ["gate_proj", "up_proj", "down_proj"];
}
