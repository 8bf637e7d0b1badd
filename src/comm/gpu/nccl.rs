//! `NcclComm`: one rank of an NCCL communicator (cudarc's `nccl` bindings), one rank per GPU.
//!
//! Every collective is queued on the rank's own stream. All-to-all-v is grouped
//! ncclSend/ncclRecv with the counts exchanged first (one grouped exchange of one count per
//! peer); all-gather and reduce-scatter go the same way (their lengths may differ per rank),
//! the reduce-scatter summing the received parts in rank order on the device so that its bits
//! equal the host collectives'; all-reduce is ncclAllReduce (NCCL's reduction order, which is
//! fixed for a given world but not rank order beyond two ranks); send/recv and broadcast send
//! the length first. Slice collectives stage their data through the device. The unique id is
//! handed out by rank 0 of the group over a host communicator (in-process channels, or the TCP
//! mesh a multi-node rendezvous set up).

use std::ffi::c_void;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};

use cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr};
use cudarc::nccl::{result as nccl, sys};

use super::{f32_storage, sum_parts};
use crate::backend::cuda::ops::wrap;
use crate::backend::cuda::storage::{alloc, CudaHandle, DevBuf};
use crate::backend::Device;
use crate::comm::communicator::cols_of;
use crate::comm::{CommError, Communicator};
use crate::error::{Error, Result};
use crate::tensor::{DType, Storage, Tensor};

/// Why NCCL cannot be used here, or `None` when its library loads.
pub fn nccl_unavailable_reason() -> Option<String> {
    // SAFETY: only probes whether the library can be loaded; calls no NCCL function.
    if unsafe { sys::is_culib_present() } {
        None
    } else {
        Some(
            "NCCL (libnccl.so) was not found on the loader path; install NCCL or link \
             libnccl.so.2 as libnccl.so"
                .into(),
        )
    }
}

/// NVLink SHARP (NVLS) buffers cost memory and are refused on some lent machines; off unless
/// the user asked for it.
fn default_nvls_off() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("NCCL_NVLS_ENABLE").is_none() {
            std::env::set_var("NCCL_NVLS_ENABLE", "0");
        }
    });
}

struct RawComm(sys::ncclComm_t);

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it do not
// overlap; it is owned by one rank, which calls it from one thread at a time.
unsafe impl Send for RawComm {}

impl Drop for RawComm {
    fn drop(&mut self) {
        // Abort rather than destroy: a peer that failed must not make this rank hang.
        // SAFETY: the communicator was initialised and is dropped once.
        let _ = unsafe { nccl::comm_abort(self.0) };
    }
}

fn nccl_err(what: &'static str) -> impl FnOnce(nccl::NcclError) -> Error {
    move |e| Error::Device(format!("NCCL {what}: {e:?}"))
}

/// One rank's NCCL communicator for one group.
pub struct NcclComm {
    group: String,
    rank: usize,
    size: usize,
    comm: RawComm,
    dev: CudaHandle,
    bytes: AtomicU64,
}

impl std::fmt::Debug for NcclComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NcclComm({} rank {}/{})",
            self.group, self.rank, self.size
        )
    }
}

/// Start offset of each count.
fn offsets(counts: &[usize]) -> Vec<usize> {
    let mut at = 0;
    counts
        .iter()
        .map(|&c| {
            let o = at;
            at += c;
            o
        })
        .collect()
}

