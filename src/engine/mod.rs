//! Running a model: sequences with their cache blocks, prefill then one-token decode steps.
//! The serving scheduler batches many sequences through the same [`StepBatch`] path.
//!
//! [`StepBatch`]: crate::model::StepBatch

mod executor;
mod generate;
mod sequence;

pub use executor::{Executor, LocalExecutor};
pub use generate::{Engine, GenerateOptions, Generation};
pub use sequence::Sequence;
