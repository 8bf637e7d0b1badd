//! `GpuLocalComm`: in-process ranks whose tensors live on GPUs (several ranks may share one).
//!
//! Each rank queues its work on its own stream. A collective hands every destination a *part*:
//! the sender's buffer (shared, so it cannot be freed or overwritten in place meanwhile), the
//! element range and an event recorded after the sender's stream produced it. The receiver
//! learns the lengths from the parts (the counts come before any copy), sizes its output, makes
//! its stream wait on each part's event and copies the range device-to-device (peer copies
//! between GPUs), then returns a *done* event to the sender, whose stream waits on it before
//! it goes on: no copy reads memory its owner has released or rewritten, and the host never
//! waits for the GPU. Slice collectives go through the rank's [`LocalComm`].

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::{result as driver, CudaEvent};

use super::device_links::{DeviceLinks, Done, Part};
use super::{empty_rows, f32_storage, sum_parts};
use crate::backend::cuda::dev_err;
use crate::backend::cuda::storage::{CudaHandle, CudaStorage};
use crate::backend::Device;
use crate::comm::communicator::cols_of;
use crate::comm::links::Links;
use crate::comm::{even_counts, CommError, Communicator, LocalComm, Op};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// One rank's end of an in-process group of GPU ranks.
pub struct GpuLocalComm {
    host: LocalComm,
    links: DeviceLinks,
    dev: CudaHandle,
    timeout: Duration,
    bytes: AtomicU64,
    /// Done events each rank still owes for parts this rank sent point-to-point (a send does
    /// not wait for its receiver, as with the host communicators); they come back in order,
    /// ahead of any later collective's.
    owed: Vec<Cell<usize>>,
}

impl Drop for GpuLocalComm {
    fn drop(&mut self) {
        // A sent buffer may only be released once its receiver's copy is ordered before the
        // release; a peer that is gone has dropped the part (and never copied it).
        for d in self.host.others() {
            while self.owed[d].get() > 0 {
                if self
                    .settle(d, self.timeout.min(Duration::from_secs(5)))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
}

impl std::fmt::Debug for GpuLocalComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GpuLocalComm({} rank {}/{} on {:?})",
            self.host.name(),
            self.host.link_rank(),
            self.host.link_size(),
            self.dev
        )
    }
}

impl GpuLocalComm {
    /// The rank's communicator: `host` for slice collectives, `links` (the same rank of the
    /// same group) for device copies, `dev` the rank's own GPU stream. A receive waits at most
    /// `timeout` for a live peer.
    pub fn new(
        host: LocalComm,
        links: DeviceLinks,
        dev: CudaHandle,
        timeout: Duration,
    ) -> Result<Self> {
        if links.rank != host.link_rank() || links.parts_to.len() != host.link_size() {
            return Err(Error::Ranks(format!(
                "device links of rank {} of {} do not match {:?}",
                links.rank,
                links.parts_to.len(),
                host
            )));
        }
        let owed = (0..host.link_size()).map(|_| Cell::new(0)).collect();
        Ok(Self {
            host,
            links,
            dev,
            timeout,
            bytes: AtomicU64::new(0),
            owed,
        })
    }

    fn rank_(&self) -> usize {
        self.host.link_rank()
    }

    fn size_(&self) -> usize {
        self.host.link_size()
    }

    fn gone(&self, peer: usize, op: Op) -> CommError {
        CommError::PeerGone {
            group: self.host.name().to_string(),
            rank: self.rank_(),
            peer,
            op,
        }
    }

    fn wait_err(&self, e: RecvTimeoutError, peer: usize, op: Op) -> CommError {
        match e {
            RecvTimeoutError::Timeout => CommError::Timeout {
                group: self.host.name().to_string(),
                rank: self.rank_(),
                peer,
                op,
                after: self.timeout,
            },
            RecvTimeoutError::Disconnected => self.gone(peer, op),
        }
    }

    /// An event after everything queued on this rank's stream so far.
    fn event(&self) -> Result<Arc<CudaEvent>> {
        self.dev
            .stream()
            .record_event(None)
            .map(Arc::new)
            .map_err(dev_err("recording a CUDA event"))
    }

    fn wait_on(&self, e: &CudaEvent) -> Result<()> {
        self.dev
            .stream()
            .wait(e)
            .map_err(dev_err("waiting on a CUDA event"))
    }

