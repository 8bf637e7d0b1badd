//! `TcpComm`: one rank's end of a group whose ranks may live in other processes.
//!
//! The collectives are the in-process ones ([`crate::comm::LocalComm`]) move for move: every
//! collective sends everything first and then receives (incoming frames are drained into
//! unbounded channels by the node's reader threads, so a send never waits on the peer's
//! progress and no ordering of ranks can deadlock), and reductions sum in rank order.

use super::fabric::NodeLink;
use super::frame::{Frame, GroupKind};
use crate::comm::element::{decode, encode};
use crate::comm::{even_counts, CommError, Communicator, Element, Op};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

/// One message between two ranks: which operation it belongs to and its bytes.
pub(crate) struct Message {
    pub op: Op,
    pub payload: Vec<u8>,
}

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

    fn bad(&self, op: Op, message: String) -> CommError {
        CommError::BadArgument {
            group: self.group(),
            rank: self.rank,
            op,
            message,
        }
    }

    fn gone(&self, op: Op, peer: usize) -> CommError {
        CommError::PeerGone {
            group: self.group(),
            rank: self.rank,
            peer,
            op,
        }
    }

    fn check_peer(&self, op: Op, peer: usize, what: &str) -> Result<(), CommError> {
        if peer >= self.size || peer == self.rank {
            return Err(self.bad(
                op,
                format!(
                    "{what} {peer} must be another rank of this group of {}",
                    self.size
                ),
            ));
        }
        Ok(())
    }

    fn check_counts(&self, op: Op, len: usize, counts: &[usize]) -> Result<(), CommError> {
        if counts.len() != self.size {
            return Err(self.bad(
                op,
                format!("{} counts for a group of {} ranks", counts.len(), self.size),
            ));
        }
        let total: usize = counts.iter().sum();
        if total != len {
            return Err(self.bad(
                op,
                format!("counts sum to {total} but the buffer holds {len}"),
            ));
        }
        Ok(())
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
        let msg = rx.recv_timeout(self.timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => CommError::Timeout {
                group: self.group(),
                rank: self.rank,
                peer: src,
                op,
                after: self.timeout,
            },
            RecvTimeoutError::Disconnected => self.gone(op, src),
        })?;
        if msg.op != op {
            return Err(CommError::Mismatch {
                group: self.group(),
                rank: self.rank,
                peer: src,
                expected: op,
                got: msg.op,
            });
        }
        Ok(msg.payload)
    }

    fn send_elems<T: Element>(&self, op: Op, dst: usize, data: &[T]) -> Result<(), CommError> {
        self.send_bytes(op, dst, encode(data))
    }

    fn recv_elems<T: Element>(
        &self,
        op: Op,
        src: usize,
        expect: Option<usize>,
    ) -> Result<Vec<T>, CommError> {
        let bytes = self.recv_bytes(op, src)?;
        let data = decode::<T>(&bytes).ok_or_else(|| {
            self.bad(
                op,
                format!(
                    "{} bytes from rank {src} are not whole elements",
                    bytes.len()
                ),
            )
        })?;
        match expect {
            Some(n) if n != data.len() => Err(self.bad(
                op,
                format!("rank {src} sent {} elements where {n} were expected (every rank must pass the same length and counts)", data.len()),
            )),
            _ => Ok(data),
        }
    }

    fn others(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.size).filter(move |&r| r != self.rank)
    }

    /// Every rank's contribution to this rank's chunk, summed in rank order.
    fn reduce_own_chunk(&self, op: Op, own: &[f32]) -> Result<Vec<f32>, CommError> {
        let mut parts: Vec<Vec<f32>> = Vec::with_capacity(self.size);
        for src in 0..self.size {
            if src == self.rank {
                parts.push(own.to_vec());
            } else {
                parts.push(self.recv_elems(op, src, Some(own.len()))?);
            }
        }
        let mut acc = parts[0].clone();
        for p in &parts[1..] {
            acc.iter_mut().zip(p).for_each(|(a, x)| *a += *x);
        }
        Ok(acc)
    }

    fn gather_impl<T: Element>(&self, data: &[T]) -> Result<(Vec<T>, Vec<usize>), CommError> {
        for dst in self.others() {
            self.send_elems(Op::AllGather, dst, data)?;
        }
        let mut out = Vec::new();
        let mut counts = Vec::with_capacity(self.size);
        for src in 0..self.size {
            if src == self.rank {
                out.extend_from_slice(data);
                counts.push(data.len());
            } else {
                let part = self.recv_elems::<T>(Op::AllGather, src, None)?;
                counts.push(part.len());
                out.extend(part);
            }
        }
        Ok((out, counts))
    }

    fn all_to_all_impl<T: Element>(
        &self,
        send: &[T],
        send_counts: &[usize],
    ) -> Result<(Vec<T>, Vec<usize>), CommError> {
        self.check_counts(Op::AllToAll, send.len(), send_counts)?;
        let offs = offsets(send_counts);
        let part = |r: usize| &send[offs[r]..offs[r] + send_counts[r]];
        for dst in self.others() {
            self.send_elems(Op::AllToAll, dst, part(dst))?;
        }
        let mut out = Vec::new();
        let mut counts = Vec::with_capacity(self.size);
        for src in 0..self.size {
            if src == self.rank {
                out.extend_from_slice(part(src));
                counts.push(send_counts[src]);
            } else {
                let got = self.recv_elems::<T>(Op::AllToAll, src, None)?;
                counts.push(got.len());
                out.extend(got);
            }
        }
        Ok((out, counts))
    }
}

