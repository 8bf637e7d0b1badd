//! Communicators: the collectives ranks use to run one model together.
//!
//! [`Communicator`] is what the model code calls (all-reduce, reduce-scatter, all-gather,
//! all-to-all-v, send/recv, broadcast, barrier); every implementation counts the bytes it sends to
//! other ranks. [`LocalComm`] is the in-process implementation: one thread per rank, real copies of
//! bytes through channels, deterministic reductions. [`RankGrid`] maps a global rank onto its TP,
//! EP and PP groups, and [`World`] builds every rank's communicators and runs rank threads.
//! [`gpu`] (with the `cuda` feature) keeps tensor collectives on the device: in-process GPU
//! ranks by device copies, or NCCL.
//! [`tcp`] spreads the same groups over processes (nodes) connected by TCP ([`TcpComm`]).

mod communicator;
mod element;
mod error;
#[cfg(feature = "cuda")]
pub mod gpu;
mod grid;
pub(crate) mod links;
mod local;
pub mod tcp;
mod world;

pub use communicator::{even_counts, Communicator};
pub use element::Element;
pub use error::{CommError, Op};
pub use grid::{RankCoords, RankGrid};
pub use local::LocalComm;
pub use tcp::TcpComm;
#[cfg(feature = "cuda")]
pub use world::RankLinks;
pub use world::{RankComms, RankFailure, RunError, World, DEFAULT_TIMEOUT};
