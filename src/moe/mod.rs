//! The feed-forward half of every layer, as a mixture of experts (Shazeer et al. 2017):
//! a router picks experts per token, the experts run as one grouped GEMM over tokens sorted by
//! expert, and the outputs are combined with the router weights. A dense MLP is the one-expert
//! case (top-1, weight 1, no router), so every model takes the same path.

mod block;
mod dispatch;
mod experts;
mod names;
mod router;

pub use block::{MoeBlock, MoeOutput};
pub use dispatch::{dispatch_combine, DispatchStats, EpRank};
pub use experts::ExpertBank;
pub use names::ExpertNames;
pub use router::Router;
