//! Parallel layouts: how one model is spread over ranks, read from a TOML file (configs/*.toml)
//! with CLI overrides, checked against the model before anything starts.
//!
//! - [`Layout`]: the resolved `[parallel]`, `[experts]`, `[scheduler]` and `[pipeline]` sections.
//! - [`LayoutOverrides`]: the `--layout --tp --ep --pp --moe-tp --redundant` flags.
//! - [`Layout::validate`]: every way a layout cannot work, with the number that is wrong and
//!   what would fit ([`LayoutError`]).
//! - [`memory`]: per-rank weight bytes and KV-cache bytes per token, computed from the config.
//! - [`traffic`]: All-to-All bytes per token and per step.
//! - [`plan`]: the report of `switchyard plan`; [`recommend`]: a layout for a set of GPUs.

mod error;
mod file;
pub mod memory;
mod overrides;
mod placement;
pub mod plan;
pub mod recommend;
mod spec;
pub mod traffic;
mod validate;

pub use error::LayoutError;
pub use overrides::LayoutOverrides;
pub use placement::PlacementSpec;
pub use spec::{ExpertsLayout, Layout, ParallelLayout, SchedulerLayout};
