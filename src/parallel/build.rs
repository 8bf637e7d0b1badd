//! Choosing the executor a layout needs: the model in this thread for one rank, rank threads
//! otherwise.

use super::{ParallelExecutor, ParallelPlan, RankDevices};
use crate::backend::Device;
use crate::engine::{Executor, LocalExecutor};
use crate::error::Result;
use crate::model::{Model, ModelSource};

/// Loads the model from `source` onto the ranks of `plan`, each with `num_blocks` KV blocks of
/// `block_size` slots.
pub fn build_executor(
    source: &ModelSource,
    plan: &ParallelPlan,
    num_blocks: usize,
    block_size: usize,
) -> Result<Box<dyn Executor>> {
    build_executor_on(source, plan, num_blocks, block_size, &RankDevices::Cpu)
}

/// [`build_executor`] with the ranks on `devices`: one rank runs in this thread on the CPU or
/// its GPU; several run as threads, GPU ranks each on its own stream (see [`RankDevices`]).
pub fn build_executor_on(
    source: &ModelSource,
    plan: &ParallelPlan,
    num_blocks: usize,
    block_size: usize,
    devices: &RankDevices,
) -> Result<Box<dyn Executor>> {
    if plan.grid.world() == 1 {
        // One rank: random weights can be built straight on its GPU.
        let device = match devices.gpu(0) {
            None => Device::Cpu,
            Some(gpu) => Device::cuda(gpu)?,
        };
        let (config, weights) = source.weights_on(&device)?;
        plan.validate(&config)?;
        let mut model = Model::load(&config, weights.as_ref())?;
        drop(weights);
        model.to_device(&device)?;
        return Ok(Box::new(LocalExecutor::try_new(
            model, num_blocks, block_size,
        )?));
    }
    let (config, weights) = source.weights()?;
    plan.validate(&config)?;
    Ok(Box::new(ParallelExecutor::on_devices(
        &config, weights, plan, num_blocks, block_size, devices,
    )?))
}
