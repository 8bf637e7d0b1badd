//! `switchyard serve`: the OpenAI-compatible HTTP server.

use super::model_args::DeviceArgs;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use switchyard::cluster::{self, ClusterArgs, ClusterExecutor};
use switchyard::config::ModelConfig;
use switchyard::layout::{Layout, LayoutOverrides};
use switchyard::model::ModelSource;
use switchyard::parallel::{build_executor_on, ParallelPlan};
use switchyard::replication::RoutingRecorder;
use switchyard::scheduler::{Limits, StepObserver};
use switchyard::server::{self, ServeOptions};
use switchyard::tokenizer::Tokenizer;

/// The checkpoint `serve` runs when no `--model` is given (ships with the repo).
pub const DEFAULT_MODEL_DIR: &str = "models/shakespeare-moe";

/// [`DEFAULT_MODEL_DIR`] under the working directory, else under the source tree this binary
/// was built from.
fn default_model_dir() -> PathBuf {
    let here = PathBuf::from(DEFAULT_MODEL_DIR);
    if here.join("config.json").exists() {
        return here;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL_DIR)
}

/// Flags of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Checkpoint directory (default: the small model that ships with the repo).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Build seeded random weights of config.json's shape instead of reading safetensors.
    #[arg(long)]
    random_weights: bool,
    /// Seed of --random-weights.
    #[arg(long, default_value_t = 0)]
    weights_seed: u64,
    /// Address to bind (loopback by default; 0.0.0.0 to serve other machines).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to bind (0: any free port; the chosen one is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on /v1 routes.
    #[arg(long)]
    api_key: Option<String>,
    /// Name the model is served under (default: the checkpoint directory's name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Sequences in the running batch at most (default: the layout's, 256).
    #[arg(long)]
    max_num_seqs: Option<usize>,
    /// Tokens per forward step at most, decode tokens plus prefill chunks (default: the
    /// layout's, 8192).
    #[arg(long)]
    max_batched_tokens: Option<usize>,
    /// KV-cache blocks (default: max_num_seqs full contexts within 512 MiB).
    #[arg(long)]
    kv_blocks: Option<usize>,
    /// Token slots per KV-cache block (default: the layout's, 16).
    #[arg(long)]
    kv_block_size: Option<usize>,
    /// Compute every prompt from its first token, never sharing the cached KV blocks of
    /// earlier requests that began with the same tokens.
    #[arg(long)]
    no_prefix_caching: bool,
    /// Seconds a shutdown waits for running requests before failing them.
    #[arg(long, default_value_t = 30)]
    shutdown_grace_secs: u64,
    /// Write every forward step's expert routing to FILE as JSON lines (the trace
    /// `switchyard rebalance-sim --trace` replays).
    #[arg(long, value_name = "FILE")]
    record_routing: Option<PathBuf>,
    /// Where the ranks run (`--device cuda`, `--gpus`, `--gpu-comm`).
    #[command(flatten)]
    devices: DeviceArgs,
    /// The parallel layout (in-process CPU ranks, one thread each).
    #[command(flatten)]
    layout: LayoutOverrides,
    /// Which node of a multi-node job this is (`--nodes --node-rank --rendezvous`); nodes other
    /// than 0 follow node 0's step plans and serve no HTTP.
    #[command(flatten)]
    cluster: ClusterArgs,
}

impl ServeArgs {
    fn options(&self, layout: &Layout) -> ServeOptions {
        let sched = &layout.scheduler;
        ServeOptions {
            limits: Limits {
                max_num_seqs: self.max_num_seqs.unwrap_or(sched.max_num_seqs),
                max_batched_tokens: self.max_batched_tokens.unwrap_or(sched.max_batched_tokens),
            },
            kv_blocks: self.kv_blocks,
            kv_block_size: self.kv_block_size.unwrap_or(sched.kv_block_size),
            api_key: self.api_key.clone(),
            served_model_name: self.served_model_name.clone(),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            prefix_cache: !self.no_prefix_caching,
        }
    }
}

