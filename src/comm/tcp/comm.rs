//! `TcpComm`: one rank's end of a group whose ranks may live in other processes.
//!
//! The collectives are the in-process ones ([`crate::comm::LocalComm`]) move for move: every
//! collective sends everything first and then receives (incoming frames are drained into
//! unbounded channels by the node's reader threads, so a send never waits on the peer's
//! progress and no ordering of ranks can deadlock), and reductions sum in rank order.

use super::fabric::NodeLink;
use super::frame::{Frame, GroupKind};
pub(crate) use crate::comm::links::Message;
use crate::comm::links::{communicator_over_links, recv_message, Links};
use crate::comm::{CommError, Op};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

/// How bytes reach one peer of the group.
pub(crate) enum Outbound {
    /// A rank of this process: its channel.
    Local(Sender<Message>),
    /// A rank of another node: that node's connection, and the peer's global rank.
    Remote(Arc<NodeLink>, u32),
}

/// One rank's end of a group spanning processes.
pub struct TcpComm {
    pub(crate) kind: GroupKind,
    pub(crate) rank: usize,
    pub(crate) size: usize,
    /// This rank's global id (the `src` of its frames).
    pub(crate) global: u32,
    /// `to[d]`: how to reach group rank `d` (`None` for this rank).
    pub(crate) to: Vec<Option<Outbound>>,
    /// `from[s]`: messages from group rank `s` (`None` for this rank).
    pub(crate) from: Vec<Option<Receiver<Message>>>,
    pub(crate) timeout: Duration,
    pub(crate) bytes: AtomicU64,
}

impl std::fmt::Debug for TcpComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpComm")
            .field("group", &self.kind.name())
            .field("rank", &self.rank)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Drop for TcpComm {
    /// Tells every remote peer that this end is gone, so it fails at once (local peers see
    /// their channel close).
    fn drop(&mut self) {
        for out in self.to.iter().flatten() {
            if let Outbound::Remote(link, peer) = out {
                let _ = link.send(&Frame::Hangup {
                    group: self.kind,
                    src: self.global,
                    dst: *peer,
                });
            }
        }
    }
}

impl TcpComm {
    /// The group's name ("tp", "ep", "pp").
    pub fn name(&self) -> &str {
        self.kind.name()
    }

    fn group(&self) -> String {
        self.kind.name().to_string()
    }

    fn gone(&self, op: Op, peer: usize) -> CommError {
        CommError::PeerGone {
            group: self.group(),
            rank: self.rank,
            peer,
            op,
        }
    }
}

impl Links for TcpComm {
    fn group_name(&self) -> String {
        self.group()
    }

    fn link_rank(&self) -> usize {
        self.rank
    }

    fn link_size(&self) -> usize {
        self.size
    }

    fn send_bytes(&self, op: Op, dst: usize, payload: Vec<u8>) -> Result<(), CommError> {
        let n = payload.len() as u64;
        match self.to[dst].as_ref().expect("no link to self") {
            Outbound::Local(tx) => tx
                .send(Message { op, payload })
                .map_err(|_| self.gone(op, dst))?,
            Outbound::Remote(link, peer) => {
                let frame = Frame::Data {
                    group: self.kind,
                    op,
                    src: self.global,
                    dst: *peer,
                    payload,
                };
                link.send(&frame).map_err(|e| match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => CommError::Timeout {
                        group: self.group(),
                        rank: self.rank,
                        peer: dst,
                        op,
                        after: self.timeout,
                    },
                    _ => self.gone(op, dst),
                })?
            }
        }
        self.bytes.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    fn recv_bytes(&self, op: Op, src: usize) -> Result<Vec<u8>, CommError> {
        let rx = self.from[src].as_ref().expect("no channel from self");
        recv_message(rx, self.timeout, (self.group(), self.rank, src), op)
    }

    fn bytes_sent(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

communicator_over_links!(TcpComm);
