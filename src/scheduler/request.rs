//! What a client asks the engine for and what it gets back.

use crate::backend::cpu::sample::SamplingParams;

/// How to pick tokens and when to stop (stop strings are text and stay with the server).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// Temperature (0: greedy), top-p, top-k.
    pub params: SamplingParams,
    /// Seed of the request's sampler.
    pub seed: u64,
    /// New tokens at most.
    pub max_tokens: usize,
    /// End-of-sequence tokens are suppressed until this many tokens are generated.
    pub min_tokens: usize,
    /// Keep going past end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Subtracted from the logit of every token generated at least once.
    pub presence_penalty: f32,
    /// Subtracted from the logit of every token once per time it was generated.
    pub frequency_penalty: f32,
    /// Report the chosen token's log-probability and this many top alternatives.
    pub logprobs: Option<usize>,
    /// Added to these tokens' logits before the pick (OpenAI's `logit_bias`).
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            params: SamplingParams::default(),
            seed: 0,
            max_tokens: 16,
            min_tokens: 0,
            ignore_eos: false,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logprobs: None,
            logit_bias: Vec::new(),
        }
    }
}

/// One sequence to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    /// Prompt token ids (validated against the vocabulary and the context by the caller).
    pub prompt: Vec<u32>,
    /// How to sample.
    pub sampling: SamplingConfig,
}

/// Log-probabilities of a generated token (from the model's distribution, before penalties
/// and temperature).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// log p(chosen token).
    pub logprob: f32,
    /// The most likely tokens and their log-probabilities, best first.
    pub top: Vec<(u32, f32)>,
}

/// A generated token.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedToken {
    /// Its id.
    pub id: u32,
    /// Its log-probabilities, when asked for.
    pub logprob: Option<TokenLogprob>,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// max_tokens reached.
    Length,
    /// An end-of-sequence token was generated (it is the last token sent).
    EndOfSequence,
}

/// What the engine sends a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// How many of the prompt's tokens were found in the prefix cache (not computed again);
    /// sent once, when the sequence is first admitted, before its first token.
    Cached(usize),
    /// The next token.
    Token(GeneratedToken),
    /// Generation ended; nothing follows.
    Finished(FinishReason),
    /// The engine could not run the request (a failed step, shutdown); nothing follows.
    Failed(String),
}
