//! Scaled dot-product attention (Vaswani et al. 2017) over a paged KV cache, causal, with
//! grouped-query heads (Ainslie et al. 2023) and an optional sliding window.

use rayon::prelude::*;

/// One query token: which sequence it belongs to and its position in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryPos {
    /// Index into the block tables.
    pub seq: usize,
    /// Absolute position (keys 0..=pos are visible).
    pub pos: usize,
}

/// A paged cache of one layer: `slots` rows of `width` values, `block_size` rows per block.
#[derive(Debug, Clone, Copy)]
pub struct PagedCache<'a> {
    /// Row-major [num_slots, width].
    pub data: &'a [f32],
    /// Values per slot.
    pub width: usize,
    /// Slots per block.
    pub block_size: usize,
}

/// The slot of position `pos` of a sequence with block table `blocks`.
pub fn cache_slot(blocks: &[u32], block_size: usize, pos: usize) -> usize {
    blocks[pos / block_size] as usize * block_size + pos % block_size
}

/// The head geometry of an attention call.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (each serves n_heads / n_kv_heads query heads).
    pub n_kv_heads: usize,
    /// Per-head q/k dim.
    pub qk_dim: usize,
    /// Per-head v dim.
    pub v_dim: usize,
    /// Logit scale (usually 1/sqrt(qk_dim)).
    pub scale: f32,
    /// Keys at most this many positions back are visible (None: all).
    pub window: Option<usize>,
}

/// `q` is [T, n_heads·qk_dim]; keys and values for every visible position are already in the
/// caches. Returns [T, n_heads·v_dim].
pub fn paged_attention(
    q: &[f32],
    queries: &[QueryPos],
    tables: &[&[u32]],
    keys: PagedCache,
    values: PagedCache,
    h: Heads,
) -> Vec<f32> {
    let group = h.n_heads / h.n_kv_heads;
    let mut out = vec![0.0f32; queries.len() * h.n_heads * h.v_dim];
    out.par_chunks_mut(h.v_dim)
        .enumerate()
        .for_each(|(row, o)| {
            let (t, head) = (row / h.n_heads, row % h.n_heads);
            let QueryPos { seq, pos } = queries[t];
            let kv = head / group;
            let qv = &q[(t * h.n_heads + head) * h.qk_dim..][..h.qk_dim];
            let first = h.window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let blocks = tables[seq];
            let scores: Vec<f32> = (first..=pos)
                .map(|p| {
                    let slot = cache_slot(blocks, keys.block_size, p);
                    let k = &keys.data[slot * keys.width + kv * h.qk_dim..][..h.qk_dim];
                    qv.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * h.scale
                })
                .collect();
            let probs = softmax(&scores);
            for (p, w) in (first..=pos).zip(probs) {
                let slot = cache_slot(blocks, values.block_size, p);
                let v = &values.data[slot * values.width + kv * h.v_dim..][..h.v_dim];
                for (oi, vi) in o.iter_mut().zip(v) {
                    *oi += w * vi;
                }
            }
        });
    out
}

/// Numerically stable softmax.
pub fn softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = x.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dense causal attention on contiguous K/V, the textbook form.
    fn naive(q: &[f32], k: &[f32], v: &[f32], t: usize, d: usize, window: usize) -> Vec<f32> {
        let mut out = vec![0.0; t * d];
        for i in 0..t {
            let js: Vec<usize> = (0..=i).filter(|j| i - j < window).collect();
            let s: Vec<f32> = js
                .iter()
                .map(|&j| {
                    (0..d).map(|c| q[i * d + c] * k[j * d + c]).sum::<f32>() / (d as f32).sqrt()
                })
                .collect();
            let p = softmax(&s);
            for (&j, w) in js.iter().zip(p) {
                for c in 0..d {
                    out[i * d + c] += w * v[j * d + c];
                }
            }
        }
        out
    }

    #[test]
    fn paged_equals_contiguous_with_scattered_blocks_and_window() {
        let (t, d, bs) = (7, 4, 2);
        let blocks = [3u32, 0, 5, 1];
        let q: Vec<f32> = (0..t * d).map(|i| (i as f32 * 0.37).sin()).collect();
        let k: Vec<f32> = (0..t * d).map(|i| (i as f32 * 0.11).cos()).collect();
        let v: Vec<f32> = (0..t * d).map(|i| (i as f32 * 0.23).sin()).collect();
        let mut kc = vec![f32::NAN; 6 * bs * d];
        let mut vc = vec![f32::NAN; 6 * bs * d];
        for p in 0..t {
            let s = cache_slot(&blocks, bs, p);
            kc[s * d..][..d].copy_from_slice(&k[p * d..][..d]);
            vc[s * d..][..d].copy_from_slice(&v[p * d..][..d]);
        }
        for window in [None, Some(3)] {
            let queries: Vec<QueryPos> = (0..t).map(|pos| QueryPos { seq: 0, pos }).collect();
            let heads = Heads {
                n_heads: 1,
                n_kv_heads: 1,
                qk_dim: d,
                v_dim: d,
                scale: 1.0 / 2.0,
                window,
            };
            let got = paged_attention(
                &q,
                &queries,
                &[&blocks],
                PagedCache {
                    data: &kc,
                    width: d,
                    block_size: bs,
                },
                PagedCache {
                    data: &vc,
                    width: d,
                    block_size: bs,
                },
                heads,
            );
            let want = naive(&q, &k, &v, t, d, window.unwrap_or(usize::MAX));
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-5, "{window:?}: {g} vs {w}");
            }
        }
    }
}
