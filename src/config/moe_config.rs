//! The MoE part of a config: experts, router variant, shared experts, which layers are sparse.

use super::model::{Architecture, Ctx, MoeConfig, SharedExpertConfig};
use super::raw::RawConfig;
use super::ConfigError;
use switchyard_experts::{RouterConfig, TopkMethod};

pub(super) fn build(
    ctx: &Ctx,
    architecture: Architecture,
    raw: &RawConfig,
    num_layers: usize,
) -> Result<Option<MoeConfig>, ConfigError> {
    use Architecture::*;
    let moe = match architecture {
        Llama | Mistral => return Ok(None),
        Mixtral => MoeConfig {
            n_experts: raw.num_local_experts.unwrap_or(8),
            intermediate_size: ctx.required(raw.intermediate_size, "intermediate_size")?,
            router: RouterConfig::mixtral(
                raw.num_local_experts.unwrap_or(8),
                raw.num_experts_per_tok.unwrap_or(2),
            ),
            correction_bias: false,
            shared: None,
            sparse_layers: vec![true; num_layers],
        },
        Qwen2Moe | Qwen3Moe => {
            let n = raw
                .num_experts
                .or(raw.num_local_experts)
                .unwrap_or(if architecture == Qwen2Moe { 60 } else { 128 });
            let top_k = raw
                .num_experts_per_tok
                .unwrap_or(if architecture == Qwen2Moe { 4 } else { 8 });
            let step = raw.decoder_sparse_step.unwrap_or(1).max(1);
            let dense = raw.mlp_only_layers.clone().unwrap_or_default();
            let shared = (architecture == Qwen2Moe).then(|| SharedExpertConfig {
                intermediate_size: raw.shared_expert_intermediate_size.unwrap_or(5632),
                gated: true,
            });
            MoeConfig {
                n_experts: n,
                intermediate_size: raw
                    .moe_intermediate_size
                    .unwrap_or(if architecture == Qwen2Moe { 1408 } else { 768 }),
                router: RouterConfig::qwen_moe(n, top_k, raw.norm_topk_prob.unwrap_or(false)),
                correction_bias: false,
                shared,
                sparse_layers: (0..num_layers)
                    .map(|i| !dense.contains(&i) && n > 0 && (i + 1) % step == 0)
                    .collect(),
            }
        }
        DeepseekV2 | DeepseekV3 => match deepseek(ctx, architecture, raw, num_layers)? {
            Some(m) => m,
            None => return Ok(None),
        },
    };
    moe.router
        .validate()
        .map_err(|e| ctx.invalid("num_experts_per_tok", moe.router.top_k, e.to_string()))?;
    Ok(Some(moe))
}

fn deepseek(
    ctx: &Ctx,
    architecture: Architecture,
    raw: &RawConfig,
    num_layers: usize,
) -> Result<Option<MoeConfig>, ConfigError> {
    let v3 = architecture == Architecture::DeepseekV3;
    let Some(n) = raw.n_routed_experts.or(v3.then_some(256)) else {
        return Ok(None);
    };
    let top_k = raw.num_experts_per_tok.or(v3.then_some(8));
    let top_k = ctx.required(top_k, "num_experts_per_tok")?;
    let expected_score = if v3 { "sigmoid" } else { "softmax" };
    if let Some(s) = raw.scoring_func.as_deref().filter(|s| *s != expected_score) {
        return Err(ctx.invalid(
            "scoring_func",
            s,
            format!("{} uses {expected_score}", ctx.model_type),
        ));
    }
    let n_group = raw.n_group.unwrap_or(if v3 { 8 } else { 1 });
    let topk_group = raw.topk_group.unwrap_or(if v3 { 4 } else { 1 });
    let method = match raw
        .topk_method
        .as_deref()
        .unwrap_or(if v3 { "noaux_tc" } else { "greedy" })
    {
        "greedy" => TopkMethod::Greedy,
        "group_limited_greedy" => TopkMethod::GroupLimitedGreedy {
            n_group,
            topk_group,
        },
        "noaux_tc" => TopkMethod::NoAuxTc {
            n_group,
            topk_group,
        },
        other => {
            return Err(ctx.invalid(
                "topk_method",
                other,
                "expected greedy, group_limited_greedy or noaux_tc",
            ))
        }
    };
    let factor = raw
        .routed_scaling_factor
        .unwrap_or(if v3 { 2.5 } else { 1.0 }) as f32;
    // transformers 5: V2 never renormalises and always scales; V3 renormalises if
    // norm_topk_prob, then scales.
    let router = match method {
        TopkMethod::NoAuxTc {
            n_group,
            topk_group,
        } if v3 => RouterConfig::deepseek_v3(
            n,
            top_k,
            n_group,
            topk_group,
            raw.norm_topk_prob.unwrap_or(true),
            factor,
        ),
        _ if v3 => {
            return Err(ctx.invalid(
                "topk_method",
                format!("{method:?}"),
                "deepseek_v3 uses noaux_tc",
            ))
        }
        _ => RouterConfig::deepseek_v2(n, top_k, method, factor),
    };
    let intermediate_size = ctx.required(raw.moe_intermediate_size, "moe_intermediate_size")?;
    let first_dense = raw.first_k_dense_replace.unwrap_or(if v3 { 3 } else { 0 });
    let freq = raw.moe_layer_freq.unwrap_or(1).max(1);
    let shared = raw
        .n_shared_experts
        .filter(|&s| s > 0)
        .map(|s| SharedExpertConfig {
            intermediate_size: s * intermediate_size,
            gated: false,
        });
    Ok(Some(MoeConfig {
        n_experts: n,
        intermediate_size,
        router,
        correction_bias: matches!(method, TopkMethod::NoAuxTc { .. }),
        shared,
        sparse_layers: (0..num_layers)
            .map(|i| i >= first_dense && i % freq == 0)
            .collect(),
    }))
}
