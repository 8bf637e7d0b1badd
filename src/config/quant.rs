//! `quantization_config`: how a checkpoint's weights are stored when they are not plain floats.
//!
//! Supported: `quant_method: "fp8"`, e4m3 weights with either one scale per
//! `weight_block_size` block as `<weight>_scale_inv` (DeepSeek-V3/R1, Qwen3's FP8 releases,
//! transformers' fine-grained FP8) or, without a block size, one scale per matrix as
//! `<weight>_scale` (AutoFP8's per-tensor checkpoints). The weights are dequantized when loaded
//! and computed like bf16 ones (weight-only: activations are not quantized, whatever
//! `activation_scheme` says).

use serde_json::Value;

use super::model::Ctx;
use super::ConfigError;

/// The blocks of block-scaled e4m3 weights: `w[i][j] = e4m3(q[i][j]) · scale_inv[i / rows][j /
/// cols]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockFp8 {
    /// Weight rows (output features) a scale covers.
    pub rows: usize,
    /// Weight columns (input features) a scale covers.
    pub cols: usize,
}

/// How an FP8 checkpoint scales its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fp8Scales {
    /// One scale per block, `<weight>_scale_inv` of shape [⌈rows / block.rows⌉, ⌈cols /
    /// block.cols⌉].
    Blocks(BlockFp8),
    /// One scale per matrix, `<weight>_scale` (a scalar or one element).
    PerTensor,
}

/// Parses `quantization_config` (None when the config has none).
pub(super) fn parse(ctx: &Ctx, v: Option<&Value>) -> Result<Option<Fp8Scales>, ConfigError> {
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
            "only \"fp8\" (e4m3 weights with block or per-matrix scales, as DeepSeek-V3's, \
             Qwen3's and AutoFP8's checkpoints) is supported",
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
        None | Some(Value::Null) => return Ok(Some(Fp8Scales::PerTensor)),
        Some(b) => block_size(b).ok_or_else(|| {
            ctx.invalid(
                "quantization_config.weight_block_size",
                b,
                "must be two positive integers [rows, cols], or absent for one scale a matrix",
            )
        })?,
    };
    Ok(Some(Fp8Scales::Blocks(BlockFp8 {
        rows: block[0],
        cols: block[1],
    })))
}

fn block_size(v: &Value) -> Option<[usize; 2]> {
    let dims: Vec<usize> = v
        .as_array()?
        .iter()
        .map(|d| d.as_u64().filter(|&d| d > 0).map(|d| d as usize))
        .collect::<Option<_>>()?;
    dims.try_into().ok()
}
