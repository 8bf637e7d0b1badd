//! Serving metrics in Prometheus form (names as in shared/DESIGN.md), and the live expert-load
//! board behind the operators' dashboard.
//!
//! Every server owns its own recorder (no global one), so several servers in one process (the
//! tests) never mix their counters.

mod load;
mod registry;

pub use load::{ExpertLoad, LoadBoard, LOAD_WINDOW_STEPS};
pub use registry::{KvOccupancy, Outcome, ServingMetrics};
