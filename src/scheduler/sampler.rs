//! Picking a sequence's next token from its logits row: logit biases, penalties,
//! end-of-sequence suppression (min_tokens), then greedy or seeded sampling, and the
//! log-probabilities.

use super::request::{SamplingConfig, TokenLogprob};
use crate::backend::cpu::sample::{sample, RowDraw, SamplingParams};
use crate::error::Result;
use crate::ops;
use crate::tensor::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::borrow::Cow;
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

    /// What [`Self::pick`] needs of this step's logits row: the whole row on the host for
    /// penalties, end-of-sequence suppression and log-probabilities; for a plain temperature /
    /// top-k / top-p draw only the parameters and the uniform this step's pick draws (peeked from
    /// a copy of the generator, so the draw itself still happens once, in [`Self::pick`] or
    /// [`Self::take`]); for a plain greedy pick nothing. [`StepLogits`] decides from this where
    /// the row is picked.
    pub fn need(&self, cfg: &SamplingConfig, eos: &[u32], generated: usize) -> Need {
        let (penalize, suppress_eos) = adjustments(cfg, eos, generated);
        if penalize || suppress_eos || cfg.logprobs.is_some() {
            Need::Row
        } else if cfg.params.temperature > 0.0 {
            Need::Draw(cfg.params, self.rng.clone().random::<f32>())
        } else {
            Need::Greedy
        }
    }

    /// Takes a pick made elsewhere (on the device that holds the logits) for a row that did not
    /// need the host: the same state changes as [`Self::pick`] (one uniform draw, the token's
    /// count), so the sequence's generator stream does not depend on where its rows were picked.
    pub fn take(&mut self, token: u32) -> (u32, Option<TokenLogprob>) {
        let _drawn: f32 = self.rng.random();
        *self.counts.entry(token).or_default() += 1;
        (token, None)
    }

    /// Picks the next token; `generated` is how many tokens the sequence has generated so far.
    pub fn pick(
        &mut self,
        logits: &[f32],
        cfg: &SamplingConfig,
        eos: &[u32],
        generated: usize,
    ) -> (u32, Option<TokenLogprob>) {
        let (penalize, suppress_eos) = adjustments(cfg, eos, generated);
        let mut adjusted;
        let row = if penalize || suppress_eos {
            adjusted = logits.to_vec();
            for &(t, b) in &cfg.logit_bias {
                if let Some(v) = adjusted.get_mut(t as usize) {
                    *v += b;
                }
            }
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

/// Whether a pick applies biases or penalties, and whether it suppresses end-of-sequence
/// tokens.
fn adjustments(cfg: &SamplingConfig, eos: &[u32], generated: usize) -> (bool, bool) {
    let penalize =
        cfg.presence_penalty != 0.0 || cfg.frequency_penalty != 0.0 || !cfg.logit_bias.is_empty();
    let suppress_eos = !cfg.ignore_eos && generated < cfg.min_tokens && !eos.is_empty();
    (penalize, suppress_eos)
}

/// What a sequence's pick needs of a step's logits row (see [`Sampler::need`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Need {
    /// The greedy pick only.
    Greedy,
    /// A plain draw with these parameters and this uniform (temperature > 0).
    Draw(SamplingParams, f32),
    /// The whole row (penalties, end-of-sequence suppression, log-probabilities).
    Row,
}

/// What a sequence's sampler gets from the step for its logits row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pick<'a> {
    /// The row on the host: the sampler picks from it.
    Row(&'a [f32]),
    /// The row's token, picked (greedily or by the row's draw) on the device that holds the
    /// logits.
    Token(u32),
}

/// A step's logits as the samplers read them; the one place that decides where a row is picked.
/// Host logits are read in place. Logits on a GPU stay there: one launch picks the greedy rows,
/// one samples the rows that draw, and only their token ids come back, plus the few rows whose
/// sequences need the whole row (penalties, logprobs), gathered on the device.
#[derive(Debug)]
pub struct StepLogits<'a> {
    host: Cow<'a, Tensor>,
    /// Per logits row: its row in `host`, when it is there.
    slot: Vec<Option<usize>>,
    /// Per logits row: its token when it was picked on the device (logits on a GPU only).
    token: Vec<u32>,
}

