//! The `Communicator` trait: the collectives of one group of ranks.

use super::CommError;
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// One rank's handle on a group of ranks (a TP, EP or PP group, or the world).
///
/// Every rank of the group must call the same collectives in the same order (as with NCCL or
/// MPI); lengths are per call and may differ between ranks where the method says so. Ranks are
/// group-local ids `0..size()`. Reductions sum in rank order, so results are bit-identical from
/// run to run and on every rank. `bytes_moved` counts the payload bytes this rank sent to other
/// ranks (never to itself) over all calls so far.
///
/// The trait is object-safe: the model holds `Box<dyn Communicator>` per group, so the
/// in-process implementation and an NCCL one are interchangeable.
pub trait Communicator: Send {
    /// This rank's id within the group.
    fn rank(&self) -> usize;

    /// Number of ranks in the group.
    fn size(&self) -> usize;

    /// Element-wise sum over the group, in place; every rank passes the same length and gets
    /// the same bits. Moves `2 * (len - own_chunk)`-ish elements per rank (reduce-scatter then
    /// all-gather of `size` nearly equal chunks, see [`even_counts`]).
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), CommError>;

    /// Sum over the group of `input` (length `counts.iter().sum()`, the same `counts` on every
    /// rank), of which this rank keeps the part `counts[rank]` at offset `counts[..rank].sum()`.
    fn reduce_scatter_sum(&self, input: &[f32], counts: &[usize]) -> Result<Vec<f32>, CommError>;

    /// Every rank's `data` concatenated in rank order, and each rank's length.
    fn all_gather(&self, data: &[f32]) -> Result<(Vec<f32>, Vec<usize>), CommError>;

    /// [`Communicator::all_gather`] of integers (token ids, counts).
    fn all_gather_u32(&self, data: &[u32]) -> Result<(Vec<u32>, Vec<usize>), CommError>;

    /// Sends `send[offset(d)..offset(d) + send_counts[d]]` to each rank `d` (elements per
    /// destination, in rank order); returns what every source sent here, concatenated in source
    /// order, and the count from each source.
    fn all_to_all_v(
        &self,
        send: &[f32],
        send_counts: &[usize],
    ) -> Result<(Vec<f32>, Vec<usize>), CommError>;

    /// [`Communicator::all_to_all_v`] of integers (token counts, expert ids).
    fn all_to_all_v_u32(
        &self,
        send: &[u32],
        send_counts: &[usize],
    ) -> Result<(Vec<u32>, Vec<usize>), CommError>;

    /// Point-to-point send to rank `dst` (not this rank); matched by the next `recv` from this
    /// rank on `dst`.
    fn send(&self, data: &[f32], dst: usize) -> Result<(), CommError>;

    /// Receives the next `send` from rank `src`.
    fn recv(&self, src: usize) -> Result<Vec<f32>, CommError>;

    /// Replaces `buf` on every rank with the root's `buf` (lengths may differ before the call).
    fn broadcast(&self, buf: &mut Vec<f32>, root: usize) -> Result<(), CommError>;

    /// Returns once every rank of the group has entered the barrier.
    fn barrier(&self) -> Result<(), CommError>;

    /// Payload bytes this rank has sent to other ranks so far.
    fn bytes_moved(&self) -> u64;

    // Collectives on tensors of f32 rows, on whichever device the tensors live. The defaults
    // stage through the host over the slice collectives above (so the in-process and TCP
    // communicators carry GPU ranks too, with the same bytes counted); GPU communicators
    // override them with device-to-device copies or NCCL, never touching the host.

    /// [`Communicator::all_to_all_v`] of the rows of `send` ([rows, cols]): `rows[d]` rows to
    /// rank `d`, in rank order. Returns the received rows (source order, on `send`'s device)
    /// and the rows from each source.
    fn all_to_all_rows(&self, send: &Tensor, rows: &[usize]) -> Result<(Tensor, Vec<usize>)> {
        let cols = cols_of(send);
        let elems: Vec<usize> = rows.iter().map(|r| r * cols).collect();
        let (data, counts) = self.all_to_all_v(send.to_cpu()?.as_slice(), &elems)?;
        let got = counts.iter().map(|c| c / cols.max(1)).collect();
        Ok((rows_on(data, cols, &send.device())?, got))
    }

    /// [`Communicator::reduce_scatter_sum`] of `x` ([rows, cols]) by rows: this rank keeps
    /// the `rows[rank]` rows at its offset, summed over the group in rank order.
    fn reduce_scatter_rows(&self, x: &Tensor, rows: &[usize]) -> Result<Tensor> {
        let cols = cols_of(x);
        let elems: Vec<usize> = rows.iter().map(|r| r * cols).collect();
        let mine = self.reduce_scatter_sum(x.to_cpu()?.as_slice(), &elems)?;
        rows_on(mine, cols, &x.device())
    }

    /// [`Communicator::all_gather`] of `x` ([rows, cols]): every rank's rows in rank order.
    fn all_gather_rows(&self, x: &Tensor) -> Result<Tensor> {
        let (data, _) = self.all_gather(x.to_cpu()?.as_slice())?;
        rows_on(data, cols_of(x), &x.device())
    }

    /// [`Communicator::all_reduce_sum`] of a tensor, in place.
    fn all_reduce_tensor(&self, x: &mut Tensor) -> Result<()> {
        let mut host = x.to_cpu()?.into_vec();
        self.all_reduce_sum(&mut host)?;
        *x = Tensor::from_f32(x.shape().clone(), host)?.to_device(&x.device())?;
        Ok(())
    }

    /// [`Communicator::send`] of a tensor's values to rank `dst`.
    fn send_tensor(&self, x: &Tensor, dst: usize) -> Result<()> {
        Ok(self.send(x.to_cpu()?.as_slice(), dst)?)
    }

    /// [`Communicator::recv`] of rows of `cols` values from rank `src`, onto `device`.
    fn recv_rows(&self, src: usize, cols: usize, device: &Device) -> Result<Tensor> {
        rows_on(self.recv(src)?, cols, device)
    }

    /// [`Communicator::broadcast`] of a tensor: every rank ends with the root's rows.
    fn broadcast_rows(&self, x: &mut Tensor, root: usize) -> Result<()> {
        let cols = cols_of(x);
        let mut host = x.to_cpu()?.into_vec();
        self.broadcast(&mut host, root)?;
        *x = rows_on(host, cols, &x.device())?;
        Ok(())
    }
}

/// Values per row of a [rows, cols] tensor.
pub(crate) fn cols_of(t: &Tensor) -> usize {
    t.dims().last().copied().unwrap_or(1)
}

/// `data` as [len / cols, cols] rows on `device`.
pub(crate) fn rows_on(data: Vec<f32>, cols: usize, device: &Device) -> Result<Tensor> {
    if cols == 0 || !data.len().is_multiple_of(cols) {
        return Err(Error::Shape(format!(
            "{} received values are not whole rows of {cols}",
            data.len()
        )));
    }
    Tensor::from_f32([data.len() / cols, cols], data)?.to_device(device)
}

/// `len` split into `parts` counts as evenly as possible, the first `len % parts` one larger:
/// the chunks of an all-reduce and the usual reduce-scatter counts.
pub fn even_counts(len: usize, parts: usize) -> Vec<usize> {
    (0..parts)
        .map(|r| len / parts + usize::from(r < len % parts))
        .collect()
}
