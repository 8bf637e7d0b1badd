//! `ReplicationError`: what can go wrong watching, rebalancing or migrating experts.

use std::path::PathBuf;
use switchyard_experts::{LoadError, PlacementError, RebalanceError};
use thiserror::Error;

/// Failures of the replication manager; each names what is wrong.
#[derive(Debug, Error)]
pub enum ReplicationError {
    /// A setting that cannot work; the message names it.
    #[error("replication config: {0}")]
    Config(String),
    /// Placements, counts or banks that do not fit together.
    #[error("replication: {0}")]
    Shape(String),
    /// The load window refused the step's counts.
    #[error("routing statistics: {0}")]
    Load(#[from] LoadError),
    /// A new placement could not be built.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// The rebalancing algorithm refused.
    #[error(transparent)]
    Rebalance(#[from] RebalanceError),
    /// A rank could not follow the step's directive (epochs out of order, a missing layer).
    #[error("migration on EP rank {rank}: {message}")]
    Migration {
        /// The rank's index in its EP group.
        rank: usize,
        /// What went wrong.
        message: String,
    },
    /// Copying weights between ranks failed.
    #[error("migrating expert weights: {0}")]
    Comm(#[from] crate::comm::CommError),
    /// The model refused a bank or a placement.
    #[error("migrating expert weights: {0}")]
    Model(#[from] crate::Error),
    /// The routing trace file could not be written.
    #[error("routing trace {}: {source}", path.display())]
    Trace {
        /// The trace file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}
