//! `quantization_config`: how a checkpoint's weights are stored when they are not plain floats.
//!
//! Supported: the block-scaled FP8 of DeepSeek-V3/R1 and Qwen3's FP8 releases
//! (`quant_method: "fp8"`, e4m3 values, one scale per `weight_block_size` block, the scales as
//! `<weight>_scale_inv` tensors). The weights are dequantized when loaded and computed like bf16
//! ones (weight-only: activations are not quantized).

use serde_json::Value;

use super::model::Ctx;
use super::ConfigError;

/// Block-scaled e4m3 weights: `w[i][j] = e4m3(q[i][j]) · scale_inv[i / rows][j / cols]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockFp8 {
    /// Weight rows (output features) a scale covers.
    pub rows: usize,
    /// Weight columns (input features) a scale covers.
    pub cols: usize,
}

/// transformers' default `weight_block_size` for `quant_method: "fp8"`.
const DEFAULT_BLOCK: [usize; 2] = [128, 128];

/// Parses `quantization_config` (None when the config has none).
pub(super) fn parse(ctx: &Ctx, v: Option<&Value>) -> Result<Option<BlockFp8>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    let field = "quantization_config";
    let Some(obj) = v.as_object() else {
        return Err(ctx.invalid(field, v, "must be an object"));
    };
    let method = obj.get("quant_method").and_then(Value::as_str);
    if method != Some("fp8") {
        let found = obj.get("quant_method").unwrap_or(&Value::Null);
        return Err(ctx.invalid(
            "quantization_config.quant_method",
            found,
            "only \"fp8\" (block-scaled e4m3 weights, as DeepSeek-V3 and Qwen3 FP8 checkpoints) \
             is supported",
        ));
    }
    if let Some(fmt) = obj.get("fmt") {
        if fmt.as_str() != Some("e4m3") {
            return Err(ctx.invalid(
                "quantization_config.fmt",
                fmt,
                "only \"e4m3\" FP8 weights are supported",
            ));
        }
    }
    let block = match obj.get("weight_block_size") {
        None | Some(Value::Null) => DEFAULT_BLOCK,
        Some(b) => block_size(b).ok_or_else(|| {
            ctx.invalid(
                "quantization_config.weight_block_size",
                b,
                "must be two positive integers [rows, cols] (per-tensor FP8 scales are not \
                 supported)",
            )
        })?,
    };
    Ok(Some(BlockFp8 {
        rows: block[0],
        cols: block[1],
    }))
}

fn block_size(v: &Value) -> Option<[usize; 2]> {
    let dims: Vec<usize> = v
        .as_array()?
        .iter()
        .map(|d| d.as_u64().filter(|&d| d > 0).map(|d| d as usize))
        .collect::<Option<_>>()?;
    dims.try_into().ok()
}
