//! FP8 weights (`quantization_config.quant_method: "fp8"`): e4m3 values with one scale per
//! block (or per matrix: one block as large as it), widened to f32 at load as
//! `e4m3(q[i][j]) · scale[i / rows][j / cols]`.

use float8::F8E4M3;
use rayon::prelude::*;

use crate::config::{BlockFp8, Fp8Scales};

/// The safetensors dtype of the values.
pub(crate) const DTYPE: &str = "F8_E4M3";

/// The tensor holding the scales of weight `name`: `_scale_inv` for blocks (DeepSeek's and
/// transformers' name; the scale multiplies, it is the inverse of the one that quantized),
/// `_scale` for one a matrix (AutoFP8's).
pub(crate) fn scale_name(name: &str, scales: Fp8Scales) -> String {
    match scales {
        Fp8Scales::Blocks(_) => format!("{name}_scale_inv"),
        Fp8Scales::PerTensor => format!("{name}_scale"),
    }
}

/// The blocks of a `[rows, cols]` weight: the configured ones, or the whole matrix.
pub(crate) fn blocks(shape: &[usize], scales: Fp8Scales) -> BlockFp8 {
    match scales {
        Fp8Scales::Blocks(b) => b,
        Fp8Scales::PerTensor => BlockFp8 {
            rows: shape[0].max(1),
            cols: shape[1].max(1),
        },
    }
}

/// The shape of the scales of a `[rows, cols]` weight: one per block, the last ones partial.
pub(crate) fn scale_shape(shape: &[usize], block: BlockFp8) -> Vec<usize> {
    vec![shape[0].div_ceil(block.rows), shape[1].div_ceil(block.cols)]
}

/// Widens the e4m3 bytes `q` of a `[rows, cols]` weight (row-major) with its block scales
/// `scales` (row-major, [`scale_shape`]) to f32 values.
pub(crate) fn dequantize(q: &[u8], cols: usize, scales: &[f32], block: BlockFp8) -> Vec<f32> {
    let table: Vec<f32> = (0..=255u8).map(|b| F8E4M3::from_bits(b).to_f32()).collect();
    let scale_cols = cols.div_ceil(block.cols);
    let mut out = vec![0.0f32; q.len()];
    out.par_chunks_mut(cols)
        .zip(q.par_chunks(cols))
        .enumerate()
        .for_each(|(i, (dst, src))| {
            let row_scales = &scales[i / block.rows * scale_cols..][..scale_cols];
            for ((d, s), scale) in dst
                .chunks_mut(block.cols)
                .zip(src.chunks(block.cols))
                .zip(row_scales)
            {
                for (d, &b) in d.iter_mut().zip(s) {
                    *d = table[b as usize] * scale;
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// e4m3fn by its definition: bias 7, subnormals at exponent 0, no infinities, NaN at
    /// S.1111.111.
    fn naive_e4m3(b: u8) -> f32 {
        let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
        let (e, m) = (((b >> 3) & 0xF) as i32, (b & 7) as f32);
        if e == 15 && m == 7.0 {
            return f32::NAN;
        }
        let mag = if e == 0 {
            m / 8.0 * 2f32.powi(-6)
        } else {
            (1.0 + m / 8.0) * 2f32.powi(e - 7)
        };
        sign * mag
    }

    #[test]
    fn every_byte_decodes_as_e4m3fn() {
        for b in 0..=255u8 {
            let (got, want) = (F8E4M3::from_bits(b).to_f32(), naive_e4m3(b));
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{b:#04x}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn each_block_takes_its_own_scale_including_partial_edges() {
        // 5 x 7 weight, 2 x 3 blocks: scales 3 x 3, the last row and column of blocks partial.
        let block = BlockFp8 { rows: 2, cols: 3 };
        let (rows, cols) = (5, 7);
        let q: Vec<u8> = (0..rows * cols).map(|k| (k % 120) as u8).collect();
        let shape = scale_shape(&[rows, cols], block);
        assert_eq!(shape, [3, 3]);
        let scales: Vec<f32> = (0..9).map(|k| 0.5 + k as f32).collect();
        let got = dequantize(&q, cols, &scales, block);
        for i in 0..rows {
            for j in 0..cols {
                let want = naive_e4m3(q[i * cols + j]) * scales[(i / 2) * 3 + j / 3];
                assert_eq!(got[i * cols + j], want, "({i}, {j})");
            }
        }
    }
}
