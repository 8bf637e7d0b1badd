//! The library's error type: every failure names what is wrong.

use crate::checkpoint::CheckpointError;
use crate::config::ConfigError;

/// Result with the library's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the engine can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model config that cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A checkpoint that cannot be loaded.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Routing input or configuration that does not fit.
    #[error("routing: {0}")]
    Routing(#[from] switchyard_experts::RoutingError),
    /// A collective failed (a peer rank died or timed out).
    #[error(transparent)]
    Comm(#[from] crate::comm::CommError),
    /// A parallel layout that cannot run this model.
    #[error(transparent)]
    Layout(#[from] crate::layout::LayoutError),
    /// The ranks cannot run a step (a rank failed, or a layout they cannot execute).
    #[error("ranks: {0}")]
    Ranks(String),
    /// Shapes that do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A request that does not fit the model (token ids, lengths).
    #[error("invalid input: {0}")]
    Input(String),
    /// The KV cache has no free block left.
    #[error("KV cache exhausted: {0}")]
    CacheFull(String),
    /// A tokenizer that is missing or failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A device that is not available in this build or on this machine.
    #[error("device: {0}")]
    Device(String),
}
