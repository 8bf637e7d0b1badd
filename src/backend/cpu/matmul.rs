//! Dense products through the `gemm` crate (multithreaded, SIMD).

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// Below this many multiply-adds one thread is faster than waking the pool.
const PARALLEL_MIN_FLOPS: usize = 1 << 18;

/// Output columns of one gemm call. gemm picks its kernel and blocking from (m, n, k), so a row
/// of a 3-row product can differ in the last bit from the same row alone; serving needs greedy
/// answers that do not depend on what else is in the batch, so every product is computed as
/// the same fixed sequence of one-row calls (one per row and chunk of columns), whatever m is.
const COLS_PER_CALL: usize = 256;

/// `out[m, n] = x[m, k] · w[n, k]ᵀ (+ bias[n])`: a linear layer with PyTorch's weight layout.
pub fn linear(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = vec![0.0f32; m * n];
    linear_into(&mut out, x, m, k, w, n, bias);
    out
}

/// [`linear`] writing into `out` (overwritten).
pub fn linear_into(
    out: &mut [f32],
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
) {
    assert_eq!(x.len(), m * k, "linear: x is not [{m}, {k}]");
    assert_eq!(w.len(), n * k, "linear: w is not [{n}, {k}]");
    assert_eq!(out.len(), m * n, "linear: out is not [{m}, {n}]");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
    } else if m * n * k >= PARALLEL_MIN_FLOPS {
        out.par_chunks_mut(n).enumerate().for_each(|(r, row)| {
            row.par_chunks_mut(COLS_PER_CALL)
                .enumerate()
                .for_each(|(c, cols)| row_times_cols(cols, &x[r * k..][..k], w, c, k));
        });
    } else {
        for (r, row) in out.chunks_mut(n).enumerate() {
            for (c, cols) in row.chunks_mut(COLS_PER_CALL).enumerate() {
                row_times_cols(cols, &x[r * k..][..k], w, c, k);
            }
        }
    }
    if let Some(b) = bias {
        for row in out.chunks_exact_mut(n) {
            for (o, bi) in row.iter_mut().zip(b) {
                *o += bi;
            }
        }
    }
}

/// `cols = x_row · w[c·COLS_PER_CALL ..][..cols.len()]ᵀ`: one row against one chunk of output
/// columns, the unit every product is made of.
fn row_times_cols(cols: &mut [f32], x_row: &[f32], w: &[f32], chunk: usize, k: usize) {
    let n = cols.len();
    let w = &w[chunk * COLS_PER_CALL * k..][..n * k];
    // SAFETY: dst is 1×n (row stride n), lhs is x_row as 1×k, rhs is wᵀ as k×n (element
    // (i, j) = w[j*k + i]); the slices above hold exactly these elements.
    unsafe {
        gemm(
            1,
            n,
            k,
            cols.as_mut_ptr(),
            1,
            n as isize,
            false,
            x_row.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|l| x[i * k + l] as f64 * w[j * k + l] as f64)
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn matches_the_naive_product_small_and_large() {
        for &(m, k, n) in &[(1, 1, 1), (3, 5, 7), (17, 64, 33), (64, 256, 128)] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
                .collect();
            let got = linear(&x, m, k, &w, n, None);
            let want = naive(&x, m, k, &w, n);
            for (g, r) in got.iter().zip(&want) {
                assert!(
                    (g - r).abs() <= 1e-4 * (1.0 + r.abs()),
                    "{m}x{k}x{n}: {g} vs {r}"
                );
            }
        }
    }

    #[test]
    fn a_row_does_not_depend_on_the_other_rows_of_the_batch() {
        for &(m, k, n) in &[(3, 64, 300), (17, 128, 96), (33, 257, 513)] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 2654435761usize % 1000) as f32 / 500.0 - 1.0) * 0.37)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 40503 % 997) as f32 / 498.5 - 1.0) * 0.21)
                .collect();
            let all = linear(&x, m, k, &w, n, None);
            for r in 0..m {
                let alone = linear(&x[r * k..][..k], 1, k, &w, n, None);
                assert_eq!(&all[r * n..][..n], &alone[..], "row {r} of {m}x{k}x{n}");
            }
        }
    }

    #[test]
    fn adds_the_bias_to_every_row() {
        let out = linear(
            &[1.0, 2.0, 3.0, 4.0],
            2,
            2,
            &[1.0, 0.0, 0.0, 1.0],
            2,
            Some(&[10.0, 20.0]),
        );
        assert_eq!(out, vec![11.0, 22.0, 13.0, 24.0]);
    }
}