impl NcclComm {
    /// The NCCL communicator of the group `host` spans (same ranks, same order), on `dev`
    /// (the rank's GPU and stream). Rank 0 creates the unique id and hands it out over `host`;
    /// every rank of the group must call this together, each on a different GPU.
    pub fn over(host: &dyn Communicator, group: &str, dev: CudaHandle) -> Result<Self> {
        if let Some(why) = nccl_unavailable_reason() {
            return Err(Error::Device(why));
        }
        default_nvls_off();
        let (rank, size) = (host.rank(), host.size());
        let mine: Vec<u32> = if rank == 0 {
            let id = nccl::get_uniqueid().map_err(nccl_err("creating a unique id"))?;
            let bytes: Vec<u8> = id.internal.iter().map(|&c| c as u8).collect();
            bytes
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        } else {
            Vec::new()
        };
        let (all, _) = host.all_gather_u32(&mine)?;
        if all.len() != 32 {
            return Err(Error::Ranks(format!(
                "{group}: the NCCL unique id from rank 0 has {} bytes, not 128",
                all.len() * 4
            )));
        }
        let mut id = sys::ncclUniqueId { internal: [0; 128] };
        for (i, b) in all.iter().flat_map(|w| w.to_le_bytes()).enumerate() {
            id.internal[i] = b as std::ffi::c_char;
        }
        dev.context()
            .bind_to_thread()
            .map_err(crate::backend::cuda::dev_err("binding the GPU"))?;
        let mut comm = MaybeUninit::uninit();
        // SAFETY: `comm` is written by a successful init; every rank passes the same id.
        unsafe { nccl::comm_init_rank(comm.as_mut_ptr(), size as i32, id, rank as i32) }
            .map_err(nccl_err("creating the communicator"))?;
        // SAFETY: initialised by the successful call above.
        let comm = RawComm(unsafe { comm.assume_init() });
        Ok(Self {
            group: group.to_string(),
            rank,
            size,
            comm,
            dev,
            bytes: AtomicU64::new(0),
        })
    }

    fn stream(&self) -> sys::cudaStream_t {
        self.dev.stream().cu_stream() as sys::cudaStream_t
    }

    fn bind(&self) -> Result<()> {
        self.dev
            .context()
            .bind_to_thread()
            .map_err(crate::backend::cuda::dev_err("binding the GPU"))
    }

    fn count_sent(&self, elems: usize, elem_bytes: usize) {
        self.bytes
            .fetch_add((elems * elem_bytes) as u64, Ordering::Relaxed);
    }

    /// One NCCL group of sends `(peer, address, elements)` and receives; empty ones are left
    /// out on both sides (each side knows the count).
    fn grouped(
        &self,
        sends: &[(usize, u64, usize)],
        recvs: &[(usize, u64, usize)],
        dtype: sys::ncclDataType_t,
    ) -> Result<()> {
        self.bind()?;
        nccl::group_start().map_err(nccl_err("group start"))?;
        // Sends first, then receives, each only where there is something to move.
        let sends = sends.iter().filter(|s| s.2 > 0).map(|&s| (true, s));
        let recvs = recvs.iter().filter(|r| r.2 > 0).map(|&r| (false, r));
        let mut queued = Ok(());
        for (send, (peer, ptr, n)) in sends.chain(recvs) {
            let (peer, comm, stream) = (peer as i32, self.comm.0, self.stream());
            // SAFETY: `ptr` addresses `n` live elements of `dtype` on this rank's GPU (sends) or
            // room for them (receives).
            queued = unsafe {
                if send {
                    nccl::send(ptr as *const c_void, n, dtype, peer, comm, stream)
                } else {
                    nccl::recv(ptr as *mut c_void, n, dtype, peer, comm, stream)
                }
            }
            .map(|_| ());
            if queued.is_err() {
                break;
            }
        }
        let ended = nccl::group_end();
        queued.map_err(nccl_err("send/recv"))?;
        ended.map_err(nccl_err("group end"))?;
        Ok(())
    }

    /// Every rank's count for this rank, given this rank's count for every rank.
    fn exchange_counts(&self, counts: &[usize]) -> Result<Vec<usize>> {
        let host: Vec<u64> = counts.iter().map(|&c| c as u64).collect();
        let send = self.dev.upload(&host)?;
        let recv = alloc::<u64>(&self.dev, self.size)?;
        let (sp, rp) = (self.addr(&send), self.addr(&recv));
        let one = |base: u64| -> Vec<(usize, u64, usize)> {
            (0..self.size)
                .map(|r| (r, base + 8 * r as u64, 1))
                .collect()
        };
        self.grouped(&one(sp), &one(rp), sys::ncclDataType_t::ncclUint64)?;
        let got = self.dev.download(&recv)?;
        Ok(got[..self.size].iter().map(|&c| c as usize).collect())
    }

    fn addr<T>(&self, s: &CudaSlice<T>) -> u64 {
        s.device_ptr(self.dev.stream()).0
    }

