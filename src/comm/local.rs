//! `LocalComm`: ranks as threads of one process, exchanging real copies of bytes through one
//! channel per ordered pair of ranks.
//!
//! Nothing is shared between ranks but the bytes each collective sends, so the in-process ranks
//! run the same code paths a multi-GPU run will. Channels are unbounded (a send never blocks), so
//! every collective sends everything first and then receives: no ordering of threads can
//! deadlock. A peer that dropped its communicator disconnects its channels (an error at once); a
//! peer that is alive but silent is an error after the timeout.

use super::links::{communicator_over_links, recv_message, Links, Message};
use super::{CommError, Op};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

/// One rank's end of an in-process group.
pub struct LocalComm {
    group: String,
    rank: usize,
    size: usize,
    /// `to[d]`: channel to rank `d` (`None` for this rank).
    to: Vec<Option<Sender<Message>>>,
    /// `from[s]`: channel from rank `s` (`None` for this rank).
    from: Vec<Option<Receiver<Message>>>,
    timeout: Duration,
    bytes: AtomicU64,
}

impl std::fmt::Debug for LocalComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalComm")
            .field("group", &self.group)
            .field("rank", &self.rank)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl LocalComm {
    /// A fully connected group of `size` ranks named `group`; element `r` is rank `r`'s end.
    /// A receive waits at most `timeout` for a live peer.
    pub fn group(group: &str, size: usize, timeout: Duration) -> Vec<LocalComm> {
        let mut to: Vec<Vec<Option<Sender<Message>>>> = (0..size)
            .map(|_| (0..size).map(|_| None).collect())
            .collect();
        let mut from: Vec<Vec<Option<Receiver<Message>>>> = (0..size)
            .map(|_| (0..size).map(|_| None).collect())
            .collect();
        for s in 0..size {
            for d in 0..size {
                if s != d {
                    let (tx, rx) = channel();
                    to[s][d] = Some(tx);
                    from[d][s] = Some(rx);
                }
            }
        }
        to.into_iter()
            .zip(from)
            .enumerate()
            .map(|(rank, (to, from))| LocalComm {
                group: group.to_string(),
                rank,
                size,
                to,
                from,
                timeout,
                bytes: AtomicU64::new(0),
            })
            .collect()
    }

    /// The group's name ("tp", "ep", "pp", "world").
    pub fn name(&self) -> &str {
        &self.group
    }
}

impl Links for LocalComm {
    fn group_name(&self) -> String {
        self.group.clone()
    }

    fn link_rank(&self) -> usize {
        self.rank
    }

    fn link_size(&self) -> usize {
        self.size
    }

    fn send_bytes(&self, op: Op, dst: usize, payload: Vec<u8>) -> Result<(), CommError> {
        let n = payload.len() as u64;
        let tx = self.to[dst].as_ref().expect("no channel to self");
        tx.send(Message { op, payload })
            .map_err(|_| CommError::PeerGone {
                group: self.group.clone(),
                rank: self.rank,
                peer: dst,
                op,
            })?;
        self.bytes.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    fn recv_bytes(&self, op: Op, src: usize) -> Result<Vec<u8>, CommError> {
        let rx = self.from[src].as_ref().expect("no channel from self");
        recv_message(rx, self.timeout, (self.group.clone(), self.rank, src), op)
    }

    fn bytes_sent(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

communicator_over_links!(LocalComm);
