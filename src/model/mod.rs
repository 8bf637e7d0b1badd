//! The decoder-only transformer every supported checkpoint is: embedding, a stack of
//! (RMSNorm → attention → RMSNorm → MoE block) layers with residuals, final norm, lm_head.

mod batch;
mod decoder;
mod linear;
mod load;
mod rank_output;

pub use batch::StepBatch;
pub use decoder::{DecoderLayer, Model};
pub use linear::Linear;
pub use load::{LoadedModel, ModelSource};
pub use rank_output::{RankOutput, StepOutput};
