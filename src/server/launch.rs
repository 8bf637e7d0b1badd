//! Starting a server: the engine thread over an executor, the state the handlers share, and
//! the listener with graceful shutdown.

use super::chat_template::ChatTemplate;
use super::state::AppState;
use crate::config::ModelConfig;
use crate::engine::{Executor, LocalExecutor};
use crate::model::LoadedModel;
use crate::scheduler::{EngineHandle, Limits, StepObserver};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Memory the default KV cache may take (f32 keys and values of every layer).
pub const DEFAULT_KV_BUDGET_BYTES: usize = 512 << 20;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Batch limits that cannot work.
    #[error("scheduler limits: {0}")]
    Limits(String),
    /// A chat template that does not parse.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// Binding or serving failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// How to serve (every flag of `switchyard serve` that is not about the model itself).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Batch limits.
    pub limits: Limits,
    /// KV-cache blocks (None: enough for max_num_seqs full contexts within
    /// [`DEFAULT_KV_BUDGET_BYTES`]).
    pub kv_blocks: Option<usize>,
    /// Token slots per block.
    pub kv_block_size: usize,
    /// Required `Authorization: Bearer` key.
    pub api_key: Option<String>,
    /// Name in /v1/models (None: the checkpoint directory's name).
    pub served_model_name: Option<String>,
    /// How long a shutdown waits for running requests before failing them.
    pub shutdown_grace: Duration,
    /// Prompts share the cached KV blocks that hold their first tokens (automatic prefix
    /// caching; on by default).
    pub prefix_cache: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            limits: Limits {
                max_num_seqs: 256,
                max_batched_tokens: 2048,
            },
            kv_blocks: None,
            kv_block_size: 16,
            api_key: None,
            served_model_name: None,
            shutdown_grace: Duration::from_secs(30),
            prefix_cache: true,
        }
    }
}

/// KV bytes per token of a model (f32 keys and values of every layer).
fn kv_bytes_per_token(cfg: &ModelConfig) -> usize {
    (cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * 4).max(1)
}

/// The default pool: max_num_seqs full contexts, capped by the memory budget, at least one
/// full context.
pub fn default_kv_blocks(cfg: &ModelConfig, limits: &Limits, block_size: usize) -> usize {
    let wanted = limits.max_num_seqs * cfg.max_position_embeddings;
    let affordable = DEFAULT_KV_BUDGET_BYTES / kv_bytes_per_token(cfg);
    wanted
        .min(affordable)
        .max(cfg.max_position_embeddings)
        .div_ceil(block_size)
}

/// The name a checkpoint directory is served under.
pub fn model_name_of(dir: &Path) -> String {
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    canonical
        .file_name()
        .map_or_else(|| "model".to_string(), |n| n.to_string_lossy().into_owned())
}

/// Starts the engine over one local rank and builds the handlers' state.
pub fn local_state(loaded: LoadedModel, opts: &ServeOptions) -> Result<Arc<AppState>, ServeError> {
    let cfg = loaded.model.config().clone();
    let blocks = opts
        .kv_blocks
        .unwrap_or_else(|| default_kv_blocks(&cfg, &opts.limits, opts.kv_block_size));
    let executor = LocalExecutor::new(loaded.model, blocks, opts.kv_block_size);
    state_over(Box::new(executor), loaded.tokenizer, &loaded.dir, opts)
}

/// Starts the engine over any executor (e.g. a multi-rank one) and builds the state.
pub fn state_over(
    executor: Box<dyn Executor>,
    tokenizer: Option<crate::tokenizer::Tokenizer>,
    dir: &Path,
    opts: &ServeOptions,
) -> Result<Arc<AppState>, ServeError> {
    state_observed(executor, tokenizer, dir, opts, None)
}

/// [`state_over`] with an observer of every forward step (e.g. `--record-routing`).
pub fn state_observed(
    executor: Box<dyn Executor>,
    tokenizer: Option<crate::tokenizer::Tokenizer>,
    dir: &Path,
    opts: &ServeOptions,
    observer: Option<StepObserver>,
) -> Result<Arc<AppState>, ServeError> {
    let cfg = executor.config().clone();
    let chat_template = ChatTemplate::from_dir(dir).map_err(ServeError::ChatTemplate)?;
    let engine = EngineHandle::spawn_observed(executor, opts.limits, opts.prefix_cache, observer)
        .map_err(ServeError::Limits)?;
    let name = opts
        .served_model_name
        .clone()
        .unwrap_or_else(|| model_name_of(dir));
    let mut state = AppState::new(engine, &cfg, tokenizer, chat_template, name.clone());
    let s = Arc::get_mut(&mut state).expect("the state was just created");
    s.api_key = opts.api_key.clone();
    s.model_aliases = [
        dir.display().to_string(),
        dir.canonicalize()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        model_name_of(dir),
    ]
    .into_iter()
    .filter(|a| !a.is_empty() && *a != name)
    .collect();
    Ok(state)
}

/// Serves `state` on `listener` until `shutdown` resolves; then stops accepting, lets running
/// requests finish for `grace`, and fails what is left.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> Result<(), ServeError> {
    let engine = state.engine.clone();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: finishing running requests (at most {grace:?})");
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            engine.abort_all("the server is shutting down");
        });
    };
    axum::serve(listener, super::app(state))
        .with_graceful_shutdown(signal)
        .await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