    /// Sends elements `ranges[d]` (offset, count) of the buffer at `send` to every rank `d`
    /// (itself too, through NCCL); returns what every rank sent here, in rank order, and the
    /// count from each.
    fn exchange<T: DeviceRepr>(
        &self,
        send: u64,
        ranges: &[(usize, usize)],
        dtype: sys::ncclDataType_t,
    ) -> Result<(CudaSlice<T>, Vec<usize>)> {
        let size_of = std::mem::size_of::<T>();
        let counts: Vec<usize> = ranges.iter().map(|r| r.1).collect();
        let recv_counts = self.exchange_counts(&counts)?;
        let out = alloc::<T>(&self.dev, recv_counts.iter().sum())?;
        let op = self.addr(&out);
        let sends: Vec<_> = ranges
            .iter()
            .enumerate()
            .map(|(d, &(o, n))| (d, send + (o * size_of) as u64, n))
            .collect();
        let recvs: Vec<_> = offsets(&recv_counts)
            .into_iter()
            .zip(&recv_counts)
            .enumerate()
            .map(|(s, (o, &n))| (s, op + (o * size_of) as u64, n))
            .collect();
        self.grouped(&sends, &recvs, dtype)?;
        let sent: usize = (0..self.size)
            .filter(|&d| d != self.rank)
            .map(|d| counts[d])
            .sum();
        self.count_sent(sent, size_of);
        Ok((out, recv_counts))
    }

    fn check_counts(&self, what: &str, total: usize, counts: &[usize]) -> Result<()> {
        if counts.len() != self.size || counts.iter().sum::<usize>() != total {
            return Err(Error::Ranks(format!(
                "{} rank {}: {what}: counts {counts:?} for {total} elements over {} ranks",
                self.group, self.rank, self.size
            )));
        }
        Ok(())
    }

    fn rows_tensor(&self, out: CudaSlice<f32>, total: usize, cols: usize) -> Result<Tensor> {
        if cols == 0 || !total.is_multiple_of(cols) {
            return Err(Error::Shape(format!(
                "{total} values received are not rows of {cols}"
            )));
        }
        Ok(wrap(
            &self.dev,
            [total / cols, cols],
            DType::F32,
            DevBuf::F32(out),
        ))
    }

    fn upload_rows(&self, data: &[f32]) -> Result<Tensor> {
        Tensor::from_f32([data.len(), 1], data.to_vec())?.to_device(&Device::Cuda(self.dev.clone()))
    }

    fn slice_a2a<T: DeviceRepr + Default + Clone>(
        &self,
        data: &[T],
        ranges: &[(usize, usize)],
        dtype: sys::ncclDataType_t,
    ) -> Result<(Vec<T>, Vec<usize>)> {
        let up = if data.is_empty() {
            alloc::<T>(&self.dev, 1)?
        } else {
            self.dev.upload(data)?
        };
        let (out, counts) = self.exchange::<T>(self.addr(&up), ranges, dtype)?;
        let total = counts.iter().sum::<usize>();
        let mut host = self.dev.download(&out)?;
        host.truncate(total);
        Ok((host, counts))
    }

    /// The length `root` holds, on every rank.
    fn broadcast_len(&self, len: usize, root: usize) -> Result<usize> {
        let buf = self.dev.upload(&[len as u64])?;
        let p = self.addr(&buf);
        self.bind()?;
        // SAFETY: one u64 at `p` on this rank's GPU, in and out.
        unsafe {
            nccl::broadcast(
                p as *const c_void,
                p as *mut c_void,
                1,
                sys::ncclDataType_t::ncclUint64,
                root as i32,
                self.comm.0,
                self.stream(),
            )
        }
        .map_err(nccl_err("broadcast"))?;
        Ok(self.dev.download(&buf)?[0] as usize)
    }
}

fn to_comm(e: Error) -> CommError {
    match e {
        Error::Comm(c) => c,
        other => CommError::Device(other.to_string()),
    }
}