    /// Hands `dst` the elements `offset..offset + len` of `data`.
    fn post(&self, op: Op, dst: usize, data: &CudaStorage, range: (usize, usize)) -> Result<()> {
        self.post_with(op, dst, data, range, &self.event()?)
    }

    fn post_with(
        &self,
        op: Op,
        dst: usize,
        data: &CudaStorage,
        (offset, len): (usize, usize),
        ready: &Arc<CudaEvent>,
    ) -> Result<()> {
        let tx = self.links.parts_to[dst].as_ref().expect("no link to self");
        tx.send(Part {
            op,
            data: data.clone(),
            offset,
            len,
            ready: ready.clone(),
        })
        .map_err(|_| self.gone(dst, op))?;
        self.bytes
            .fetch_add((len * std::mem::size_of::<f32>()) as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The next part from `src`, which must belong to `op`.
    fn take(&self, op: Op, src: usize) -> Result<Part> {
        let rx = self.links.parts_from[src]
            .as_ref()
            .expect("no link from self");
        let part = rx
            .recv_timeout(self.timeout)
            .map_err(|e| self.wait_err(e, src, op))?;
        if part.op != op {
            return Err(CommError::Mismatch {
                group: self.host.name().to_string(),
                rank: self.rank_(),
                peer: src,
                expected: op,
                got: part.op,
            }
            .into());
        }
        Ok(part)
    }

    /// Queues on this rank's stream a copy of `len` elements from `src` (element `offset`) to
    /// `dst` (element `at`), after `ready` when the source belongs to another rank.
    fn copy(
        &self,
        src: &CudaStorage,
        offset: usize,
        len: usize,
        dst: &Tensor,
        at: usize,
        ready: Option<&CudaEvent>,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        if let Some(e) = ready {
            self.wait_on(e)?;
        }
        let bytes = len * std::mem::size_of::<f32>();
        let from = src.ptr() + (offset * std::mem::size_of::<f32>()) as u64;
        let to = f32_storage(dst, "copy")?.ptr() + (at * std::mem::size_of::<f32>()) as u64;
        let (src_ctx, dst_ctx) = (src.device().context(), self.dev.context());
        let stream = self.dev.stream().cu_stream();
        dst_ctx
            .bind_to_thread()
            .map_err(dev_err("binding the GPU"))?;
        // SAFETY: both ranges lie inside live buffers (the caller checked the lengths; the
        // sender's buffer is held by the part until the sender's stream waited on our done
        // event), and this stream waited on the event after which the source was written.
        unsafe {
            if src_ctx.cu_ctx() == dst_ctx.cu_ctx() {
                driver::memcpy_dtod_async(to, from, bytes, stream)
            } else {
                driver::memcpy_peer_async(
                    dst_ctx.cu_ctx(),
                    to,
                    src_ctx.cu_ctx(),
                    from,
                    bytes,
                    stream,
                )
            }
        }
        .map_err(dev_err("copying between ranks' GPU buffers"))
    }

    /// Takes the part `src` posted for `op` as rows of `cols` values, copied into new rows on
    /// this rank's GPU, and tells `src` it is queued; `whose` names the sender in the error.
    fn receive_rows(&self, op: Op, src: usize, cols: usize, whose: &str) -> Result<Tensor> {
        let part = self.take(op, src)?;
        if cols == 0 || !part.len.is_multiple_of(cols) {
            return Err(self
                .host
                .bad(
                    op,
                    format!(
                        "{} values from rank {src}{whose} are not rows of {cols}",
                        part.len
                    ),
                )
                .into());
        }
        let out = empty_rows(&self.dev, part.len / cols, cols)?;
        self.copy(
            &part.data,
            part.offset,
            part.len,
            &out,
            0,
            Some(&part.ready),
        )?;
        self.ack(vec![(src, part)])?;
        Ok(out)
    }

    /// Tells the senders of `parts` that their copies are queued.
    fn ack(&self, parts: Vec<(usize, Part)>) -> Result<()> {
        if parts.is_empty() {
            return Ok(());
        }
        let done = self.event()?;
        for (src, part) in parts {
            let tx = self.links.done_to[src].as_ref().expect("no link to self");
            tx.send(Done {
                keep: part.data,
                done: done.clone(),
            })
            .map_err(|_| self.gone(src, part.op))?;
        }
        Ok(())
    }

    /// Waits until every rank of `dsts` queued its copies of this rank's parts (and of the
    /// point-to-point sends it still owed), and orders this rank's stream after them.
    fn await_acks(&self, op: Op, dsts: &[usize]) -> Result<()> {
        for &d in dsts {
            for _ in 0..=self.owed[d].replace(0) {
                self.settle(d, self.timeout)
                    .map_err(|e| self.wait_err(e, d, op))?;
            }
        }
        Ok(())
    }

    /// Takes the next done event from `d` within `wait`: this stream waits on it, and the
    /// sent buffer it held is released after that.
    fn settle(&self, d: usize, wait: Duration) -> std::result::Result<(), RecvTimeoutError> {
        let rx = self.links.done_from[d].as_ref().expect("no link from self");
        let done = rx.recv_timeout(wait)?;
        self.owed[d].set(self.owed[d].get().saturating_sub(1));
        // A failed wait leaves the buffer to be released unordered only if the driver broke.
        let _ = self.wait_on(&done.done);
        drop(done.keep);
        Ok(())
    }

    /// Settles the done events already back from earlier sends, without waiting.
    fn settle_ready(&self) {
        for d in self.host.others() {
            while self.owed[d].get() > 0 && self.settle(d, Duration::ZERO).is_ok() {}
        }
    }

    /// Sends `ranges[d]` of `data` to every rank `d` (this rank's own range is copied locally)
    /// and gathers one part from every rank into a new [total / cols, cols] tensor in source
    /// order; returns it with the elements from each source.
    fn exchange(
        &self,
        op: Op,
        data: &CudaStorage,
        ranges: &[(usize, usize)],
        cols: usize,
    ) -> Result<(Tensor, Vec<usize>)> {
        let (me, others) = (self.rank_(), self.host.others());
        let ready = self.event()?;
        for &d in &others {
            self.post_with(op, d, data, ranges[d], &ready)?;
        }
        let mut parts = Vec::with_capacity(others.len());
        for &s in &others {
            parts.push((s, self.take(op, s)?));
        }
        let mut counts = vec![0; self.size_()];
        counts[me] = ranges[me].1;
        for (s, p) in &parts {
            counts[*s] = p.len;
        }
        let total: usize = counts.iter().sum();
        if cols == 0 || !total.is_multiple_of(cols) {
            return Err(self
                .host
                .bad(
                    op,
                    format!("{total} elements received are not whole rows of {cols}"),
                )
                .into());
        }
        let out = empty_rows(&self.dev, total / cols, cols)?;
        let mut at = 0;
        for (src, &count) in counts.iter().enumerate() {
            if src == me {
                self.copy(data, ranges[me].0, count, &out, at, None)?;
            } else {
                let p = &parts.iter().find(|(s, _)| *s == src).expect("a part").1;
                self.copy(&p.data, p.offset, p.len, &out, at, Some(&p.ready))?;
            }
            at += count;
        }
        self.ack(parts)?;
        self.await_acks(op, &others)?;
        Ok((out, counts))
    }

    fn row_ranges(
        &self,
        op: Op,
        rows: &[usize],
        total: usize,
        cols: usize,
    ) -> Result<Vec<(usize, usize)>> {
        self.host.check_counts(op, total, rows)?;
        let mut at = 0;
        Ok(rows
            .iter()
            .map(|&r| {
                let range = (at * cols, r * cols);
                at += r;
                range
            })
            .collect())
    }
}

impl Communicator for GpuLocalComm {
    fn rank(&self) -> usize {
        self.rank_()
    }
    fn size(&self) -> usize {
        self.size_()
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> std::result::Result<(), CommError> {
        self.host.all_reduce_sum(buf)
    }
    fn reduce_scatter_sum(
        &self,
        input: &[f32],
        counts: &[usize],
    ) -> std::result::Result<Vec<f32>, CommError> {
        self.host.reduce_scatter_sum(input, counts)
    }
    fn all_gather(&self, data: &[f32]) -> std::result::Result<(Vec<f32>, Vec<usize>), CommError> {
        self.host.all_gather(data)
    }
    fn all_gather_u32(
        &self,
        data: &[u32],
    ) -> std::result::Result<(Vec<u32>, Vec<usize>), CommError> {
        self.host.all_gather_u32(data)
    }
    fn all_to_all_v(
        &self,
        send: &[f32],
        counts: &[usize],
    ) -> std::result::Result<(Vec<f32>, Vec<usize>), CommError> {
        self.host.all_to_all_v(send, counts)
    }
    fn all_to_all_v_u32(
        &self,
        send: &[u32],
        counts: &[usize],
    ) -> std::result::Result<(Vec<u32>, Vec<usize>), CommError> {
        self.host.all_to_all_v_u32(send, counts)
    }
    fn send(&self, data: &[f32], dst: usize) -> std::result::Result<(), CommError> {
        self.host.send(data, dst)
    }
    fn recv(&self, src: usize) -> std::result::Result<Vec<f32>, CommError> {
        self.host.recv(src)
    }
    fn broadcast(&self, buf: &mut Vec<f32>, root: usize) -> std::result::Result<(), CommError> {
        self.host.broadcast(buf, root)
    }
    fn barrier(&self) -> std::result::Result<(), CommError> {
        self.host.barrier()
    }
    fn bytes_moved(&self) -> u64 {
        self.host.bytes_moved() + self.bytes.load(Ordering::Relaxed)
    }

    fn all_to_all_rows(&self, send: &Tensor, rows: &[usize]) -> Result<(Tensor, Vec<usize>)> {
        let cols = cols_of(send);
        let data = f32_storage(send, "all_to_all")?;
        let ranges = self.row_ranges(Op::AllToAll, rows, send.numel() / cols.max(1), cols)?;
        let (out, counts) = self.exchange(Op::AllToAll, data, &ranges, cols)?;
        Ok((out, counts.iter().map(|c| c / cols).collect()))
    }

    fn reduce_scatter_rows(&self, x: &Tensor, rows: &[usize]) -> Result<Tensor> {
        let cols = cols_of(x);
        let data = f32_storage(x, "reduce_scatter")?;
        let ranges = self.row_ranges(Op::ReduceScatter, rows, x.numel() / cols.max(1), cols)?;
        let mine = rows[self.rank_()];
        let (stacked, _) = self.exchange(Op::ReduceScatter, data, &ranges, cols)?;
        sum_parts(&stacked, self.size_(), mine, cols)
    }

    fn all_gather_rows(&self, x: &Tensor) -> Result<Tensor> {
        let cols = cols_of(x);
        let data = f32_storage(x, "all_gather")?;
        let ranges = vec![(0, x.numel()); self.size_()];
        Ok(self.exchange(Op::AllGather, data, &ranges, cols)?.0)
    }

    fn all_reduce_tensor(&self, x: &mut Tensor) -> Result<()> {
        let shape = x.shape().clone();
        let n = x.numel();
        let flat = x.clone().reshape([n, 1])?;
        let mine = self.reduce_scatter_rows(&flat, &even_counts(n, self.size_()))?;
        *x = self.all_gather_rows(&mine)?.reshape(shape)?;
        Ok(())
    }

    fn send_tensor(&self, x: &Tensor, dst: usize) -> Result<()> {
        self.host.check_peer(Op::PointToPoint, dst, "destination")?;
        let data = f32_storage(x, "send")?;
        self.settle_ready();
        self.post(Op::PointToPoint, dst, data, (0, x.numel()))?;
        // Like the host communicators' send, this does not wait for the receiver: the part
        // holds the buffer (an in-place op on `x` copies it first) until its done event is
        // settled by a later call.
        self.owed[dst].set(self.owed[dst].get() + 1);
        Ok(())
    }

    fn recv_rows(&self, src: usize, cols: usize, device: &Device) -> Result<Tensor> {
        self.host.check_peer(Op::PointToPoint, src, "source")?;
        if !matches!(device, Device::Cuda(d) if Arc::ptr_eq(d, &self.dev)) {
            return Err(Error::Device(
                "a GPU rank receives onto its own GPU stream".into(),
            ));
        }
        self.receive_rows(Op::PointToPoint, src, cols, "")
    }

    fn broadcast_rows(&self, x: &mut Tensor, root: usize) -> Result<()> {
        if root >= self.size_() {
            return Err(self
                .host
                .bad(
                    Op::Broadcast,
                    format!("root {root} is not a rank of this group"),
                )
                .into());
        }
        let others = self.host.others();
        if self.rank_() == root {
            let data = f32_storage(x, "broadcast")?;
            let ready = self.event()?;
            for &d in &others {
                self.post_with(Op::Broadcast, d, data, (0, x.numel()), &ready)?;
            }
            return self.await_acks(Op::Broadcast, &others);
        }
        *x = self.receive_rows(Op::Broadcast, root, cols_of(x), " (the root)")?;
        Ok(())
    }
}
