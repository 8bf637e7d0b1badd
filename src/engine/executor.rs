//! Where forward steps run. The driver builds [`StepBatch`]es; an executor runs them on the
//! ranks that hold the model (one local rank here; the parallel layouts add more).

use crate::config::ModelConfig;
use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::model::{Model, StepBatch, StepOutput};

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

/// The whole model on one rank of this process.
#[derive(Debug)]
pub struct LocalExecutor {
    model: Model,
    cache: KvCache,
}

impl LocalExecutor {
    /// `model` with a cache of `num_blocks` blocks of `block_size` slots.
    pub fn new(model: Model, num_blocks: usize, block_size: usize) -> Self {
        let cache = model.new_cache(num_blocks, block_size);
        Self { model, cache }
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
        self.model.forward(batch, &mut self.cache)
    }
}
