//! The device channels of in-process GPU ranks: a *part* (a range of a sender's buffer and the
//! event after which it is ready) travels to the receiver, a *done* event (after which the
//! receiver's copies of it are queued) travels back.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use cudarc::driver::CudaEvent;

use crate::backend::cuda::storage::CudaStorage;
use crate::comm::Op;

/// Elements `offset..offset + len` of a sender's buffer, readable once `ready` has fired.
pub(super) struct Part {
    pub op: Op,
    pub data: CudaStorage,
    pub offset: usize,
    pub len: usize,
    pub ready: Arc<CudaEvent>,
}

/// The receiver's copies of a part are queued before `done`; `keep` holds the sender's
/// buffer until the sender's stream has waited on it.
pub(super) struct Done {
    pub keep: CudaStorage,
    pub done: Arc<CudaEvent>,
}

/// One rank's device channels in a group: parts out to and in from every other rank, and the
/// done events coming back. Made for a whole group by [`DeviceLinks::group`], bound to the
/// rank's GPU in its own thread by [`GpuLocalComm::new`].
pub struct DeviceLinks {
    pub(super) rank: usize,
    pub(super) parts_to: Vec<Option<Sender<Part>>>,
    pub(super) parts_from: Vec<Option<Receiver<Part>>>,
    pub(super) done_to: Vec<Option<Sender<Done>>>,
    pub(super) done_from: Vec<Option<Receiver<Done>>>,
}

impl std::fmt::Debug for DeviceLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceLinks(rank {})", self.rank)
    }
}

/// `[s][d]`: the end of the channel from rank `s` to rank `d` (none from a rank to itself).
type Ends<E> = Vec<Vec<Option<E>>>;

fn mesh<T>(size: usize) -> (Ends<Sender<T>>, Ends<Receiver<T>>) {
    let mut to: Ends<Sender<T>> = (0..size)
        .map(|_| (0..size).map(|_| None).collect())
        .collect();
    let mut from: Ends<Receiver<T>> = (0..size)
        .map(|_| (0..size).map(|_| None).collect())
        .collect();
    for s in 0..size {
        for d in (0..size).filter(|&d| d != s) {
            let (tx, rx) = channel();
            to[s][d] = Some(tx);
            from[d][s] = Some(rx);
        }
    }
    (to, from)
}

impl DeviceLinks {
    /// The device channels of a fully connected group of `size` ranks; element `r` is rank
    /// `r`'s end.
    pub fn group(size: usize) -> Vec<DeviceLinks> {
        let (parts_to, parts_from) = mesh::<Part>(size);
        let (done_to, done_from) = mesh::<Done>(size);
        parts_to
            .into_iter()
            .zip(parts_from)
            .zip(done_to.into_iter().zip(done_from))
            .enumerate()
            .map(
                |(rank, ((parts_to, parts_from), (done_to, done_from)))| DeviceLinks {
                    rank,
                    parts_to,
                    parts_from,
                    done_to,
                    done_from,
                },
            )
            .collect()
    }
}
