//! The collectives written once over point-to-point byte links. A communicator provides only
//! how bytes reach a peer and come back from one ([`Links`]); every collective — all-reduce,
//! reduce-scatter, all-gather, all-to-all-v, send/recv, broadcast, barrier — is built here, so
//! the in-process and the TCP communicators move the same messages in the same order, and an
//! implementation over another transport gets them for free.
//!
//! Every collective sends everything first and then receives; with unbounded receive queues no
//! ordering of ranks can deadlock. Reductions sum in rank order, so results are bit-identical.

use super::element::{decode, encode};
use super::{even_counts, CommError, Element, Op};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

/// One message between two ranks: which operation it belongs to and its bytes.
pub(crate) struct Message {
    pub op: Op,
    pub payload: Vec<u8>,
}

/// A rank's byte links to the other ranks of its group.
pub(crate) trait Links {
    /// The group's name ("tp", "ep", "pp", "world").
    fn group_name(&self) -> String;
    /// This rank within the group.
    fn link_rank(&self) -> usize;
    /// Ranks in the group.
    fn link_size(&self) -> usize;
    /// Sends `payload` to `dst` (another rank), counting the bytes.
    fn send_bytes(&self, op: Op, dst: usize, payload: Vec<u8>) -> Result<(), CommError>;
    /// The next message from `src`, which must belong to `op`.
    fn recv_bytes(&self, op: Op, src: usize) -> Result<Vec<u8>, CommError>;
    /// Payload bytes sent to other ranks so far.
    fn bytes_sent(&self) -> u64;

    /// The other ranks, in rank order.
    fn others(&self) -> Vec<usize> {
        (0..self.link_size())
            .filter(|&r| r != self.link_rank())
            .collect()
    }

    /// An argument error naming the group, the rank and the operation.
    fn bad(&self, op: Op, message: String) -> CommError {
        CommError::BadArgument {
            group: self.group_name(),
            rank: self.link_rank(),
            op,
            message,
        }
    }

    /// `peer` must be another rank of the group.
    fn check_peer(&self, op: Op, peer: usize, what: &str) -> Result<(), CommError> {
        if peer >= self.link_size() || peer == self.link_rank() {
            let size = self.link_size();
            return Err(self.bad(
                op,
                format!("{what} {peer} must be another rank of this group of {size}"),
            ));
        }
        Ok(())
    }

    /// One count per rank, summing to the buffer's length.
    fn check_counts(&self, op: Op, len: usize, counts: &[usize]) -> Result<(), CommError> {
        if counts.len() != self.link_size() {
            return Err(self.bad(
                op,
                format!(
                    "{} counts for a group of {} ranks",
                    counts.len(),
                    self.link_size()
                ),
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

    /// Sends elements to `dst`.
    fn send_elems<T: Element>(&self, op: Op, dst: usize, data: &[T]) -> Result<(), CommError> {
        self.send_bytes(op, dst, encode(data))
    }

    /// Receives elements from `src`; `expect` checks the length when the receiver knows it.
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
                format!(
                    "rank {src} sent {} elements where {n} were expected \
                     (every rank must pass the same length and counts)",
                    data.len()
                ),
            )),
            _ => Ok(data),
        }
    }

    /// Every rank's contribution to this rank's chunk, summed in rank order.
    fn reduce_own_chunk(&self, op: Op, own: &[f32]) -> Result<Vec<f32>, CommError> {
        let mut acc: Vec<f32> = Vec::new();
        for src in 0..self.link_size() {
            let part = if src == self.link_rank() {
                own.to_vec()
            } else {
                self.recv_elems(op, src, Some(own.len()))?
            };
            if src == 0 {
                acc = part;
            } else {
                acc.iter_mut().zip(&part).for_each(|(a, x)| *a += *x);
            }
        }
        Ok(acc)
    }

