//! Choosing the executor a layout needs: the model in this thread for one rank, rank threads
//! otherwise.

use super::{ParallelExecutor, ParallelPlan};
use crate::engine::{Executor, LocalExecutor};
use crate::error::Result;
use crate::model::{Model, ModelSource};

/// Loads the model from `source` onto the ranks of `plan`, each with `num_blocks` KV blocks of
/// `block_size` slots.
pub fn build_executor(source: &ModelSource, plan: &ParallelPlan, num_blocks: usize, block_size: usize) -> Result<Box<dyn Executor>> {
    let (config, weights) = source.weights()?;
    plan.validate(&config)?;
    if plan.grid.world() == 1 {
        let model = Model::load(&config, weights.as_ref())?;
        return Ok(Box::new(LocalExecutor::new(model, num_blocks, block_size)));
    }
    Ok(Box::new(ParallelExecutor::new(&config, weights, plan, num_blocks, block_size)?))
}
