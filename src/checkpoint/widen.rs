//! Widening stored bf16 / f16 / f32 bytes to f32, in parallel chunks for big tensors.

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use half::{bf16, f16};
use rayon::prelude::*;

use crate::tensor::DType;

/// Elements per parallel chunk: big enough to amortise the task, small enough to spread page faults.
const CHUNK: usize = 1 << 18;

/// The engine dtype a safetensors dtype name widens from, `None` when it cannot be widened.
pub(crate) fn supported(dtype: &str) -> Option<DType> {
    match dtype {
        "BF16" => Some(DType::BF16),
        "F16" => Some(DType::F16),
        "F32" => Some(DType::F32),
        _ => None,
    }
}

/// Widens little-endian `bytes` of `dtype` (BF16, F16 or F32) to f32 values.
pub(crate) fn to_f32(bytes: &[u8], dtype: DType) -> Vec<f32> {
    let width = dtype.size_in_bytes();
    let numel = bytes.len() / width;
    let mut out = vec![0.0f32; numel];
    out.par_chunks_mut(CHUNK)
        .zip(bytes.par_chunks(CHUNK * width))
        .for_each(|(dst, src)| widen_chunk(src, dst, dtype));
    out
}

fn widen_chunk(src: &[u8], dst: &mut [f32], dtype: DType) {
    match dtype {
        DType::BF16 => with_u16(src, |bits| {
            bits.reinterpret_cast::<bf16>().convert_to_f32_slice(dst)
        }),
        DType::F16 => with_u16(src, |bits| {
            bits.reinterpret_cast::<f16>().convert_to_f32_slice(dst)
        }),
        DType::F32 | DType::I32 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
        }
    }
}

/// Calls `f` with `src` seen as u16 values: in place when aligned on a little-endian host, from a
/// copy otherwise.
fn with_u16(src: &[u8], f: impl FnOnce(&[u16])) {
    if cfg!(target_endian = "little") {
        // SAFETY: every bit pattern is a valid u16; `align_to` only hands back the aligned middle.
        let (head, mid, tail) = unsafe { src.align_to::<u16>() };
        if head.is_empty() && tail.is_empty() {
            return f(mid);
        }
    }
    let copy: Vec<u16> = src
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    f(&copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widens_each_dtype_aligned_and_not() {
        let vals = [1.5f32, -2.25, 0.0, 3.0e-3, 65504.0];
        let mut bf: Vec<u8> = vec![0xAA]; // one leading byte, to test the unaligned path too
        let mut hf: Vec<u8> = vec![0xAA];
        let mut f: Vec<u8> = vec![0xAA];
        for v in vals {
            bf.extend(bf16::from_f32(v).to_le_bytes());
            hf.extend(f16::from_f32(v).to_le_bytes());
            f.extend(v.to_le_bytes());
        }
        let bf_expect: Vec<f32> = vals.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        let hf_expect: Vec<f32> = vals.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
        assert_eq!(to_f32(&bf[1..], DType::BF16), bf_expect);
        assert_eq!(to_f32(&hf[1..], DType::F16), hf_expect);
        assert_eq!(to_f32(&f[1..], DType::F32), vals);
        // A fresh Vec<u16> is 2-aligned: the in-place path.
        // SAFETY: the u16 buffer outlives the byte view and u8 has no alignment.
        let bits: Vec<u16> = vals.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
        let aligned: &[u8] =
            unsafe { std::slice::from_raw_parts(bits.as_ptr().cast(), bits.len() * 2) };
        assert_eq!(to_f32(aligned, DType::BF16), bf_expect);
    }

    #[test]
    fn widens_across_chunks() {
        let n = CHUNK * 2 + 17;
        let vals: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(to_f32(&bytes, DType::F32), vals);
    }
}
