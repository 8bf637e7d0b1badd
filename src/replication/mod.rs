//! The hot-expert replication manager: live routing statistics, rebalancing onto the layout's
//! spare (`redundant`) slots, and weights moved while serving.
//!
//! Real routing is skewed; the rank holding the hot experts sets the pace of every step. The
//! driver feeds every step's routed-token counts into a sliding window ([`ReplicationManager`]);
//! every `rebalance_every` steps (or when the window's imbalance passes a threshold) it computes a
//! new placement with [`switchyard_experts::rebalance`] on a background thread, then migrates: the
//! step message of the next steps carries a [`Directive`] with a few layers' [`LayerMigration`]s,
//! and every rank copies the experts of the slots that change (from a rank that holds that
//! expert now, over the EP communicator) into a shadow of its bank ([`RankReplica`]). Once every
//! layer is staged, one directive names the new placement epoch and all ranks switch before the
//! same step. Replicas hold the same weights, so outputs do not change; no step waits for the
//! algorithm and each step carries at most `layers_per_step` layers of copies.
//!
//! [`ReplicationStatus`] is what the serving layer exports as metrics; [`RoutingRecorder`]
//! writes the routing trace `switchyard rebalance-sim --trace` replays.

mod config;
mod directive;
mod error;
mod manager;
mod migration;
mod shadow;
mod status;
mod trace;
mod window;

pub use config::ReplicationConfig;
pub use directive::{Directive, MigrationChunk};
pub use error::ReplicationError;
pub use manager::ReplicationManager;
pub use migration::{LayerMigration, Transfer};
pub use shadow::RankReplica;
pub use status::{RebalanceSummary, ReplicationStatus, ReplicationStep};
pub use trace::RoutingRecorder;
pub use window::MAX_BUCKETS;
