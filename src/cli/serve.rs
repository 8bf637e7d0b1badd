//! `switchyard serve`: the OpenAI-compatible HTTP server.

use super::model_args::ModelArgs;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use switchyard::model::ModelSource;
use switchyard::scheduler::Limits;
use switchyard::server::{self, ServeOptions};

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
    /// Sequences in the running batch at most.
    #[arg(long, default_value_t = 256)]
    max_num_seqs: usize,
    /// Tokens per forward step at most (decode tokens plus prefill chunks).
    #[arg(long, default_value_t = 2048)]
    max_batched_tokens: usize,
    /// KV-cache blocks (default: max_num_seqs full contexts within 512 MiB).
    #[arg(long)]
    kv_blocks: Option<usize>,
    /// Token slots per KV-cache block.
    #[arg(long, default_value_t = 16)]
    kv_block_size: usize,
    /// Seconds a shutdown waits for running requests before failing them.
    #[arg(long, default_value_t = 30)]
    shutdown_grace_secs: u64,
}

impl ServeArgs {
    fn model_args(&self) -> ModelArgs {
        ModelArgs {
            model: self.model.clone().unwrap_or_else(default_model_dir),
            random_weights: self.random_weights,
            weights_seed: self.weights_seed,
            kv_block_size: self.kv_block_size,
        }
    }

    fn options(&self) -> ServeOptions {
        ServeOptions {
            limits: Limits { max_num_seqs: self.max_num_seqs, max_batched_tokens: self.max_batched_tokens },
            kv_blocks: self.kv_blocks,
            kv_block_size: self.kv_block_size,
            api_key: self.api_key.clone(),
            served_model_name: self.served_model_name.clone(),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
        }
    }
}

/// Runs `serve` until Ctrl-C / SIGTERM.
pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    let model_args = a.model_args();
    if model_args.kv_block_size == 0 {
        anyhow::bail!("--kv-block-size must be positive");
    }
    let source = ModelSource { dir: model_args.model.clone(), random_weights: model_args.random_weights.then_some(model_args.weights_seed) };
    let loaded = source.load().with_context(|| format!("loading model {}", model_args.model.display()))?;
    let opts = a.options();
    let state = server::local_state(loaded, &opts)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
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
        server::serve(listener, state, server::shutdown_signal(), opts.shutdown_grace).await?;
        anyhow::Ok(())
    })
}
