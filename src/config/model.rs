//! `ModelConfig`: one normalised description of every supported architecture, parsed from a
//! checkpoint's config.json. Optional fields take the Hugging Face defaults of the model_type.

use super::raw::RawConfig;
use super::rope::{RopeConfig, RopeParseError};
use super::ConfigError;
use std::path::Path;
use switchyard_experts::RouterConfig;

/// The model families switchyard runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3 (dense).
    Llama,
    /// Mistral (dense, sliding window).
    Mistral,
    /// Mixtral (sparse MoE, softmax top-k).
    Mixtral,
    /// Qwen1.5/2-MoE (shared expert with a sigmoid gate).
    Qwen2Moe,
    /// Qwen3-MoE (q/k norm).
    Qwen3Moe,
    /// DeepSeek-V2 (MLA, group-limited routing).
    DeepseekV2,
    /// DeepSeek-V3 (MLA, sigmoid routing with correction bias).
    DeepseekV3,
}

impl Architecture {
    const ALL: [(&'static str, Architecture); 7] = [
        ("llama", Architecture::Llama),
        ("mistral", Architecture::Mistral),
        ("mixtral", Architecture::Mixtral),
        ("qwen2_moe", Architecture::Qwen2Moe),
        ("qwen3_moe", Architecture::Qwen3Moe),
        ("deepseek_v2", Architecture::DeepseekV2),
        ("deepseek_v3", Architecture::DeepseekV3),
    ];

    /// The config.json `model_type`.
    pub fn model_type(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, a)| *a == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, a)| *a)
    }

    fn supported_list() -> String {
        Self::ALL
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Multi-head latent attention (DeepSeek-V2, arXiv:2405.04434) dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct MlaConfig {
    /// Rank of the query compression (None: a plain q_proj).
    pub q_lora_rank: Option<usize>,
    /// Rank of the compressed KV latent that the cache stores.
    pub kv_lora_rank: usize,
    /// Per-head query/key dims without position.
    pub qk_nope_head_dim: usize,
    /// Per-head query/key dims that carry RoPE (shared key across heads).
    pub qk_rope_head_dim: usize,
    /// Per-head value dims.
    pub v_head_dim: usize,
}

/// Which attention the layers use.
#[derive(Debug, Clone, PartialEq)]
pub enum AttentionKind {
    /// Grouped-query attention with the usual projections.
    Gqa {
        /// Bias on q, k, v projections.
        qkv_bias: bool,
        /// Bias on the output projection.
        o_bias: bool,
        /// RMSNorm on each head of q and k before RoPE (Qwen3).
        qk_norm: bool,
    },
    /// DeepSeek's multi-head latent attention.
    Mla(MlaConfig),
}

/// Always-on experts beside the routed ones.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedExpertConfig {
    /// Intermediate size of the shared MLP (all shared experts fused).
    pub intermediate_size: usize,
    /// Scaled by sigmoid(x · w) (Qwen2-MoE's `shared_expert_gate`).
    pub gated: bool,
}

/// The sparse MoE blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    /// Routed experts per MoE layer.
    pub n_experts: usize,
    /// Intermediate size of each routed expert.
    pub intermediate_size: usize,
    /// How tokens pick experts.
    pub router: RouterConfig,
    /// Whether the router has a selection-only correction bias (DeepSeek-V3).
    pub correction_bias: bool,
    /// Shared experts, if any.
    pub shared: Option<SharedExpertConfig>,
    /// For each layer: sparse MoE (true) or a dense MLP (false).
    pub sparse_layers: Vec<bool>,
}

/// The shape and math of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The family.
    pub architecture: Architecture,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Residual stream width.
    pub hidden_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (GQA); equal to num_heads for MLA.
    pub num_kv_heads: usize,
    /// Per-head dim of q/k/v (GQA).
    pub head_dim: usize,
    /// Intermediate size of dense MLPs.
    pub intermediate_size: usize,
    /// MLPs have biases (Llama's `mlp_bias`).
    pub mlp_bias: bool,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// Rotary embedding.
    pub rope: RopeConfig,
    /// Longest context the model supports.
    pub max_position_embeddings: usize,
    /// lm_head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// The attention of every layer.
    pub attention: AttentionKind,
    /// Keys further back than this many positions are masked (Mistral).
    pub sliding_window: Option<usize>,
    /// Sparse MoE blocks (None: every layer dense).
    pub moe: Option<MoeConfig>,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens.
    pub eos_token_ids: Vec<u32>,
    /// How the checkpoint stores its matrices when not as floats (`quantization_config`).
    pub quantization: Option<super::Fp8Scales>,
}

