//! Choosing the executor a layout needs: the model in this thread for one rank, rank threads
//! otherwise.

use super::{ParallelExecutor, ParallelPlan};
use crate::backend::Device;
use crate::engine::{Executor, LocalExecutor};
use crate::error::{Error, Result};
use crate::model::{Model, ModelSource};

/// Loads the model from `source` onto the ranks of `plan`, each with `num_blocks` KV blocks of
/// `block_size` slots.
pub fn build_executor(
    source: &ModelSource,
    plan: &ParallelPlan,
    num_blocks: usize,
    block_size: usize,
) -> Result<Box<dyn Executor>> {
    build_executor_on(source, plan, num_blocks, block_size, &Device::Cpu)
}

/// [`build_executor`] with the weights and caches on `device` (a GPU runs one rank only, for now).
pub fn build_executor_on(
    source: &ModelSource,
    plan: &ParallelPlan,
    num_blocks: usize,
    block_size: usize,
    device: &Device,
) -> Result<Box<dyn Executor>> {
    let (config, weights) = if plan.grid.world() == 1 {
        source.weights_on(device)?
    } else {
        source.weights()?
    };
    plan.validate(&config)?;
    if plan.grid.world() == 1 {
        let mut model = Model::load(&config, weights.as_ref())?;
        drop(weights);
        model.to_device(device)?;
        return Ok(Box::new(LocalExecutor::try_new(
            model, num_blocks, block_size,
        )?));
    }
    if device.is_cuda() {
        return Err(Error::Device(format!(
            "a layout of {} ranks runs on the CPU only for now; use one rank with --device cuda",
            plan.grid.world()
        )));
    }
    Ok(Box::new(ParallelExecutor::new(
        &config, weights, plan, num_blocks, block_size,
    )?))
}
