//! One model over many ranks: what each rank holds ([`Shard`]), the communicators it runs with
//! ([`RankContext`]), how a step's sequences are spread over data-parallel attention groups
//! ([`split`]), and the executors that run ranks as threads ([`ParallelExecutor`]).
//!
//! A single rank is the world of one: the same forward code runs with size-1 groups.

mod build;
mod context;
mod devices;
mod executor;
mod plan;
mod rank_loop;
mod shard;
pub mod split;

pub use build::{build_executor, build_executor_on};
pub use context::RankContext;
pub use devices::{open_over_host, GpuComm, RankDevices, RankSetup};
pub use executor::{ParallelExecutor, StageEvent};
pub use plan::ParallelPlan;
pub(crate) use rank_loop::{run_rank, RankJob, RankReport};
pub use shard::Shard;