/// Parse context: the file, for messages.
pub(super) struct Ctx<'a> {
    pub(super) path: &'a Path,
    pub(super) model_type: &'a str,
}

impl Ctx<'_> {
    pub(super) fn required<T>(&self, v: Option<T>, field: &'static str) -> Result<T, ConfigError> {
        v.ok_or_else(|| ConfigError::MissingField {
            path: self.path.to_path_buf(),
            field,
            model_type: self.model_type.to_string(),
        })
    }

    pub(super) fn invalid(
        &self,
        field: &'static str,
        value: impl ToString,
        why: impl ToString,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            field,
            value: value.to_string(),
            why: why.to_string(),
        }
    }
}

impl ModelConfig {
    /// Reads `DIR/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, ConfigError> {
        Self::from_file(&dir.join("config.json"))
    }

    /// Reads a config.json file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text, path)
    }

    /// Parses config.json text; `path` names it in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let parse_err = |e: serde_json::Error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let raw: RawConfig = serde_json::from_str(text).map_err(parse_err)?;
        let model_type = raw
            .model_type
            .clone()
            .ok_or_else(|| ConfigError::MissingField {
                path: path.to_path_buf(),
                field: "model_type",
                model_type: "?".into(),
            })?;
        let architecture =
            Architecture::parse(&model_type).ok_or_else(|| ConfigError::UnknownModelType {
                path: path.to_path_buf(),
                found: model_type.clone(),
                supported: Architecture::supported_list(),
            })?;
        let ctx = Ctx {
            path,
            model_type: &model_type,
        };
        let cfg = build(&ctx, architecture, raw)?;
        cfg.validate(&ctx)?;
        Ok(cfg)
    }

    /// Whether layer `i` has a sparse MoE block.
    pub fn is_sparse_layer(&self, i: usize) -> bool {
        self.moe.as_ref().is_some_and(|m| m.sparse_layers[i])
    }

    fn validate(&self, ctx: &Ctx) -> Result<(), ConfigError> {
        if self.num_heads == 0
            || self.num_kv_heads == 0
            || !self.num_heads.is_multiple_of(self.num_kv_heads)
        {
            return Err(ctx.invalid(
                "num_key_value_heads",
                self.num_kv_heads,
                format!("must divide num_attention_heads ({})", self.num_heads),
            ));
        }
        for (field, v) in [
            ("hidden_size", self.hidden_size),
            ("vocab_size", self.vocab_size),
            ("num_hidden_layers", self.num_layers),
        ] {
            if v == 0 {
                return Err(ctx.invalid(field, v, "must be positive"));
            }
        }
        if let AttentionKind::Gqa { .. } = self.attention {
            if !self.head_dim.is_multiple_of(2) {
                return Err(ctx.invalid("head_dim", self.head_dim, "RoPE needs an even head_dim"));
            }
        }
        Ok(())
    }
}

struct Defaults {
    rms_norm_eps: f64,
    rope_theta: f64,
    max_positions: usize,
}

fn defaults(a: Architecture) -> Defaults {
    use Architecture::*;
    match a {
        Llama => Defaults {
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            max_positions: 2048,
        },
        Mistral => Defaults {
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            max_positions: 4096 * 32,
        },
        Mixtral => Defaults {
            rms_norm_eps: 1e-5,
            rope_theta: 1e6,
            max_positions: 4096 * 32,
        },
        Qwen2Moe | Qwen3Moe => Defaults {
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            max_positions: 32768,
        },
        DeepseekV2 => Defaults {
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            max_positions: 2048,
        },
        DeepseekV3 => Defaults {
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            max_positions: 4096,
        },
    }
}

