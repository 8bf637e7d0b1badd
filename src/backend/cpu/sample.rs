//! Picking the next token from logits: greedy, or temperature / top-k / top-p sampling.

/// Index of the largest logit (the first one on ties, as torch.argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Difference between the largest and second largest logit (how decisive greedy was).
pub fn top2_margin(logits: &[f32]) -> f32 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in logits {
        if v > a {
            b = a;
            a = v;
        } else if v > b {
            b = v;
        }
    }
    a - b
}

/// How to sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability reaches top_p (1: all).
    pub top_p: f32,
    /// Keep the k most likely tokens (0: all).
    pub top_k: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
        }
    }
}

/// One row's draw in a batch of logits rows: which row, how to sample it, and the uniform the
/// row's sequence drew for this step (the generator stays on the host; see `scheduler::Sampler`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowDraw {
    /// The logits row.
    pub row: usize,
    /// Temperature, top-k, top-p.
    pub params: SamplingParams,
    /// A draw from [0, 1).
    pub uniform: f32,
}

/// Samples a token; `uniform` is a draw from [0, 1) (the caller owns the seeded generator).
///
/// Tokens are taken in descending order of logit (ties: the lower id first); top-k keeps the first
/// k, softmax(logits / temperature) is normalised over what is kept, top-p keeps the shortest
/// prefix whose probability reaches `top_p` (`top_p >= 1`: all), and `uniform` times that
/// prefix's mass picks the token where the running sum passes it. Only as much of the order as
/// the draw needs is sorted (usually a few dozen tokens of a 32k vocabulary, not all of them).
pub fn sample(logits: &[f32], p: &SamplingParams, uniform: f32) -> u32 {
    if p.temperature <= 0.0 {
        return argmax(logits);
    }
    let mut order = Descending::new(logits);
    let kept = if p.top_k > 0 {
        p.top_k.min(logits.len())
    } else {
        logits.len()
    };
    let max = logits[argmax(logits) as usize];
    let weight = |i: usize| ((logits[i] - max) / p.temperature).exp();
    let total: f32 = if kept < logits.len() {
        order.prefix(kept).iter().map(|&i| weight(i)).sum()
    } else {
        (0..logits.len()).map(weight).sum()
    };
    let prob = |i: usize| weight(i) / total;
    // The nucleus: the shortest prefix whose probability reaches top_p.
    let (keep, mass) = if p.top_p >= 1.0 {
        let mass = if kept < logits.len() {
            order.prefix(kept).iter().map(|&i| prob(i)).sum()
        } else {
            (0..logits.len()).map(prob).sum()
        };
        (kept, mass)
    } else {
        let mut acc = 0.0;
        let mut keep = kept;
        for n in 0..kept {
            acc += prob(order.nth(n));
            if acc >= p.top_p {
                keep = n + 1;
                break;
            }
        }
        (keep, acc)
    };
    let mut target = uniform * mass;
    for n in 0..keep {
        target -= prob(order.nth(n));
        if target < 0.0 {
            return order.nth(n) as u32;
        }
    }
    order.nth(keep - 1) as u32
}

/// Token ids in descending order of logit (ties: the lower id first), sorted lazily: each time
/// a position past the sorted prefix is asked for, the prefix grows (doubling) by a selection
/// of the rest and a sort of what was selected. The order is total, so the result is the order a
/// full sort gives.
struct Descending<'a> {
    logits: &'a [f32],
    ids: Vec<usize>,
    sorted: usize,
}

impl<'a> Descending<'a> {
    fn new(logits: &'a [f32]) -> Self {
        Self {
            logits,
            ids: (0..logits.len()).collect(),
            sorted: 0,
        }
    }

    /// The `n`-th id of the order (n < the vocabulary).
    fn nth(&mut self, n: usize) -> usize {
        if n >= self.sorted {
            self.prefix((2 * n).max(64));
        }
        self.ids[n]
    }

    /// The first `n` ids of the order (all of them if `n` is larger).
    fn prefix(&mut self, n: usize) -> &[usize] {
        let n = n.min(self.ids.len());
        if n > self.sorted {
            let logits = self.logits;
            let cmp = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
            let rest = &mut self.ids[self.sorted..];
            let want = n - self.sorted;
            if want < rest.len() {
                rest.select_nth_unstable_by(want - 1, cmp);
            }
            rest[..want].sort_unstable_by(cmp);
            self.sorted = n;
        }
        &self.ids[..n]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
        assert_eq!(top2_margin(&[1.0, 3.0, 2.5]), 0.5);
    }

    #[test]
    fn sampling_respects_top_k_and_the_uniform_draw() {
        let logits = [0.0, 2.0, 1.0, -5.0];
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 2,
        };
        assert_eq!(sample(&logits, &p, 0.0), 1);
        assert_eq!(sample(&logits, &p, 0.999), 2);
        let greedy = SamplingParams::default();
        assert_eq!(sample(&logits, &greedy, 0.7), 1);
        let nucleus = SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            top_k: 0,
        };
        assert_eq!(
            sample(&logits, &nucleus, 0.999),
            1,
            "top token alone has p > 0.5"
        );
    }

    /// The sampler's definition with a full sort up front: the lazy order must pick the same.
    fn sample_by_full_sort(logits: &[f32], p: &SamplingParams, uniform: f32) -> u32 {
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        let kept = if p.top_k > 0 {
            p.top_k.min(idx.len())
        } else {
            idx.len()
        };
        let max = logits[idx[0]];
        let w = |i: usize| ((logits[i] - max) / p.temperature).exp();
        let total: f32 = if kept < idx.len() {
            idx[..kept].iter().map(|&i| w(i)).sum()
        } else {
            (0..logits.len()).map(w).sum()
        };
        let probs: Vec<f32> = idx[..kept].iter().map(|&i| w(i) / total).collect();
        let (keep, mass) = if p.top_p >= 1.0 {
            let mass = if kept < idx.len() {
                probs.iter().sum()
            } else {
                (0..logits.len()).map(|i| w(i) / total).sum()
            };
            (kept, mass)
        } else {
            let mut acc = 0.0;
            let mut keep = kept;
            for (n, q) in probs.iter().enumerate() {
                acc += q;
                if acc >= p.top_p {
                    keep = n + 1;
                    break;
                }
            }
            (keep, acc)
        };
        let mut target = uniform * mass;
        for n in 0..keep {
            target -= probs[n];
            if target < 0.0 {
                return idx[n] as u32;
            }
        }
        idx[keep - 1] as u32
    }

    #[test]
    fn lazy_order_picks_what_a_full_sort_picks() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for vocab in [1, 2, 7, 100, 4000] {
            for case in 0..40 {
                // Peaked and flat rows, with ties (values on a coarse grid).
                let spread = if case % 2 == 0 { 8.0 } else { 0.5 };
                let logits: Vec<f32> = (0..vocab)
                    .map(|_| (rng.random::<f32>() * spread * 4.0).round() / 4.0)
                    .collect();
                let p = SamplingParams {
                    temperature: [0.3, 1.0, 1.7][case % 3],
                    top_p: [1.0, 0.9, 0.5, 0.99][case % 4],
                    top_k: [0, 0, 5, 50, 5000][case % 5],
                };
                for _ in 0..10 {
                    let u: f32 = rng.random();
                    assert_eq!(
                        sample(&logits, &p, u),
                        sample_by_full_sort(&logits, &p, u),
                        "vocab {vocab}, {p:?}, uniform {u}"
                    );
                }
            }
        }
    }
}
