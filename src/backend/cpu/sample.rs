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

/// Samples a token; `uniform` is a draw from [0, 1) (the caller owns the seeded generator).
pub fn sample(logits: &[f32], p: &SamplingParams, uniform: f32) -> u32 {
    if p.temperature <= 0.0 {
        return argmax(logits);
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if p.top_k > 0 {
        idx.truncate(p.top_k);
    }
    let max = logits[idx[0]];
    let mut probs: Vec<f32> = idx
        .iter()
        .map(|&i| ((logits[i] - max) / p.temperature).exp())
        .collect();
    let total: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|q| *q /= total);
    let mut keep = probs.len();
    let mut acc = 0.0;
    for (n, q) in probs.iter().enumerate() {
        acc += q;
        if acc >= p.top_p {
            keep = n + 1;
            break;
        }
    }
    let mass: f32 = probs[..keep].iter().sum();
    let mut target = uniform * mass;
    for n in 0..keep {
        target -= probs[n];
        if target < 0.0 {
            return idx[n] as u32;
        }
    }
    idx[keep - 1] as u32
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
}
