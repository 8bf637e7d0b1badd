//! switchyard-experts: expert policy for the switchyard MoE inference engine.
//!
//! Pure policy, no tensors, no I/O: the reference router ([`route`]), the placement of logical
//! experts on physical slots ([`Placement`]), dispatch plans for the All-to-All
//! ([`DispatchPlan`], [`RecvPermutation`]), sliding-window load statistics ([`LoadStats`]), the
//! EPLB-style rebalancer ([`rebalance`]) and a placement simulator ([`sim`]). Everything is
//! deterministic.

mod assign;
pub mod dispatch;
pub mod load;
mod packing;
pub mod placement;
pub mod rebalance;
pub mod router_config;
pub mod routing;
pub mod sim;

pub use dispatch::{DispatchError, DispatchPlan, RecvPermutation};
pub use load::{imbalance, merge_counts, rank_loads, LoadError, LoadStats};
pub use placement::{Placement, PlacementError, EMPTY_SLOT};
pub use rebalance::{
    moved_slots, rebalance, rebalance_layer, RebalanceError, RebalanceOptions, Rebalanced, Topology,
};
pub use routing::{
    expert_counts, route, GroupMask, RoutedScaling, RouterConfig, Routing, RoutingError,
    ScoreFunction, TopkMethod,
};
pub use sim::{parse_trace, simulate, zipf_loads, SimError, SimReport};