/// Loads the model onto the layout's ranks and starts the engine; `None` on a follower node,
/// once node 0 has stopped it.
fn start(a: &ServeArgs) -> anyhow::Result<Option<std::sync::Arc<server::AppState>>> {
    let dir = a.model.clone().unwrap_or_else(default_model_dir);
    let mut layout = a.layout.resolve()?;
    let mut cluster = a.cluster.resolve(&mut layout)?;
    let opts = a.options(&layout);
    if opts.kv_block_size == 0 {
        anyhow::bail!("--kv-block-size must be positive");
    }
    let config = ModelConfig::from_dir(&dir)?;
    let blocks = opts
        .kv_blocks
        .unwrap_or_else(|| server::default_kv_blocks(&config, &opts.limits, opts.kv_block_size));
    let source = ModelSource {
        dir: dir.clone(),
        random_weights: a.random_weights.then_some(a.weights_seed),
    };
    let plan = ParallelPlan::from_layout(layout)?;
    a.devices.for_cluster(&mut cluster, plan.grid.world())?;
    let (executor, fault): (Box<dyn switchyard::engine::Executor>, _) = match &cluster {
        None => (
            build_executor_on(
                &source,
                &plan,
                blocks,
                opts.kv_block_size,
                &a.devices.rank_devices(plan.grid.world())?,
            )
            .with_context(|| format!("loading model {}", dir.display()))?,
            None,
        ),
        Some(spec) if spec.is_driver() => {
            let ex = ClusterExecutor::start(&source, &plan, blocks, opts.kv_block_size, spec)?;
            let fault = ex.fault();
            (Box::new(ex), Some(fault))
        }
        Some(spec) => {
            println!(
                "switchyard node {} of {}: following node 0 at {}",
                spec.node_rank, spec.nodes, spec.rendezvous
            );
            cluster::follow(&source, &plan, spec)?;
            return Ok(None);
        }
    };
    let tokenizer = Tokenizer::from_dir(&dir)?;
    let observer = a
        .record_routing
        .as_deref()
        .map(routing_recorder)
        .transpose()?;
    let mut state = server::state_observed(executor, tokenizer, &dir, &opts, observer)?;
    std::sync::Arc::get_mut(&mut state)
        .expect("the state was just created")
        .fault = fault;
    Ok(Some(state))
}

/// A step observer that appends each step's routing to `path`; a write error is reported
/// once and stops the recording, not the server.
fn routing_recorder(path: &std::path::Path) -> anyhow::Result<StepObserver> {
    let mut recorder = Some(
        RoutingRecorder::create(path)
            .with_context(|| format!("--record-routing {}", path.display()))?,
    );
    Ok(Box::new(move |out| {
        if let Some(r) = recorder.as_mut() {
            if let Err(e) = r.record(&out.expert_counts) {
                eprintln!("--record-routing: {e}; recording stopped");
                recorder = None;
            }
        }
    }))
}

/// Runs `serve` until Ctrl-C / SIGTERM.
pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    let Some(state) = start(&a)? else {
        return Ok(());
    };
    let grace = Duration::from_secs(a.shutdown_grace_secs);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("binding {}:{}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        let name = state.model_name.clone();
        let auth = a.api_key.as_ref().map(|_| " -H 'Authorization: Bearer $KEY'").unwrap_or_default();
        println!("switchyard serving `{name}` on http://{addr} (dashboard at http://{addr}/, metrics at /metrics)");
        println!(
            "try: curl http://{addr}/v1/completions -H 'Content-Type: application/json'{auth} -d '{{\"model\": \"{name}\", \"prompt\": \"The quick brown fox\", \"max_tokens\": 16, \"temperature\": 0}}'"
        );
        server::serve(listener, state, server::shutdown_signal(), grace).await?;
        anyhow::Ok(())
    })
}