fn even_ranges(counts: &[usize]) -> Vec<(usize, usize)> {
    offsets(counts)
        .into_iter()
        .zip(counts.iter().copied())
        .collect()
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> std::result::Result<(), CommError> {
        let mut t = self.upload_rows(buf).map_err(to_comm)?;
        self.all_reduce_tensor(&mut t).map_err(to_comm)?;
        buf.copy_from_slice(t.to_cpu().map_err(to_comm)?.as_slice());
        Ok(())
    }
    fn reduce_scatter_sum(
        &self,
        input: &[f32],
        counts: &[usize],
    ) -> std::result::Result<Vec<f32>, CommError> {
        let t = self.upload_rows(input).map_err(to_comm)?;
        let mine = self.reduce_scatter_rows(&t, counts).map_err(to_comm)?;
        Ok(mine.to_cpu().map_err(to_comm)?.into_vec())
    }
    fn all_gather(&self, data: &[f32]) -> std::result::Result<(Vec<f32>, Vec<usize>), CommError> {
        let ranges = vec![(0, data.len()); self.size];
        self.slice_a2a(data, &ranges, sys::ncclDataType_t::ncclFloat32)
            .map_err(to_comm)
    }
    fn all_gather_u32(
        &self,
        data: &[u32],
    ) -> std::result::Result<(Vec<u32>, Vec<usize>), CommError> {
        let ranges = vec![(0, data.len()); self.size];
        self.slice_a2a(data, &ranges, sys::ncclDataType_t::ncclUint32)
            .map_err(to_comm)
    }
    fn all_to_all_v(
        &self,
        send: &[f32],
        counts: &[usize],
    ) -> std::result::Result<(Vec<f32>, Vec<usize>), CommError> {
        self.check_counts("all_to_all_v", send.len(), counts)
            .map_err(to_comm)?;
        self.slice_a2a(send, &even_ranges(counts), sys::ncclDataType_t::ncclFloat32)
            .map_err(to_comm)
    }
    fn all_to_all_v_u32(
        &self,
        send: &[u32],
        counts: &[usize],
    ) -> std::result::Result<(Vec<u32>, Vec<usize>), CommError> {
        self.check_counts("all_to_all_v", send.len(), counts)
            .map_err(to_comm)?;
        self.slice_a2a(send, &even_ranges(counts), sys::ncclDataType_t::ncclUint32)
            .map_err(to_comm)
    }
    fn send(&self, data: &[f32], dst: usize) -> std::result::Result<(), CommError> {
        let t = self.upload_rows(data).map_err(to_comm)?;
        self.send_tensor(&t, dst).map_err(to_comm)
    }
    fn recv(&self, src: usize) -> std::result::Result<Vec<f32>, CommError> {
        let t = self
            .recv_rows(src, 1, &Device::Cuda(self.dev.clone()))
            .map_err(to_comm)?;
        Ok(t.to_cpu().map_err(to_comm)?.into_vec())
    }
    fn broadcast(&self, buf: &mut Vec<f32>, root: usize) -> std::result::Result<(), CommError> {
        let mut t = self.upload_rows(buf).map_err(to_comm)?;
        self.broadcast_rows(&mut t, root).map_err(to_comm)?;
        *buf = t.to_cpu().map_err(to_comm)?.into_vec();
        Ok(())
    }
    fn barrier(&self) -> std::result::Result<(), CommError> {
        let mut one = [0.0f32];
        self.all_reduce_sum(&mut one)?;
        self.dev.synchronize().map_err(to_comm)
    }
    fn bytes_moved(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn all_to_all_rows(&self, send: &Tensor, rows: &[usize]) -> Result<(Tensor, Vec<usize>)> {
        let cols = cols_of(send).max(1);
        let data = f32_storage(send, "all_to_all")?;
        let elems: Vec<usize> = rows.iter().map(|r| r * cols).collect();
        self.check_counts("all_to_all", send.numel(), &elems)?;
        let (out, counts) = self.exchange::<f32>(
            data.ptr(),
            &even_ranges(&elems),
            sys::ncclDataType_t::ncclFloat32,
        )?;
        let total = counts.iter().sum();
        let got = counts.iter().map(|c| c / cols).collect();
        Ok((self.rows_tensor(out, total, cols)?, got))
    }

    fn reduce_scatter_rows(&self, x: &Tensor, rows: &[usize]) -> Result<Tensor> {
        let cols = cols_of(x).max(1);
        let data = f32_storage(x, "reduce_scatter")?;
        let elems: Vec<usize> = rows.iter().map(|r| r * cols).collect();
        self.check_counts("reduce_scatter", x.numel(), &elems)?;
        let (out, counts) = self.exchange::<f32>(
            data.ptr(),
            &even_ranges(&elems),
            sys::ncclDataType_t::ncclFloat32,
        )?;
        let stacked = self.rows_tensor(out, counts.iter().sum(), cols)?;
        sum_parts(&stacked, self.size, rows[self.rank], cols)
    }

    fn all_gather_rows(&self, x: &Tensor) -> Result<Tensor> {
        let cols = cols_of(x).max(1);
        let data = f32_storage(x, "all_gather")?;
        let ranges = vec![(0, x.numel()); self.size];
        let (out, counts) =
            self.exchange::<f32>(data.ptr(), &ranges, sys::ncclDataType_t::ncclFloat32)?;
        self.rows_tensor(out, counts.iter().sum(), cols)
    }

    fn all_reduce_tensor(&self, x: &mut Tensor) -> Result<()> {
        let n = x.numel();
        let Storage::Cuda(s) = x.storage_mut() else {
            return Err(Error::Device(
                "all_reduce: a CPU tensor on an NCCL rank".into(),
            ));
        };
        if s.is_bf16() {
            return Err(Error::Device("all_reduce: NCCL ranks sum f32 rows".into()));
        }
        s.make_unique()?;
        let p = s.ptr();
        if n > 0 {
            self.bind()?;
            // SAFETY: `n` f32 values at `p`, this tensor's own buffer, reduced in place.
            unsafe {
                nccl::all_reduce(
                    p as *const c_void,
                    p as *mut c_void,
                    n,
                    sys::ncclDataType_t::ncclFloat32,
                    sys::ncclRedOp_t::ncclSum,
                    self.comm.0,
                    self.stream(),
                )
            }
            .map_err(nccl_err("all_reduce"))?;
        }
        // As the host algorithm: every rank sends all but its own chunk twice.
        self.count_sent(2 * n * (self.size - 1) / self.size, 4);
        Ok(())
    }

    fn send_tensor(&self, x: &Tensor, dst: usize) -> Result<()> {
        if dst >= self.size || dst == self.rank {
            return Err(Error::Ranks(format!(
                "{} rank {}: destination {dst} must be another rank of {}",
                self.group, self.rank, self.size
            )));
        }
        let data = f32_storage(x, "send")?;
        let len = self.dev.upload(&[x.numel() as u64])?;
        self.grouped(
            &[(dst, self.addr(&len), 1)],
            &[],
            sys::ncclDataType_t::ncclUint64,
        )?;
        self.grouped(
            &[(dst, data.ptr(), x.numel())],
            &[],
            sys::ncclDataType_t::ncclFloat32,
        )?;
        self.count_sent(x.numel(), 4);
        // The length buffer is freed on this stream after the send that reads it.
        Ok(())
    }

    fn recv_rows(&self, src: usize, cols: usize, _device: &Device) -> Result<Tensor> {
        if src >= self.size || src == self.rank {
            return Err(Error::Ranks(format!(
                "{} rank {}: source {src} must be another rank of {}",
                self.group, self.rank, self.size
            )));
        }
        let len = alloc::<u64>(&self.dev, 1)?;
        self.grouped(
            &[],
            &[(src, self.addr(&len), 1)],
            sys::ncclDataType_t::ncclUint64,
        )?;
        let n = self.dev.download(&len)?[0] as usize;
        let out = alloc::<f32>(&self.dev, n)?;
        self.grouped(
            &[],
            &[(src, self.addr(&out), n)],
            sys::ncclDataType_t::ncclFloat32,
        )?;
        self.rows_tensor(out, n, cols.max(1))
    }

    fn broadcast_rows(&self, x: &mut Tensor, root: usize) -> Result<()> {
        if root >= self.size {
            return Err(Error::Ranks(format!(
                "{}: root {root} is not a rank of {}",
                self.group, self.size
            )));
        }
        let cols = cols_of(x).max(1);
        let n = self.broadcast_len(x.numel(), root)?;
        let out = alloc::<f32>(&self.dev, n)?;
        let op = self.addr(&out);
        let send = if self.rank == root {
            f32_storage(x, "broadcast")?.ptr()
        } else {
            op
        };
        if n > 0 {
            self.bind()?;
            // SAFETY: `n` f32 values at `send` on the root, room for `n` at `op` everywhere.
            unsafe {
                nccl::broadcast(
                    send as *const c_void,
                    op as *mut c_void,
                    n,
                    sys::ncclDataType_t::ncclFloat32,
                    root as i32,
                    self.comm.0,
                    self.stream(),
                )
            }
            .map_err(nccl_err("broadcast"))?;
        }
        if self.rank == root {
            self.count_sent(n * (self.size - 1), 4);
        }
        *x = self.rows_tensor(out, n, cols)?;
        Ok(())
    }
}
