//! The serving engine loop: one thread owns the executor, the KV block allocator and the
//! queues (an actor); requests come in over a channel and each gets its tokens back over its
//! own channel.
//!
//! Every step the [`Batcher`] picks what runs (continuous batching: sequences join and leave
//! the running batch at any step; prompts are prefilled in chunks under a token budget; when
//! the cache runs out the youngest running sequence is preempted and later recomputed), the
//! executor runs it, and each sequence that finished a step samples its next token.
//! Dropping a request's receiver cancels it at the next step; its blocks go back to the pool
//! when its [`BlockTable`](crate::kv_cache::BlockTable) drops.

mod batcher;
mod engine_loop;
mod handle;
mod request;
mod sampler;
mod sequence;

pub use batcher::{Batcher, Limits, PrefixLookups};
pub use handle::{EngineHandle, EngineStatus, StepObserver, SubmitError};
pub use request::{
    Event, FinishReason, GeneratedToken, GenerationRequest, SamplingConfig, TokenLogprob,
};
pub use sampler::{Need, Pick, Sampler, StepLogits};
pub use sequence::ServeSequence;
