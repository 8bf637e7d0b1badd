//! `LocalComm`: ranks as threads of one process, exchanging real copies of bytes through one
//! channel per ordered pair of ranks.
//!
//! Nothing is shared between ranks but the bytes each collective sends, so the in-process ranks
//! run the same code paths a multi-GPU run will. Channels are unbounded (a send never blocks), so
//! every collective sends everything first and then receives: no ordering of threads can
//! deadlock. A peer that dropped its communicator disconnects its channels (an error at once); a
//! peer that is alive but silent is an error after the timeout.

use super::element::{decode, encode};
use super::{even_counts, CommError, Communicator, Element, Op};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

/// One message between two ranks: which operation it belongs to and its bytes.
struct Message {
    op: Op,
    payload: Vec<u8>,
}

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

    fn bad(&self, op: Op, message: String) -> CommError {
        CommError::BadArgument {
            group: self.group.clone(),
            rank: self.rank,
            op,
            message,
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
        let msg = rx.recv_timeout(self.timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => CommError::Timeout {
                group: self.group.clone(),
                rank: self.rank,
                peer: src,
                op,
                after: self.timeout,
            },
            RecvTimeoutError::Disconnected => CommError::PeerGone {
                group: self.group.clone(),
                rank: self.rank,
                peer: src,
                op,
            },
        })?;
        if msg.op != op {
            return Err(CommError::Mismatch {
                group: self.group.clone(),
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

    /// Rank `src`'s contribution to this rank's chunk, for every `src` in rank order, summed in
    /// rank order (deterministic).
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
            for (a, x) in acc.iter_mut().zip(p) {
                *a += *x;
            }
        }
        Ok(acc)
    }

    fn gather_impl<T: Element>(&self, data: &[T]) -> Result<(Vec<T>, Vec<usize>), CommError> {
        for dst in (0..self.size).filter(|&d| d != self.rank) {
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
        let offsets = offsets(send_counts);
        let part = |r: usize| &send[offsets[r]..offsets[r] + send_counts[r]];
        for dst in (0..self.size).filter(|&d| d != self.rank) {
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

impl Communicator for LocalComm {
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
        // Reduce-scatter: rank r sums chunk r in rank order.
        for dst in (0..self.size).filter(|&d| d != self.rank) {
            self.send_elems(op, dst, &buf[range(dst)])?;
        }
        let mine = self.reduce_own_chunk(op, &buf[range(self.rank)])?;
        // All-gather of the reduced chunks: every rank ends with the owners' exact bits.
        for dst in (0..self.size).filter(|&d| d != self.rank) {
            self.send_elems(op, dst, &mine)?;
        }
        buf[range(self.rank)].copy_from_slice(&mine);
        for src in (0..self.size).filter(|&s| s != self.rank) {
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
        for dst in (0..self.size).filter(|&d| d != self.rank) {
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
            for dst in (0..self.size).filter(|&d| d != root) {
                self.send_elems(Op::Broadcast, dst, buf)?;
            }
        } else {
            *buf = self.recv_elems(Op::Broadcast, root, None)?;
        }
        Ok(())
    }

    fn barrier(&self) -> Result<(), CommError> {
        for dst in (0..self.size).filter(|&d| d != self.rank) {
            self.send_bytes(Op::Barrier, dst, Vec::new())?;
        }
        for src in (0..self.size).filter(|&s| s != self.rank) {
            self.recv_bytes(Op::Barrier, src)?;
        }
        Ok(())
    }

    fn bytes_moved(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}
