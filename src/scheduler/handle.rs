//! The handle the HTTP side holds: submits requests to the engine thread and reads its state.

use super::batcher::{Batcher, Limits};
pub use super::engine_loop::EngineStatus;
use super::engine_loop::{Command, EngineLoop};
use super::request::{Event, GenerationRequest};
use crate::engine::Executor;
use crate::kv_cache::BlockAllocator;
use crate::metrics::{LoadBoard, ServingMetrics};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Why a request was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// prompt + max_tokens can never fit in the KV cache.
    #[error("prompt ({prompt} tokens) + max_tokens ({max_tokens}) exceeds the KV cache capacity of {capacity} tokens")]
    TooLong {
        /// Prompt tokens.
        prompt: usize,
        /// Requested new tokens.
        max_tokens: usize,
        /// Token slots of the whole cache.
        capacity: usize,
    },
    /// The engine thread has stopped.
    #[error("the engine has stopped")]
    Stopped,
}

/// Called by the engine thread with every forward step's output (routing counts, rank loads,
/// communication), after the metrics have counted it.
pub type StepObserver = Box<dyn FnMut(&crate::model::StepOutput) + Send>;

/// A cloneable handle to the engine thread. The thread ends when every handle is dropped and
/// the last sequence is done.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    commands: Sender<Command>,
    allocator: BlockAllocator,
    status: Arc<EngineStatus>,
    metrics: Arc<ServingMetrics>,
    board: Arc<LoadBoard>,
}

impl EngineHandle {
    /// Starts the engine thread over `executor`, with a prefix cache.
    pub fn spawn(executor: Box<dyn Executor>, limits: Limits) -> Result<Self, String> {
        Self::spawn_observed(executor, limits, true, None)
    }

    /// Starts the engine thread over `executor`; with `prefix_cache`, prompts share the cached
    /// blocks that hold their first tokens; `observer` sees every step's output.
    pub fn spawn_observed(
        executor: Box<dyn Executor>,
        limits: Limits,
        prefix_cache: bool,
        observer: Option<StepObserver>,
    ) -> Result<Self, String> {
        limits.validate()?;
        let (blocks, block_size) = (executor.num_blocks(), executor.block_size());
        let allocator = if prefix_cache {
            BlockAllocator::with_prefix_cache(blocks, block_size)
        } else {
            BlockAllocator::new(blocks, block_size)
        };
        let metrics = Arc::new(ServingMetrics::for_executor(executor.as_ref(), 1));
        let board = Arc::new(LoadBoard::default());
        let status = Arc::new(EngineStatus::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let engine = EngineLoop {
            executor,
            batcher: Batcher::new(allocator.clone(), limits),
            commands: rx,
            metrics: metrics.clone(),
            board: board.clone(),
            status: status.clone(),
            observer,
        };
        std::thread::Builder::new()
            .name("switchyard-engine".into())
            .spawn(move || engine.run())
            .map_err(|e| format!("cannot start the engine thread: {e}"))?;
        Ok(Self {
            commands: tx,
            allocator,
            status,
            metrics,
            board,
        })
    }

    /// Queues a sequence; its tokens arrive on the returned receiver. Dropping the receiver
    /// cancels the sequence at the engine's next step.
    pub fn submit(&self, req: GenerationRequest) -> Result<UnboundedReceiver<Event>, SubmitError> {
        let capacity = self.allocator.total_blocks() * self.allocator.block_size();
        if req.prompt.len() + req.sampling.max_tokens > capacity {
            return Err(SubmitError::TooLong {
                prompt: req.prompt.len(),
                max_tokens: req.sampling.max_tokens,
                capacity,
            });
        }
        let (events, rx) = unbounded_channel();
        let cmd = Command::Submit {
            req,
            events,
            arrived: Instant::now(),
        };
        self.commands.send(cmd).map_err(|_| SubmitError::Stopped)?;
        Ok(rx)
    }

    /// Fails every queued and running sequence (e.g. at the end of a shutdown grace period).
    pub fn abort_all(&self, why: &str) {
        let _ = self.commands.send(Command::AbortAll(why.to_string()));
    }

    /// KV-cache blocks held by sequences now.
    pub fn kv_blocks_used(&self) -> usize {
        self.allocator.used_blocks()
    }

    /// KV-cache blocks a later request can find by their tokens (held or free).
    pub fn kv_blocks_cached(&self) -> usize {
        self.allocator.cached_blocks()
    }

    /// KV-cache blocks in the pool.
    pub fn kv_blocks_total(&self) -> usize {
        self.allocator.total_blocks()
    }

    /// Token slots of the whole cache.
    pub fn kv_capacity_tokens(&self) -> usize {
        self.allocator.total_blocks() * self.allocator.block_size()
    }

    /// Running and waiting counts, steps, liveness.
    pub fn status(&self) -> &EngineStatus {
        &self.status
    }

    /// Whether the engine thread is still running.
    pub fn is_alive(&self) -> bool {
        !self.status.stopped.load(Ordering::SeqCst)
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Arc<ServingMetrics> {
        &self.metrics
    }

    /// The live expert loads.
    pub fn load_board(&self) -> &Arc<LoadBoard> {
        &self.board
    }
}
