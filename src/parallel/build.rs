//! Choosing the executor a layout needs: the model in this thread for one rank, rank threads
//! otherwise.

use super::{ParallelExecutor, ParallelPlan, RankDevices};
use crate::backend::Device;
use crate::config::ModelConfig;
use crate::engine::{Executor, LocalExecutor};
use crate::error::Result;
use crate::layout::memory::{check_gpu_room, gpu_rank_bytes};
use crate::model::{Model, ModelSource};
use std::collections::BTreeMap;

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
    let cache_tokens = num_blocks.saturating_mul(block_size) as u64;
    if plan.grid.world() == 1 {
        // One rank: random weights can be built straight on its GPU.
        let device = match devices.gpu(0) {
            None => Device::Cpu,
            Some(gpu) => Device::cuda(gpu)?,
        };
        let (config, weights) = source.weights_on(&device)?;
        plan.validate(&config)?;
        check_room(&config, plan, devices, cache_tokens)?;
        let model = Model::load_on(&config, weights.as_ref(), &device)?;
        drop(weights);
        return Ok(Box::new(LocalExecutor::try_new(
            model, num_blocks, block_size,
        )?));
    }
    let (config, weights) = source.weights()?;
    plan.validate(&config)?;
    check_room(&config, plan, devices, cache_tokens)?;
    Ok(Box::new(ParallelExecutor::on_devices(
        &config, weights, plan, num_blocks, block_size, devices,
    )?))
}

/// Refuses, before anything is loaded, a plan whose ranks cannot fit the free memory of the
/// GPUs they are placed on (see [`check_gpu_room`]); GPUs whose driver does not answer are
/// not checked.
fn check_room(
    config: &ModelConfig,
    plan: &ParallelPlan,
    devices: &RankDevices,
    cache_tokens: u64,
) -> Result<()> {
    let world = plan.grid.world();
    let mut by_gpu: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for rank in 0..world {
        if let Some(gpu) = devices.gpu(rank) {
            by_gpu.entry(gpu).or_default().push(rank);
        }
    }
    for (gpu, ranks) in by_gpu {
        let device = Device::cuda(gpu)?;
        let Some(room) = device.memory() else {
            continue;
        };
        let need = ranks.iter().fold((0u64, 0u64), |(w, k), &r| {
            let stage = plan.grid.coords(r).stage;
            let (rw, rk) = gpu_rank_bytes(config, &plan.layout, stage, cache_tokens);
            (w.saturating_add(rw), k.saturating_add(rk))
        });
        let who = match ranks.as_slice() {
            [_] if world == 1 => "the one rank holding the whole model".to_string(),
            [r] => format!("rank {r}"),
            _ => format!("ranks {ranks:?}"),
        };
        check_gpu_room(&device.describe(), &who, need, cache_tokens, room)?;
    }
    Ok(())
}
