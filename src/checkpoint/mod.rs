//! Where weights come from: a Hugging Face checkpoint directory of safetensors files
//! ([`Checkpoint`]) or deterministic random values ([`RandomWeights`]).
//!
//! Model code asks a [`WeightSource`] for tensors by their hub name and the shape the config
//! implies; every answer is an f32 tensor that remembers the dtype it was stored in (FP8 weights:
//! bf16, once multiplied by their scales).

mod directory;
mod error;
mod fp8;
mod header;
mod index;
mod random;
mod similar;
mod widen;

pub use directory::Checkpoint;
pub use error::{CheckpointError, SUPPORTED_DTYPES};
pub use random::RandomWeights;
#[cfg(feature = "cuda")]
pub(crate) use random::{fill_for, fnv1a, Fill};

use crate::tensor::Tensor;

/// A source of named weights.
pub trait WeightSource: Send + Sync {
    /// The tensor `name` (hub name, e.g. "model.layers.0.self_attn.q_proj.weight") widened to
    /// f32, checked to have `shape`.
    fn load(&self, name: &str, shape: &[usize]) -> Result<Tensor, CheckpointError>;

    /// Where the weights come from, for messages ("checkpoint DIR" / "random weights, seed N").
    fn describe(&self) -> String;
}
