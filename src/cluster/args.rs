//! `--nodes --node-rank --rendezvous`: which node of a multi-node job this process is.

use super::ClusterError;
use crate::layout::Layout;
use crate::parallel::RankDevices;
use clap::Args;
use std::time::Duration;

/// The multi-node flags every model-running subcommand shares (flatten into its args).
#[derive(Debug, Clone, Default, Args)]
pub struct ClusterArgs {
    /// Nodes (processes) the ranks span (default: the layout's [parallel] nodes, else 1).
    #[arg(long)]
    pub nodes: Option<usize>,
    /// This node's rank, 0..nodes; node 0 drives (serves HTTP, scores, generates), the others
    /// follow its step plans.
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,
    /// HOST:PORT of node 0's rendezvous (node 0 listens there, the others connect).
    #[arg(long, value_name = "HOST:PORT")]
    pub rendezvous: Option<String>,
    /// Seconds the rendezvous waits for every node to arrive.
    #[arg(long, default_value_t = 120)]
    pub rendezvous_timeout_secs: u64,
    /// Seconds a rank waits for a silent peer before failing the step.
    #[arg(long, default_value_t = 120)]
    pub comm_timeout_secs: u64,
}

/// A validated multi-node job, as this node sees it.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Nodes in the job (more than one).
    pub nodes: usize,
    /// This node.
    pub node_rank: usize,
    /// HOST:PORT of node 0's rendezvous.
    pub rendezvous: String,
    /// How long the rendezvous (and the mesh) waits for every node.
    pub join_timeout: Duration,
    /// How long a rank waits for a silent peer.
    pub comm_timeout: Duration,
    /// Where this node's ranks run (set by the caller; CPU by default). Every node must run
    /// its ranks alike: the rendezvous compares them.
    pub devices: RankDevices,
}

impl ClusterSpec {
    /// Whether this node drives the job (node 0).
    pub fn is_driver(&self) -> bool {
        self.node_rank == 0
    }
}

impl ClusterArgs {
    /// The job these flags and `layout` describe: `None` for a single node. Records the node
    /// count and ranks per node in `layout` (so every node's layout, which the rendezvous
    /// compares, says how the world is split).
    pub fn resolve(&self, layout: &mut Layout) -> Result<Option<ClusterSpec>, ClusterError> {
        let nodes = self.nodes.or(layout.parallel.nodes).unwrap_or(1);
        if nodes == 0 {
            return Err(ClusterError::Spec("--nodes must be at least 1".into()));
        }
        if self.node_rank >= nodes {
            return Err(ClusterError::Spec(format!(
                "--node-rank {} is not below --nodes {nodes}",
                self.node_rank
            )));
        }
        if nodes == 1 {
            return Ok(None);
        }
        let world = layout.world();
        if !world.is_multiple_of(nodes) {
            return Err(ClusterError::Spec(format!(
                "{world} ranks (ep {} x pp {}) do not split evenly over {nodes} nodes",
                layout.parallel.ep, layout.parallel.pp
            )));
        }
        let per_node = layout.parallel.gpus_per_node.unwrap_or(world / nodes);
        if per_node * nodes != world {
            return Err(ClusterError::Spec(format!(
                "{nodes} nodes x gpus_per_node {per_node} = {} ranks, but the layout has {world} (ep {} x pp {}); use {} per node",
                per_node * nodes,
                layout.parallel.ep,
                layout.parallel.pp,
                world / nodes
            )));
        }
        let Some(rendezvous) = self.rendezvous.clone() else {
            return Err(ClusterError::Spec(format!(
                "{nodes} nodes need --rendezvous HOST:PORT (node 0's address)"
            )));
        };
        layout.parallel.nodes = Some(nodes);
        layout.parallel.gpus_per_node = Some(per_node);
        Ok(Some(ClusterSpec {
            nodes,
            node_rank: self.node_rank,
            rendezvous,
            join_timeout: Duration::from_secs(self.rendezvous_timeout_secs.max(1)),
            comm_timeout: Duration::from_secs(self.comm_timeout_secs.max(1)),
            devices: RankDevices::Cpu,
        }))
    }
}
