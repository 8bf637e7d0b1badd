//! Single-sequence scoring and generation over the paged cache: prefill once, then decode one
//! token per step from the cache.

use super::executor::{Executor, LocalExecutor};
use super::Sequence;
use crate::backend::cpu::sample::{RowDraw, SamplingParams};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::kv_cache::BlockAllocator;
use crate::model::{Model, StepBatch};
use crate::ops;
use crate::tensor::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// An executor with the block allocator that places sequences in its cache.
pub struct Engine {
    executor: Box<dyn Executor>,
    allocator: BlockAllocator,
}

/// How to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// New tokens at most.
    pub max_tokens: usize,
    /// Temperature / top-p / top-k.
    pub sampling: SamplingParams,
    /// Seed of the sampler.
    pub seed: u64,
    /// Keep going past end-of-sequence tokens.
    pub ignore_eos: bool,
}

/// What generation produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The new tokens.
    pub tokens: Vec<u32>,
    /// Top-1 minus top-2 logit at each step (how decisive each pick was).
    pub margins: Vec<f32>,
    /// Whether an end-of-sequence token stopped generation.
    pub stopped_at_eos: bool,
}

impl Engine {
    /// One local rank whose cache holds `cache_tokens` tokens in blocks of `block_size`.
    pub fn new(model: Model, cache_tokens: usize, block_size: usize) -> Self {
        let num_blocks = cache_tokens.div_ceil(block_size);
        Self::with_executor(Box::new(LocalExecutor::new(model, num_blocks, block_size)))
    }

    /// An engine over any executor.
    pub fn with_executor(executor: Box<dyn Executor>) -> Self {
        let allocator = BlockAllocator::new(executor.num_blocks(), executor.block_size());
        Self {
            executor,
            allocator,
        }
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        self.executor.config()
    }

    /// Blocks of the cache in use (0 when no sequence is alive).
    pub fn used_blocks(&self) -> usize {
        self.allocator.used_blocks()
    }

    fn check_prompt(&self, prompt: &[u32], extra: usize) -> Result<()> {
        let cfg = self.executor.config();
        if prompt.is_empty() {
            return Err(Error::Input("the prompt is empty".into()));
        }
        crate::ops::check_token_ids(prompt, cfg.vocab_size)?;
        let total = prompt.len() + extra;
        if total > cfg.max_position_embeddings {
            return Err(Error::Input(format!(
                "prompt ({}) + new tokens ({extra}) = {total} exceeds the context length {}",
                prompt.len(),
                cfg.max_position_embeddings
            )));
        }
        Ok(())
    }

    /// Runs the sequence's uncached tokens as one step; returns the logits of all of them
    /// (`all_logits`) or of the last, on the device that computed them.
    fn step(&mut self, seq: &mut Sequence, all_logits: bool) -> Result<Tensor> {
        seq.table.reserve(seq.tokens.len())?;
        let mut batch = StepBatch::default();
        batch.push_sequence(
            seq.uncached(),
            seq.cached,
            seq.table.blocks().to_vec(),
            all_logits,
        );
        let out = self.executor.step(&batch)?;
        seq.cached = seq.tokens.len();
        Ok(out.logits)
    }

    /// Logits at every prompt position ([len, vocab]).
    pub fn score(&mut self, prompt: &[u32]) -> Result<Tensor> {
        self.check_prompt(prompt, 0)?;
        let mut seq = Sequence::new(prompt.to_vec(), &self.allocator);
        self.step(&mut seq, true)?.into_cpu()
    }

    /// Prefills `prompt`, then decodes up to `max_tokens` tokens one step at a time.
    pub fn generate(&mut self, prompt: &[u32], opts: &GenerateOptions) -> Result<Generation> {
        self.check_prompt(prompt, opts.max_tokens)?;
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        let mut seq = Sequence::new(prompt.to_vec(), &self.allocator);
        let mut out = Generation {
            tokens: Vec::new(),
            margins: Vec::new(),
            stopped_at_eos: false,
        };
        while out.tokens.len() < opts.max_tokens {
            let logits = self.step(&mut seq, false)?;
            let uniform = rng.random::<f32>();
            // Picks where the logits are: on a GPU only the token and the greedy margin come
            // back, for sampled steps too (the draw uses this host generator's uniform).
            let (greedy, margin) = ops::greedy_rows(&logits)?[0];
            let next = if opts.sampling.temperature <= 0.0 {
                greedy
            } else {
                let draw = RowDraw {
                    row: 0,
                    params: opts.sampling,
                    uniform,
                };
                ops::sample_rows(&logits, &[draw])?[0]
            };
            out.tokens.push(next);
            out.margins.push(margin);
            seq.tokens.push(next);
            if !opts.ignore_eos && self.executor.config().eos_token_ids.contains(&next) {
                out.stopped_at_eos = true;
                break;
            }
        }
        Ok(out)
    }
}