impl<'a> StepLogits<'a> {
    /// `logits` is [rows, vocab]; `needs[r]` says what row r's sampler needs (a missing entry
    /// means the whole row).
    pub fn new(logits: &'a Tensor, needs: &[Need]) -> Result<Self> {
        let rows = logits.dims().first().copied().unwrap_or(0);
        if !logits.is_cuda() {
            return Ok(Self {
                host: Cow::Borrowed(logits),
                slot: (0..rows).map(Some).collect(),
                token: Vec::new(),
            });
        }
        let need = |r: usize| needs.get(r).copied().unwrap_or(Need::Row);
        let mut token = vec![0; rows];
        if (0..rows).any(|r| need(r) == Need::Greedy) {
            for (t, p) in token.iter_mut().zip(ops::greedy_rows(logits)?) {
                *t = p.0;
            }
        }
        let draws: Vec<RowDraw> = (0..rows)
            .filter_map(|row| match need(row) {
                Need::Draw(params, uniform) => Some(RowDraw {
                    row,
                    params,
                    uniform,
                }),
                _ => None,
            })
            .collect();
        for (d, t) in draws.iter().zip(ops::sample_rows(logits, &draws)?) {
            token[d.row] = t;
        }
        let wanted: Vec<u32> = (0..rows)
            .filter(|&r| need(r) == Need::Row)
            .map(|r| r as u32)
            .collect();
        let mut slot = vec![None; rows];
        for (k, &r) in wanted.iter().enumerate() {
            slot[r as usize] = Some(k);
        }
        let host = if wanted.is_empty() {
            Tensor::from_f32([0, logits.dims()[1]], Vec::new())?
        } else {
            ops::gather_rows(logits, &wanted, 1)?.into_cpu()?
        };
        Ok(Self {
            host: Cow::Owned(host),
            slot,
            token,
        })
    }

    /// Row `r`'s part: the row on the host, or its token picked on the device.
    pub fn pick(&self, r: usize) -> Pick<'_> {
        match self.slot[r] {
            Some(k) => Pick::Row(self.host.row(k)),
            None => Pick::Token(self.token[r]),
        }
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
    fn host_logits_are_read_in_place_and_needs_follow_the_config() {
        let x = Tensor::from_f32([2, 3], vec![0.0, 2.0, 1.0, 5.0, 4.0, 3.0]).unwrap();
        let l = StepLogits::new(&x, &[Need::Greedy, Need::Row]).unwrap();
        assert_eq!(l.pick(0), Pick::Row(&[0.0, 2.0, 1.0][..]));
        assert_eq!(l.pick(1), Pick::Row(&[5.0, 4.0, 3.0][..]));
        let s = Sampler::new(9);
        let greedy = SamplingConfig::default();
        assert_eq!(s.need(&greedy, &[1], 0), Need::Greedy);
        let min = SamplingConfig {
            min_tokens: 1,
            ..Default::default()
        };
        assert_eq!(s.need(&min, &[1], 0), Need::Row);
        assert_eq!(s.need(&min, &[1], 1), Need::Greedy);
        let lp = SamplingConfig {
            logprobs: Some(0),
            ..Default::default()
        };
        assert_eq!(s.need(&lp, &[], 0), Need::Row);
        let hot = SamplingConfig {
            params: SamplingParams {
                temperature: 0.7,
                top_p: 0.9,
                top_k: 20,
            },
            ..Default::default()
        };
        let penalized = SamplingConfig {
            presence_penalty: 0.5,
            ..hot.clone()
        };
        assert_eq!(s.need(&penalized, &[], 0), Need::Row);
        // A draw's uniform is the one the host pick would draw, and taking a token picked
        // elsewhere moves the generator as a host pick does.
        let (mut a, mut b) = (Sampler::new(9), Sampler::new(9));
        let Need::Draw(params, u) = a.need(&hot, &[], 0) else {
            panic!("a plain temperature draw needs no row")
        };
        assert_eq!(params, hot.params);
        assert_eq!(u, Sampler::new(9).rng.random::<f32>());
        let row = [0.0, 2.0, 1.0];
        let host = b.pick(&row, &hot, &[], 0);
        assert_eq!(host.0, sample(&row, &params, u));
        assert_eq!(a.take(host.0), host);
        assert_eq!(a.rng.random::<u64>(), b.rng.random::<u64>());
        assert_eq!(a.take(1), b.pick(&row, &greedy, &[], 1));
        assert_eq!(a.rng.random::<u64>(), b.rng.random::<u64>());
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
