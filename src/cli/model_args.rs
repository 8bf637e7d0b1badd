//! Flags every model-running subcommand shares: the model and the parallel layout.

use anyhow::{bail, Context};
use clap::Args;
use std::path::PathBuf;
use switchyard::backend::DeviceKind;
use switchyard::cluster::{self, ClusterArgs, ClusterExecutor, ClusterSpec};
use switchyard::engine::{Engine, Executor};
use switchyard::layout::LayoutOverrides;
use switchyard::model::ModelSource;
use switchyard::parallel::{build_executor_on, GpuComm, ParallelPlan, RankDevices};
use switchyard::tokenizer::Tokenizer;

/// `--device`, `--gpus`, `--gpu-comm`: where a layout's ranks run.
#[derive(Debug, Clone, Args)]
pub struct DeviceArgs {
    /// Where the ranks run: the f32 CPU reference, or CUDA GPUs (bf16 weights; see --gpus).
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
    /// With --device cuda: the GPUs of the ranks, e.g. `0,2,4,6` (default: GPUs 0..n-1 for n
    /// ranks; with more ranks than GPUs, ranks share GPUs).
    #[arg(long, value_delimiter = ',')]
    pub gpus: Vec<usize>,
    /// With --device cuda: how GPU ranks exchange tensors (auto: NCCL when every rank has a
    /// GPU of its own, else device copies in one process and the host between nodes).
    #[arg(long, value_enum, default_value_t = GpuComm::Auto)]
    pub gpu_comm: GpuComm,
}

impl DeviceArgs {
    /// Where the ranks run: the CPU, or the GPUs `--gpus` names (default 0..n-1).
    pub fn rank_devices(&self, ranks: usize) -> anyhow::Result<RankDevices> {
        match self.device {
            DeviceKind::Cpu if !self.gpus.is_empty() => bail!("--gpus needs --device cuda"),
            DeviceKind::Cpu if self.gpu_comm != GpuComm::Auto => {
                bail!("--gpu-comm needs --device cuda")
            }
            DeviceKind::Cpu => Ok(RankDevices::Cpu),
            DeviceKind::Cuda => Ok(RankDevices::cuda(&self.gpus, ranks)?.with_comm(self.gpu_comm)),
        }
    }

    /// Sets where a multi-node job's node runs its share of the `world` ranks on `spec`.
    pub fn for_cluster(&self, spec: &mut Option<ClusterSpec>, world: usize) -> anyhow::Result<()> {
        if let Some(spec) = spec {
            spec.devices = self.rank_devices(world / spec.nodes)?;
        }
        Ok(())
    }
}

/// Which model to run, and over which ranks.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Checkpoint directory (config.json + *.safetensors [+ tokenizer.json]).
    #[arg(long)]
    pub model: PathBuf,
    /// Build seeded random weights of config.json's shape instead of reading safetensors.
    #[arg(long)]
    pub random_weights: bool,
    /// Seed of --random-weights.
    #[arg(long, default_value_t = 0)]
    pub weights_seed: u64,
    /// Token slots per KV-cache block (default: the layout's).
    #[arg(long)]
    pub kv_block_size: Option<usize>,
    /// Where the ranks run.
    #[command(flatten)]
    pub devices: DeviceArgs,
    /// The parallel layout (in-process CPU ranks, one thread each).
    #[command(flatten)]
    pub layout: LayoutOverrides,
    /// Which node of a multi-node job this is (`--nodes --node-rank --rendezvous`).
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

impl ModelArgs {
    /// Where the weights come from.
    pub fn source(&self) -> ModelSource {
        ModelSource {
            dir: self.model.clone(),
            random_weights: self.random_weights.then_some(self.weights_seed),
        }
    }

    /// The model on the layout's ranks, with a cache of `cache_tokens` tokens, and its tokenizer.
    /// On a follower node of a multi-node job (`--node-rank` above 0) this runs the node's ranks
    /// for node 0 and exits the process when node 0 stops (non-zero with the error otherwise).
    pub fn engine(&self, cache_tokens: usize) -> anyhow::Result<(Engine, Option<Tokenizer>)> {
        let mut layout = self.layout.resolve()?;
        let mut cluster = self.cluster.resolve(&mut layout)?;
        let block_size = self.kv_block_size.unwrap_or(layout.scheduler.kv_block_size);
        if block_size == 0 {
            bail!("--kv-block-size must be positive");
        }
        let plan = ParallelPlan::from_layout(layout)?;
        let blocks = cache_tokens.max(1).div_ceil(block_size);
        self.devices.for_cluster(&mut cluster, plan.grid.world())?;
        let executor: Box<dyn Executor> = match &cluster {
            None => {
                let devices = self.devices.rank_devices(plan.grid.world())?;
                build_executor_on(&self.source(), &plan, blocks, block_size, &devices)
                    .with_context(|| format!("loading model {}", self.model.display()))?
            }
            Some(spec) if spec.is_driver() => Box::new(ClusterExecutor::start(
                &self.source(),
                &plan,
                blocks,
                block_size,
                spec,
            )?),
            Some(spec) => {
                cluster::follow(&self.source(), &plan, spec)?;
                std::process::exit(0);
            }
        };
        let tokenizer = Tokenizer::from_dir(&self.model)?;
        Ok((Engine::with_executor(executor), tokenizer))
    }
}

/// Parses "1,2,3" into token ids.
pub fn parse_tokens(s: &str) -> anyhow::Result<Vec<u32>> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>()
                .with_context(|| format!("--tokens: {t:?} is not a token id"))
        })
        .collect()
}
