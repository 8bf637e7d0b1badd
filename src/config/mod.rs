//! Configuration: the model's shape as a checkpoint's config.json gives it.

mod error;
mod model;
mod moe_config;
mod raw;
mod rope;

pub use error::ConfigError;
pub use model::{
    Architecture, AttentionKind, MlaConfig, ModelConfig, MoeConfig, SharedExpertConfig,
};
pub use rope::{RopeConfig, RopeScaling};
