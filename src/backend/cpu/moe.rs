//! The expert path as the GPU runs it: permute (token, expert) pairs into groups by expert,
//! one grouped GEMM per projection over the variable-size groups, unpermute with the router
//! weights. Dropless: every pair is computed.

use super::activation::silu_mul;
use super::matmul::linear;
use rayon::prelude::*;

/// Pairs grouped by expert: `order[i]` is the pair (t·top_k + j) in sorted row i, and the rows
/// of expert e are `offsets[e]..offsets[e + 1]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permutation {
    /// Pair index of each sorted row.
    pub order: Vec<u32>,
    /// Start of each expert's rows (n_experts + 1 values).
    pub offsets: Vec<usize>,
}

/// A counting sort of pairs by expert id, stable in token order.
pub fn permute_by_expert(experts: &[u32], n_experts: usize) -> Permutation {
    let mut offsets = vec![0usize; n_experts + 1];
    for &e in experts {
        offsets[e as usize + 1] += 1;
    }
    for e in 0..n_experts {
        offsets[e + 1] += offsets[e];
    }
    let mut next = offsets.clone();
    let mut order = vec![0u32; experts.len()];
    for (pair, &e) in experts.iter().enumerate() {
        order[next[e as usize]] = pair as u32;
        next[e as usize] += 1;
    }
    Permutation { order, offsets }
}

/// Rows of `x` (`hidden` wide) in the order of `order`, where pair p reads token p / top_k.
pub fn gather_rows(x: &[f32], hidden: usize, order: &[u32], top_k: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(order.len() * hidden);
    for &pair in order {
        let t = pair as usize / top_k;
        out.extend_from_slice(&x[t * hidden..][..hidden]);
    }
    out
}

/// Stacked expert weights: `gate_up[e]` is [2·inter, hidden] (gate rows, then up rows) and
/// `down[e]` is [hidden, inter].
#[derive(Debug, Clone, Copy)]
pub struct ExpertWeights<'a> {
    /// [n, 2·inter, hidden].
    pub gate_up: &'a [f32],
    /// [n, hidden, inter].
    pub down: &'a [f32],
    /// Residual width.
    pub hidden: usize,
    /// Expert intermediate width.
    pub inter: usize,
    /// [n, 2·inter] biases of gate/up, if the MLP has biases.
    pub gate_up_bias: Option<&'a [f32]>,
    /// [n, hidden] biases of down.
    pub down_bias: Option<&'a [f32]>,
}

/// Grouped SwiGLU MLP: rows `offsets[e]..offsets[e+1]` of `x` go through expert e.
pub fn grouped_swiglu(x: &[f32], offsets: &[usize], w: ExpertWeights) -> Vec<f32> {
    let (h, i) = (w.hidden, w.inter);
    let mut out = vec![0.0f32; x.len()];
    let groups: Vec<(usize, &mut [f32])> = split_groups(&mut out, offsets, h);
    groups.into_par_iter().for_each(|(e, dst)| {
        let rows = dst.len() / h;
        let xs = &x[offsets[e] * h..][..rows * h];
        let gu_bias = w.gate_up_bias.map(|b| &b[e * 2 * i..][..2 * i]);
        let gate_up = linear(
            xs,
            rows,
            h,
            &w.gate_up[e * 2 * i * h..][..2 * i * h],
            2 * i,
            gu_bias,
        );
        let act = silu_mul(&gate_up, i);
        let down_bias = w.down_bias.map(|b| &b[e * h..][..h]);
        dst.copy_from_slice(&linear(
            &act,
            rows,
            i,
            &w.down[e * h * i..][..h * i],
            h,
            down_bias,
        ));
    });
    out
}

fn split_groups<'a>(
    out: &'a mut [f32],
    offsets: &[usize],
    width: usize,
) -> Vec<(usize, &'a mut [f32])> {
    let mut groups = Vec::new();
    let mut rest = out;
    for e in 0..offsets.len() - 1 {
        let (head, tail) = rest.split_at_mut((offsets[e + 1] - offsets[e]) * width);
        if !head.is_empty() {
            groups.push((e, head));
        }
        rest = tail;
    }
    groups
}

/// Unpermute and combine: `out[t] = Σ_j weights[t·k + j] · y[row of pair (t, j)]`, summed in
/// j order so the result does not depend on how pairs were grouped.
pub fn combine(y: &[f32], order: &[u32], weights: &[f32], top_k: usize, hidden: usize) -> Vec<f32> {
    let n_tokens = weights.len() / top_k;
    let mut row_of_pair = vec![0usize; order.len()];
    for (row, &pair) in order.iter().enumerate() {
        row_of_pair[pair as usize] = row;
    }
    let mut out = vec![0.0f32; n_tokens * hidden];
    out.par_chunks_mut(hidden).enumerate().for_each(|(t, o)| {
        for j in 0..top_k {
            let pair = t * top_k + j;
            let w = weights[pair];
            for (oi, yi) in o.iter_mut().zip(&y[row_of_pair[pair] * hidden..][..hidden]) {
                *oi += w * yi;
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::activation::silu;

    #[test]
    fn permutation_groups_pairs_by_expert_in_token_order() {
        let p = permute_by_expert(&[2, 0, 1, 2, 0, 0], 4);
        assert_eq!(p.offsets, vec![0, 3, 4, 6, 6]);
        assert_eq!(p.order, vec![1, 4, 5, 2, 0, 3]);
    }

    #[test]
    fn grouped_path_equals_a_loop_over_tokens() {
        let (h, i, e, k, t) = (4, 3, 3, 2, 5);
        let f = |n: usize, s: f32| -> Vec<f32> {
            (0..n).map(|v| ((v as f32 + s) * 0.7).sin()).collect()
        };
        let (x, gate_up, down) = (f(t * h, 0.0), f(e * 2 * i * h, 1.0), f(e * h * i, 2.0));
        let experts = vec![0u32, 2, 1, 2, 2, 0, 1, 0, 0, 1];
        let weights = f(t * k, 3.0);
        let perm = permute_by_expert(&experts, e);
        let xs = gather_rows(&x, h, &perm.order, k);
        let w = ExpertWeights {
            gate_up: &gate_up,
            down: &down,
            hidden: h,
            inter: i,
            gate_up_bias: None,
            down_bias: None,
        };
        let y = grouped_swiglu(&xs, &perm.offsets, w);
        let got = combine(&y, &perm.order, &weights, k, h);
        for tok in 0..t {
            let mut want = vec![0.0f32; h];
            for j in 0..k {
                let ex = experts[tok * k + j] as usize;
                let xr = &x[tok * h..][..h];
                let gu = &gate_up[ex * 2 * i * h..];
                let act: Vec<f32> = (0..i)
                    .map(|r| {
                        let g: f32 = (0..h).map(|c| gu[r * h + c] * xr[c]).sum();
                        let u: f32 = (0..h).map(|c| gu[(i + r) * h + c] * xr[c]).sum();
                        silu(g) * u
                    })
                    .collect();
                for c in 0..h {
                    let d: f32 = (0..i).map(|r| down[ex * h * i + c * i + r] * act[r]).sum();
                    want[c] += weights[tok * k + j] * d;
                }
            }
            for c in 0..h {
                assert!((got[tok * h + c] - want[c]).abs() < 1e-5);
            }
        }
    }
}
