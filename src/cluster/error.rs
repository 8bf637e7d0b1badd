//! What starting or running a multi-node job can fail at; every message names the node.

use crate::comm::tcp::FabricError;
use std::time::Duration;

/// Errors of the rendezvous, the mesh and the follower loop.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Flags or layout values that do not describe a job.
    #[error("cluster: {0}")]
    Spec(String),
    /// Node 0 cannot listen on the rendezvous address.
    #[error("node 0 cannot listen for the rendezvous on {addr}: {why}")]
    Listen {
        /// The address.
        addr: String,
        /// Why, in words (a port in use says so).
        why: String,
    },
    /// A follower could not reach node 0.
    #[error(
        "node {node}: could not reach the rendezvous at {addr} (node 0) within {after:?}: {why}"
    )]
    Unreachable {
        /// This node.
        node: usize,
        /// The rendezvous address.
        addr: String,
        /// How long it tried.
        after: Duration,
        /// The last error.
        why: String,
    },
    /// Nodes that never arrived at the rendezvous.
    #[error("rendezvous at {addr}: node(s) {missing:?} never arrived within {after:?} (arrived: {arrived:?})")]
    Missing {
        /// The rendezvous address.
        addr: String,
        /// Node ranks that did not say hello.
        missing: Vec<usize>,
        /// Node ranks that did (node 0 included).
        arrived: Vec<usize>,
        /// How long node 0 waited.
        after: Duration,
    },
    /// A node whose model, layout or version differs from node 0's.
    #[error("node {node} does not match node 0: {what}")]
    Mismatch {
        /// The node that differs.
        node: usize,
        /// What differs, with both values.
        what: String,
    },
    /// Node 0 refused this node or called the job off.
    #[error("node {node}: node 0 refused the job: {why}")]
    Refused {
        /// This node.
        node: usize,
        /// Node 0's reason.
        why: String,
    },
    /// Another node went away or broke the protocol.
    #[error("node {node}: {why}")]
    Peer {
        /// This node.
        node: usize,
        /// What happened.
        why: String,
    },
    /// The data connections between nodes.
    #[error(transparent)]
    Fabric(#[from] FabricError),
    /// Loading or running the model.
    #[error(transparent)]
    Engine(#[from] crate::Error),
}