    /// [`super::Communicator::all_reduce_sum`]: reduce-scatter, then all-gather of the owners'
    /// exact bits.
    fn links_all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), CommError> {
        let (rank, size) = (self.link_rank(), self.link_size());
        if size == 1 {
            return Ok(());
        }
        let op = Op::AllReduce;
        let counts = even_counts(buf.len(), size);
        let offs = offsets(&counts);
        let range = |r: usize| offs[r]..offs[r] + counts[r];
        for dst in self.others() {
            self.send_elems(op, dst, &buf[range(dst)])?;
        }
        let mine = self.reduce_own_chunk(op, &buf[range(rank)])?;
        for dst in self.others() {
            self.send_elems(op, dst, &mine)?;
        }
        buf[range(rank)].copy_from_slice(&mine);
        for src in self.others() {
            let chunk = self.recv_elems::<f32>(op, src, Some(counts[src]))?;
            buf[range(src)].copy_from_slice(&chunk);
        }
        Ok(())
    }

    /// [`super::Communicator::reduce_scatter_sum`].
    fn links_reduce_scatter_sum(
        &self,
        input: &[f32],
        counts: &[usize],
    ) -> Result<Vec<f32>, CommError> {
        let op = Op::ReduceScatter;
        self.check_counts(op, input.len(), counts)?;
        let offs = offsets(counts);
        let part = |r: usize| &input[offs[r]..offs[r] + counts[r]];
        for dst in self.others() {
            self.send_elems(op, dst, part(dst))?;
        }
        self.reduce_own_chunk(op, part(self.link_rank()))
    }

    /// [`super::Communicator::all_gather`] for any element type.
    fn links_all_gather<T: Element>(&self, data: &[T]) -> Result<(Vec<T>, Vec<usize>), CommError> {
        for dst in self.others() {
            self.send_elems(Op::AllGather, dst, data)?;
        }
        let mut out = Vec::new();
        let mut counts = Vec::with_capacity(self.link_size());
        for src in 0..self.link_size() {
            if src == self.link_rank() {
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

    /// [`super::Communicator::all_to_all_v`] for any element type.
    fn links_all_to_all<T: Element>(
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
        let mut counts = Vec::with_capacity(self.link_size());
        for src in 0..self.link_size() {
            if src == self.link_rank() {
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

    /// [`super::Communicator::send`].
    fn links_send(&self, data: &[f32], dst: usize) -> Result<(), CommError> {
        self.check_peer(Op::PointToPoint, dst, "destination")?;
        self.send_elems(Op::PointToPoint, dst, data)
    }

    /// [`super::Communicator::recv`].
    fn links_recv(&self, src: usize) -> Result<Vec<f32>, CommError> {
        self.check_peer(Op::PointToPoint, src, "source")?;
        self.recv_elems(Op::PointToPoint, src, None)
    }

    /// [`super::Communicator::broadcast`].
    fn links_broadcast(&self, buf: &mut Vec<f32>, root: usize) -> Result<(), CommError> {
        if root >= self.link_size() {
            let size = self.link_size();
            return Err(self.bad(
                Op::Broadcast,
                format!("root {root} is not a rank of this group of {size}"),
            ));
        }
        if self.link_rank() == root {
            for dst in self.others() {
                self.send_elems(Op::Broadcast, dst, buf)?;
            }
        } else {
            *buf = self.recv_elems(Op::Broadcast, root, None)?;
        }
        Ok(())
    }

    /// [`super::Communicator::barrier`].
    fn links_barrier(&self) -> Result<(), CommError> {
        for dst in self.others() {
            self.send_bytes(Op::Barrier, dst, Vec::new())?;
        }
        for src in self.others() {
            self.recv_bytes(Op::Barrier, src)?;
        }
        Ok(())
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

/// The next message on `rx` within `timeout`, checked to belong to `op`: a closed channel is
/// the peer gone, silence a timeout, another operation a mismatch.
pub(crate) fn recv_message(
    rx: &Receiver<Message>,
    timeout: Duration,
    (group, rank, src): (String, usize, usize),
    op: Op,
) -> Result<Vec<u8>, CommError> {
    let msg = rx.recv_timeout(timeout).map_err(|e| match e {
        RecvTimeoutError::Timeout => CommError::Timeout {
            group: group.clone(),
            rank,
            peer: src,
            op,
            after: timeout,
        },
        RecvTimeoutError::Disconnected => CommError::PeerGone {
            group: group.clone(),
            rank,
            peer: src,
            op,
        },
    })?;
    if msg.op != op {
        return Err(CommError::Mismatch {
            group,
            rank,
            peer: src,
            expected: op,
            got: msg.op,
        });
    }
    Ok(msg.payload)
}

/// `impl Communicator` for a type that implements [`Links`].
macro_rules! communicator_over_links {
    ($t:ty) => {
        impl $crate::comm::Communicator for $t {
            fn rank(&self) -> usize {
                $crate::comm::links::Links::link_rank(self)
            }
            fn size(&self) -> usize {
                $crate::comm::links::Links::link_size(self)
            }
            fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), $crate::comm::CommError> {
                self.links_all_reduce_sum(buf)
            }
            fn reduce_scatter_sum(
                &self,
                input: &[f32],
                counts: &[usize],
            ) -> Result<Vec<f32>, $crate::comm::CommError> {
                self.links_reduce_scatter_sum(input, counts)
            }
            fn all_gather(
                &self,
                data: &[f32],
            ) -> Result<(Vec<f32>, Vec<usize>), $crate::comm::CommError> {
                self.links_all_gather(data)
            }
            fn all_gather_u32(
                &self,
                data: &[u32],
            ) -> Result<(Vec<u32>, Vec<usize>), $crate::comm::CommError> {
                self.links_all_gather(data)
            }
            fn all_to_all_v(
                &self,
                send: &[f32],
                counts: &[usize],
            ) -> Result<(Vec<f32>, Vec<usize>), $crate::comm::CommError> {
                self.links_all_to_all(send, counts)
            }
            fn all_to_all_v_u32(
                &self,
                send: &[u32],
                counts: &[usize],
            ) -> Result<(Vec<u32>, Vec<usize>), $crate::comm::CommError> {
                self.links_all_to_all(send, counts)
            }
            fn send(&self, data: &[f32], dst: usize) -> Result<(), $crate::comm::CommError> {
                self.links_send(data, dst)
            }
            fn recv(&self, src: usize) -> Result<Vec<f32>, $crate::comm::CommError> {
                self.links_recv(src)
            }
            fn broadcast(
                &self,
                buf: &mut Vec<f32>,
                root: usize,
            ) -> Result<(), $crate::comm::CommError> {
                self.links_broadcast(buf, root)
            }
            fn barrier(&self) -> Result<(), $crate::comm::CommError> {
                self.links_barrier()
            }
            fn bytes_moved(&self) -> u64 {
                self.bytes_sent()
            }
        }
    };
}
pub(crate) use communicator_over_links;
