//! Communicators between processes over TCP: the ranks of one world spread over several nodes.
//!
//! A [`Fabric`] is one process's (node's) share of the world: its local ranks, one TCP
//! connection to every other node (a full mesh, opened after the rendezvous), and a reader
//! thread per connection that sorts incoming frames into one channel per (group, source rank,
//! destination rank). Every rank gets a [`TcpComm`] per group (TP, EP, PP) with the same
//! semantics as [`super::LocalComm`]: op tags on every message, reductions summed in rank order
//! (bit-identical to the in-process ranks), payload bytes to other ranks counted, a peer whose
//! socket closes or whose communicator is dropped is [`super::CommError::PeerGone`] at once, and
//! a live but silent peer is [`super::CommError::Timeout`].
//!
//! Ranks of the same process exchange bytes through channels (no socket); ranks of other
//! processes through the node's connection. An NCCL communicator replaces this per group and
//! keeps the rest (the rendezvous hands out NCCL unique ids instead of addresses).

mod comm;
mod fabric;
mod frame;

pub use comm::TcpComm;
pub use fabric::{Fabric, FabricError, FabricSpec, TcpRankComms};
