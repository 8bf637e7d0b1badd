//! What a collective can fail at. A peer that went away is an error, never a hang.

use std::time::Duration;

/// The operation a message belongs to; carried with every message so that ranks calling
/// different collectives in the same order is caught instead of silently mixing data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `all_reduce_sum`.
    AllReduce,
    /// `reduce_scatter_sum`.
    ReduceScatter,
    /// `all_gather` / `all_gather_u32`.
    AllGather,
    /// `all_to_all_v` / `all_to_all_v_u32`.
    AllToAll,
    /// `send` / `recv`.
    PointToPoint,
    /// `broadcast`.
    Broadcast,
    /// `barrier`.
    Barrier,
}

/// Errors of a [`super::Communicator`]. `group` names the group ("tp", "ep", "pp", "world").
#[derive(Debug, thiserror::Error)]
pub enum CommError {
    /// The peer dropped its communicator (its thread ended or failed).
    #[error("{group} rank {rank}: peer rank {peer} hung up during {op:?}")]
    PeerGone {
        /// Group name.
        group: String,
        /// This rank within the group.
        rank: usize,
        /// The peer within the group.
        peer: usize,
        /// The operation in progress.
        op: Op,
    },
    /// The peer sent nothing within the timeout.
    #[error("{group} rank {rank}: no message from rank {peer} within {after:?} during {op:?}")]
    Timeout {
        /// Group name.
        group: String,
        /// This rank within the group.
        rank: usize,
        /// The peer within the group.
        peer: usize,
        /// The operation in progress.
        op: Op,
        /// How long this rank waited.
        after: Duration,
    },
    /// The peer is in a different collective: ranks must call collectives in the same order.
    #[error("{group} rank {rank}: expected {expected:?} from rank {peer} but it sent {got:?}")]
    Mismatch {
        /// Group name.
        group: String,
        /// This rank within the group.
        rank: usize,
        /// The peer within the group.
        peer: usize,
        /// What this rank is doing.
        expected: Op,
        /// What the peer is doing.
        got: Op,
    },
    /// Arguments that do not fit the group (counts, lengths, rank ids).
    #[error("{group} rank {rank}: {op:?}: {message}")]
    BadArgument {
        /// Group name.
        group: String,
        /// This rank within the group.
        rank: usize,
        /// The operation called.
        op: Op,
        /// What is wrong, with the numbers.
        message: String,
    },
    /// A GPU communicator's device or NCCL call failed.
    #[error("GPU collective: {0}")]
    Device(String),
    /// A grid whose sizes cannot form groups.
    #[error("rank grid: {0}")]
    Grid(String),
}
