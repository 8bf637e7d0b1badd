//! Where forward steps run. The driver builds [`StepBatch`]es; an executor runs them on the
//! ranks that hold the model (one local rank here; the parallel layouts add more).

use crate::config::ModelConfig;
use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::model::{Model, StepBatch, StepOutput};
use crate::parallel::RankContext;

/// Runs forward steps over block tables the driver allocated.
pub trait Executor: Send {
    /// The model's config.
    fn config(&self) -> &ModelConfig;
    /// Blocks of KV storage every rank has (the driver's allocator hands out ids below this).
    fn num_blocks(&self) -> usize;
    /// Slots per block.
    fn block_size(&self) -> usize;
    /// One forward pass of the batch.
    fn step(&mut self, batch: &StepBatch) -> Result<StepOutput>;
}

/// The whole model on one rank, in the calling thread: the world of one, through the same
/// per-rank forward as every parallel layout.
#[derive(Debug)]
pub struct LocalExecutor {
    model: Model,
    cache: KvCache,
    ctx: RankContext,
}

impl LocalExecutor {
    /// `model` with a cache of `num_blocks` blocks of `block_size` slots.
    pub fn new(model: Model, num_blocks: usize, block_size: usize) -> Self {
        Self::try_new(model, num_blocks, block_size).expect("allocating the KV cache")
    }

    /// [`Self::new`], failing instead of panicking when the cache does not fit the model's device.
    pub fn try_new(model: Model, num_blocks: usize, block_size: usize) -> Result<Self> {
        let cache = model.try_new_cache(num_blocks, block_size)?;
        Ok(Self {
            model,
            cache,
            ctx: RankContext::single(),
        })
    }
}

impl Executor for LocalExecutor {
    fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    fn num_blocks(&self) -> usize {
        self.cache.num_blocks()
    }

    fn block_size(&self) -> usize {
        self.cache.block_size()
    }

    fn step(&mut self, batch: &StepBatch) -> Result<StepOutput> {
        let cfg = self.model.config();
        let out = self.model.forward_rank(batch, &mut self.cache, &self.ctx)?;
        StepOutput::assemble(
            vec![out],
            batch.logit_rows.len(),
            cfg.vocab_size,
            cfg.num_layers,
            1,
            0,
        )
    }
}
