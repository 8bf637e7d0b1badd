//! Multi-node runs: one process per node, each running its share of the world's ranks as
//! threads, connected by TCP communicators ([`crate::comm::tcp`]).
//!
//! `switchyard serve|score|generate --nodes N --node-rank R --rendezvous HOST:PORT`:
//! 1. [`rendezvous`]: node 0 listens; every other node connects and says hello with its model's
//!    identity ([`ModelIdentity`]), its layout and its version; node 0 checks they all match and
//!    answers with the address book (every node's data address; the NCCL version adds the NCCL
//!    unique ids) and the KV-cache size every rank allocates.
//! 2. The nodes open a full mesh of data connections and build every local rank's TP, EP and PP
//!    communicators over it ([`crate::comm::tcp::Fabric`]); each loads its ranks' shards.
//! 3. Node 0 is the driver ([`ClusterExecutor`], an [`crate::engine::Executor`]): it runs the
//!    scheduler and HTTP (or score/generate), sends every step's batch to the other nodes over
//!    the rendezvous connection and gathers their ranks' outputs. The other nodes run
//!    [`follow`]: step plans in, rank outputs out, until the driver says stop.
//!
//! A node that dies is noticed by the others at once (its sockets close): the driver's steps
//! fail with an error naming the node, [`FaultFlag`] makes `/health` say so, and the followers
//! exit with an error. Silence is caught by the communicators' timeouts.

mod args;
mod error;
mod executor;
mod follower;
mod identity;
mod node;
pub mod rendezvous;
mod wire;

pub use args::{ClusterArgs, ClusterSpec};
pub use error::ClusterError;
pub use executor::ClusterExecutor;
pub use follower::follow;
pub use identity::ModelIdentity;

use std::sync::{Arc, Mutex};

/// Set once the cluster has failed (a node died, a rank failed); read by `/health`.
#[derive(Debug, Clone, Default)]
pub struct FaultFlag(Arc<Mutex<Option<String>>>);

impl FaultFlag {
    /// Records the first failure (later ones are kept out: the first is the cause).
    pub fn set(&self, why: impl Into<String>) {
        let mut f = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(why.into());
        }
    }

    /// The failure, if there was one.
    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// This build's version, compared at the rendezvous.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
