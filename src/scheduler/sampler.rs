//! Picking a sequence's next token from its logits row: penalties, end-of-sequence
//! suppression (min_tokens), then greedy or seeded sampling, and the log-probabilities.

use super::request::{SamplingConfig, TokenLogprob};
use crate::backend::cpu::sample::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// The per-sequence sampling state: the seeded generator and the counts of generated tokens.
#[derive(Debug, Clone)]
pub struct Sampler {
    rng: ChaCha8Rng,
    counts: HashMap<u32, u32>,
}

/// log-softmax of one value given the row's max and log-sum-exp.
fn log_prob(v: f32, max: f32, lse: f32) -> f32 {
    v - max - lse
}

impl Sampler {
    /// A sampler seeded like [`Engine::generate`](crate::engine::Engine::generate), so a seeded
    /// request draws the same tokens as `switchyard generate --seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            counts: HashMap::new(),
        }
    }

    /// Picks the next token; `generated` is how many tokens the sequence has generated so far.
    pub fn pick(
        &mut self,
        logits: &[f32],
        cfg: &SamplingConfig,
        eos: &[u32],
        generated: usize,
    ) -> (u32, Option<TokenLogprob>) {
        let penalize = cfg.presence_penalty != 0.0 || cfg.frequency_penalty != 0.0;
        let suppress_eos = !cfg.ignore_eos && generated < cfg.min_tokens && !eos.is_empty();
        let mut adjusted;
        let row = if penalize || suppress_eos {
            adjusted = logits.to_vec();
            for (&t, &n) in &self.counts {
                if let Some(v) = adjusted.get_mut(t as usize) {
                    *v -= cfg.presence_penalty + cfg.frequency_penalty * n as f32;
                }
            }
            if suppress_eos {
                for &t in eos {
                    if let Some(v) = adjusted.get_mut(t as usize) {
                        *v = f32::NEG_INFINITY;
                    }
                }
            }
            &adjusted[..]
        } else {
            logits
        };
        let token = sample(row, &cfg.params, self.rng.random::<f32>());
        *self.counts.entry(token).or_default() += 1;
        (token, cfg.logprobs.map(|k| logprobs(logits, token, k)))
    }
}

/// The chosen token's log-probability and the `k` best alternatives.
fn logprobs(logits: &[f32], token: u32, k: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = logits.iter().map(|&v| (v - max).exp()).sum::<f32>().ln();
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k);
    if k > 0 {
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let k = k.min(idx.len());
        let by_logit = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        idx.select_nth_unstable_by(k - 1, by_logit);
        idx.truncate(k);
        idx.sort_by(by_logit);
        top = idx
            .into_iter()
            .map(|t| (t, log_prob(logits[t as usize], max, lse)))
            .collect();
    }
    TokenLogprob {
        logprob: log_prob(logits[token as usize], max, lse),
        top,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::sample::SamplingParams;

    #[test]
    fn penalties_and_min_tokens_change_the_greedy_pick() {
        let logits = [1.0, 3.0, 2.5, 0.0];
        let mut cfg = SamplingConfig {
            presence_penalty: 1.0,
            ..Default::default()
        };
        let mut s = Sampler::new(0);
        assert_eq!(s.pick(&logits, &cfg, &[], 0).0, 1);
        assert_eq!(
            s.pick(&logits, &cfg, &[], 1).0,
            2,
            "token 1 was penalised below token 2"
        );
        cfg = SamplingConfig {
            min_tokens: 2,
            ..Default::default()
        };
        assert_eq!(
            Sampler::new(0).pick(&logits, &cfg, &[1], 0).0,
            2,
            "eos suppressed before min_tokens"
        );
        assert_eq!(Sampler::new(0).pick(&logits, &cfg, &[1], 2).0, 1);
    }

    #[test]
    fn logprobs_are_normalised_and_sorted() {
        let cfg = SamplingConfig {
            logprobs: Some(2),
            params: SamplingParams::default(),
            ..Default::default()
        };
        let (t, lp) = Sampler::new(0).pick(&[0.0, 2.0, 1.0], &cfg, &[], 0);
        let lp = lp.unwrap();
        assert_eq!(t, 1);
        assert_eq!(lp.top.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2]);
        let total: f32 = [0.0f32, 2.0, 1.0].iter().map(|v| (v - 2.0f32).exp()).sum();
        assert!((lp.logprob - (1.0 / total).ln()).abs() < 1e-6);
    }
}
