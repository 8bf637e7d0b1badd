//! Configuration: the model's shape as a checkpoint's config.json gives it.

mod error;
mod model;
mod moe_config;
mod quant;
mod raw;
mod rope;

pub use error::ConfigError;
pub use model::{
    Architecture, AttentionKind, MlaConfig, ModelConfig, MoeConfig, SharedExpertConfig,
};
pub use quant::{BlockFp8, Fp8Scales};
pub use rope::{RopeConfig, RopeScaling};
