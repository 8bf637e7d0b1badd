//! The `Communicator` trait: the collectives of one group of ranks.

use super::CommError;

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
}

/// `len` split into `parts` counts as evenly as possible, the first `len % parts` one larger:
/// the chunks of an all-reduce and the usual reduce-scatter counts.
pub fn even_counts(len: usize, parts: usize) -> Vec<usize> {
    (0..parts)
        .map(|r| len / parts + usize::from(r < len % parts))
        .collect()
}