/// Start offset of each part.
fn offsets(counts: &[usize]) -> Vec<usize> {
    counts
        .iter()
        .scan(0, |acc, &c| {
            let o = *acc;
            *acc += c;
            Some(o)
        })
        .collect()
}

impl Communicator for TcpComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), CommError> {
        if self.size == 1 {
            return Ok(());
        }
        let op = Op::AllReduce;
        let counts = even_counts(buf.len(), self.size);
        let offs = offsets(&counts);
        let range = |r: usize| offs[r]..offs[r] + counts[r];
        for dst in self.others() {
            self.send_elems(op, dst, &buf[range(dst)])?;
        }
        let mine = self.reduce_own_chunk(op, &buf[range(self.rank)])?;
        for dst in self.others() {
            self.send_elems(op, dst, &mine)?;
        }
        buf[range(self.rank)].copy_from_slice(&mine);
        for src in self.others() {
            let chunk = self.recv_elems::<f32>(op, src, Some(counts[src]))?;
            buf[range(src)].copy_from_slice(&chunk);
        }
        Ok(())
    }

    fn reduce_scatter_sum(&self, input: &[f32], counts: &[usize]) -> Result<Vec<f32>, CommError> {
        let op = Op::ReduceScatter;
        self.check_counts(op, input.len(), counts)?;
        let offs = offsets(counts);
        let part = |r: usize| &input[offs[r]..offs[r] + counts[r]];
        for dst in self.others() {
            self.send_elems(op, dst, part(dst))?;
        }
        self.reduce_own_chunk(op, part(self.rank))
    }

    fn all_gather(&self, data: &[f32]) -> Result<(Vec<f32>, Vec<usize>), CommError> {
        self.gather_impl(data)
    }

    fn all_gather_u32(&self, data: &[u32]) -> Result<(Vec<u32>, Vec<usize>), CommError> {
        self.gather_impl(data)
    }

    fn all_to_all_v(
        &self,
        send: &[f32],
        send_counts: &[usize],
    ) -> Result<(Vec<f32>, Vec<usize>), CommError> {
        self.all_to_all_impl(send, send_counts)
    }

    fn all_to_all_v_u32(
        &self,
        send: &[u32],
        send_counts: &[usize],
    ) -> Result<(Vec<u32>, Vec<usize>), CommError> {
        self.all_to_all_impl(send, send_counts)
    }

    fn send(&self, data: &[f32], dst: usize) -> Result<(), CommError> {
        self.check_peer(Op::PointToPoint, dst, "destination")?;
        self.send_elems(Op::PointToPoint, dst, data)
    }

    fn recv(&self, src: usize) -> Result<Vec<f32>, CommError> {
        self.check_peer(Op::PointToPoint, src, "source")?;
        self.recv_elems(Op::PointToPoint, src, None)
    }

    fn broadcast(&self, buf: &mut Vec<f32>, root: usize) -> Result<(), CommError> {
        if root >= self.size {
            return Err(self.bad(
                Op::Broadcast,
                format!("root {root} is not a rank of this group of {}", self.size),
            ));
        }
        if self.rank == root {
            for dst in self.others() {
                self.send_elems(Op::Broadcast, dst, buf)?;
            }
        } else {
            *buf = self.recv_elems(Op::Broadcast, root, None)?;
        }
        Ok(())
    }

    fn barrier(&self) -> Result<(), CommError> {
        for dst in self.others() {
            self.send_bytes(Op::Barrier, dst, Vec::new())?;
        }
        for src in self.others() {
            self.recv_bytes(Op::Barrier, src)?;
        }
        Ok(())
    }

    fn bytes_moved(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}