fn build(
    ctx: &Ctx,
    architecture: Architecture,
    raw: RawConfig,
) -> Result<ModelConfig, ConfigError> {
    use Architecture::*;
    let d = defaults(architecture);
    let hidden_size = ctx.required(raw.hidden_size, "hidden_size")?;
    let num_layers = ctx.required(raw.num_hidden_layers, "num_hidden_layers")?;
    let num_heads = ctx.required(raw.num_attention_heads, "num_attention_heads")?;
    let vocab_size = ctx.required(raw.vocab_size, "vocab_size")?;
    if let Some(act) = raw.hidden_act.as_deref() {
        if act != "silu" && act != "swish" {
            return Err(ctx.invalid("hidden_act", act, "only silu (SwiGLU) MLPs are supported"));
        }
    }
    let is_mla = matches!(architecture, DeepseekV2 | DeepseekV3);
    let num_kv_heads = if is_mla {
        num_heads
    } else {
        raw.num_key_value_heads.unwrap_or(num_heads)
    };
    if num_heads == 0 {
        return Err(ctx.invalid("num_attention_heads", 0, "must be positive"));
    }
    let head_dim = raw.head_dim.unwrap_or(hidden_size / num_heads);
    let max_position_embeddings = raw.max_position_embeddings.unwrap_or(d.max_positions);
    let mut rope = RopeConfig::parse(
        raw.rope_theta,
        raw.rope_scaling.as_ref(),
        raw.rope_parameters.as_ref(),
        d.rope_theta,
        max_position_embeddings,
    )
    .map_err(|RopeParseError { field, message }| ConfigError::Invalid {
        path: ctx.path.to_path_buf(),
        field: "rope",
        value: field,
        why: message,
    })?;
    // DeepSeek checkpoints rotate interleaved pairs; transformers-5 configs say so with
    // `rope_interleave`, hub configs have no key (and always meant interleaved).
    rope.interleaved = is_mla && raw.rope_interleave.unwrap_or(true);
    if is_mla && raw.attention_bias == Some(true) {
        return Err(ctx.invalid(
            "attention_bias",
            true,
            "biased MLA projections are not supported",
        ));
    }
    let attention = if is_mla {
        AttentionKind::Mla(MlaConfig {
            q_lora_rank: raw.q_lora_rank,
            kv_lora_rank: ctx.required(raw.kv_lora_rank, "kv_lora_rank")?,
            qk_nope_head_dim: ctx.required(raw.qk_nope_head_dim, "qk_nope_head_dim")?,
            qk_rope_head_dim: ctx.required(raw.qk_rope_head_dim, "qk_rope_head_dim")?,
            v_head_dim: ctx.required(raw.v_head_dim, "v_head_dim")?,
        })
    } else {
        let bias = raw.attention_bias.unwrap_or(false);
        match architecture {
            Qwen2Moe => AttentionKind::Gqa {
                qkv_bias: raw.qkv_bias.unwrap_or(true),
                o_bias: false,
                qk_norm: false,
            },
            Qwen3Moe => AttentionKind::Gqa {
                qkv_bias: bias,
                o_bias: bias,
                qk_norm: true,
            },
            _ => AttentionKind::Gqa {
                qkv_bias: bias,
                o_bias: bias,
                qk_norm: false,
            },
        }
    };
    let sliding_window = match architecture {
        Mistral | Mixtral => raw.sliding_window,
        Qwen2Moe | Qwen3Moe if raw.use_sliding_window.unwrap_or(false) => raw.sliding_window,
        _ => None,
    };
    let intermediate_size = ctx.required(raw.intermediate_size, "intermediate_size")?;
    let eos_token_ids = raw
        .eos_token_id
        .clone()
        .map(|e| e.into_vec())
        .unwrap_or_default();
    let bos_token_id = raw
        .bos_token_id
        .clone()
        .and_then(|b| b.into_vec().first().copied());
    let moe = super::moe_config::build(ctx, architecture, &raw, num_layers)?;
    let quantization = super::quant::parse(ctx, raw.quantization_config.as_ref())?;
    Ok(ModelConfig {
        architecture,
        vocab_size,
        hidden_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        intermediate_size,
        mlp_bias: raw.mlp_bias.unwrap_or(false),
        rms_norm_eps: raw.rms_norm_eps.unwrap_or(d.rms_norm_eps) as f32,
        rope,
        max_position_embeddings,
        tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
        attention,
        sliding_window,
        moe,
        bos_token_id,
        eos_token_ids,
        quantization,
    })
}
