//! A request inside the engine: its tokens, its cache blocks, its sampler and the channel its
//! tokens go out on.

use super::request::{Event, FinishReason, GeneratedToken, GenerationRequest, SamplingConfig};
use super::sampler::{Need, Pick, Sampler};
use crate::kv_cache::{BlockAllocator, BlockTable};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// One sequence being served.
#[derive(Debug)]
pub struct ServeSequence {
    /// Prompt then generated tokens.
    pub tokens: Vec<u32>,
    /// Prompt tokens (the first `prompt_len` of `tokens`).
    pub prompt_len: usize,
    /// Tokens whose keys/values are in the cache.
    pub cached: usize,
    /// The cache blocks (back to the pool on drop or preemption).
    pub table: BlockTable,
    /// How to sample and when to stop.
    pub sampling: SamplingConfig,
    sampler: Sampler,
    events: UnboundedSender<Event>,
    arrived: Instant,
    first_token: Option<Instant>,
    admitted: bool,
}

/// What happened to a sequence when it got a token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Advance {
    /// Time to first token, when this was the first.
    pub ttft: Option<Duration>,
    /// Set when the sequence is done: why, and its mean time per output token (None for a
    /// single-token answer).
    pub finished: Option<(FinishReason, Option<Duration>)>,
    /// The receiver is gone (the client left): drop the sequence.
    pub cancelled: bool,
}

impl ServeSequence {
    /// A new sequence that allocates from `allocator` and answers on `events`.
    pub fn new(
        req: GenerationRequest,
        allocator: &BlockAllocator,
        events: UnboundedSender<Event>,
        arrived: Instant,
    ) -> Self {
        let sampler = Sampler::new(req.sampling.seed);
        Self {
            prompt_len: req.prompt.len(),
            tokens: req.prompt,
            cached: 0,
            table: allocator.new_table(),
            sampling: req.sampling,
            sampler,
            events,
            arrived,
            first_token: None,
            admitted: false,
        }
    }

    /// Tokens not yet in the cache.
    pub fn uncached(&self) -> usize {
        self.tokens.len() - self.cached
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Whether the client dropped its receiver.
    pub fn is_cancelled(&self) -> bool {
        self.events.is_closed()
    }

    /// For a sequence with no blocks (new, or preempted): shares the cached blocks that hold
    /// its first tokens and counts them as cached; returns how many. The last token is always
    /// left to compute, as its logits pick the next one.
    pub fn share_cached_prefix(&mut self) -> usize {
        if !self.table.blocks().is_empty() {
            return 0;
        }
        let last = self.tokens.len().saturating_sub(1);
        self.cached = self.table.share_prefix(&self.tokens[..last]);
        self.cached
    }

    /// Marks the sequence admitted with `cached` of its tokens found in the prefix cache; the
    /// first admission tells the client (a preempted sequence's later ones do not).
    pub fn admitted(&mut self, cached: usize) {
        if !std::mem::replace(&mut self.admitted, true) {
            let _ = self.events.send(Event::Cached(cached));
        }
    }

    /// Gives the blocks back; the whole sequence (prompt and generated tokens) is recomputed
    /// when it is scheduled again, but for the blocks still cached then.
    pub fn preempt(&mut self, allocator: &BlockAllocator) {
        self.table = allocator.new_table();
        self.cached = 0;
    }

    /// Tells the client the request failed.
    pub fn fail(&self, why: &str) {
        let _ = self.events.send(Event::Failed(why.to_string()));
    }

    /// What picking this sequence's next token needs of its logits row (see [`Sampler::need`]).
    pub fn need(&self, eos: &[u32]) -> Need {
        self.sampler.need(&self.sampling, eos, self.generated())
    }

    /// Samples the next token from the logits of the last cached token (or takes the token picked
    /// on the device), sends it, and says whether the sequence is done.
    pub fn advance(&mut self, pick: Pick<'_>, eos: &[u32], now: Instant) -> Advance {
        let (id, logprob) = match pick {
            Pick::Row(logits) => self
                .sampler
                .pick(logits, &self.sampling, eos, self.generated()),
            Pick::Token(token) => self.sampler.take(token),
        };
        self.tokens.push(id);
        let ttft = match self.first_token {
            None => {
                self.first_token = Some(now);
                Some(now - self.arrived)
            }
            Some(_) => None,
        };
        let mut cancelled = self
            .events
            .send(Event::Token(GeneratedToken { id, logprob }))
            .is_err();
        let reason = if !self.sampling.ignore_eos && eos.contains(&id) {
            Some(FinishReason::EndOfSequence)
        } else if self.generated() >= self.sampling.max_tokens {
            Some(FinishReason::Length)
        } else {
            None
        };
        let finished = reason.map(|r| {
            cancelled |= self.events.send(Event::Finished(r)).is_err();
            let n = self.generated() as u32;
            let tpot = self
                .first_token
                .filter(|_| n > 1)
                .map(|first| (now - first) / (n - 1));
            (r, tpot)
        });
        Advance {
            ttft,
            finished,
            cancelled,
        }
    }
}
