//! `RankContext`: the communicators a rank's forward pass uses.

use crate::comm::{Communicator, LocalComm, RankComms};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

/// One rank's groups, as trait objects so in-process and NCCL communicators are interchangeable.
pub struct RankContext {
    /// The ranks sharing this rank's attention heads.
    pub tp: Box<dyn Communicator>,
    /// The ranks of this pipeline stage (experts).
    pub ep: Box<dyn Communicator>,
    /// The same index in every stage (hidden states flow along it).
    pub pp: Box<dyn Communicator>,
    /// A logical clock shared by the ranks, when stage work is being observed.
    pub clock: Option<Arc<AtomicU64>>,
}

impl RankContext {
    /// A world of one rank: every collective is a no-op.
    pub fn single() -> Self {
        let one = |name: &str| -> Box<dyn Communicator> {
            Box::new(LocalComm::group(name, 1, Duration::from_secs(1)).remove(0))
        };
        Self {
            tp: one("tp"),
            ep: one("ep"),
            pp: one("pp"),
            clock: None,
        }
    }

    /// The next tick of the shared clock, if there is one.
    pub fn tick(&self) -> Option<u64> {
        self.clock.as_deref().map(super::executor::tick)
    }

    /// Bytes all groups have sent to other ranks so far.
    pub fn bytes_moved(&self) -> u64 {
        self.tp.bytes_moved() + self.ep.bytes_moved() + self.pp.bytes_moved()
    }
}

impl From<RankComms> for RankContext {
    fn from(c: RankComms) -> Self {
        Self {
            tp: Box::new(c.tp),
            ep: Box::new(c.ep),
            pp: Box::new(c.pp),
            clock: None,
        }
    }
}

impl std::fmt::Debug for RankContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RankContext(tp {}/{}, ep {}/{}, pp {}/{})",
            self.tp.rank(),
            self.tp.size(),
            self.ep.rank(),
            self.ep.size(),
            self.pp.rank(),
            self.pp.size()
        )
    }
}
