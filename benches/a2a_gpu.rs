//! Expert-parallel dispatch and combine between GPUs: one rank per visible GPU, each in its own
//! thread of this process with its own stream, exchanging rows through the library's
//! `NcclComm::all_to_all_rows` (the NCCL communicator is set up over an in-process host group,
//! as `ParallelExecutor` ranks do), at MoE shapes with random routing:
//!
//! - DeepSeek-V3 as in DeepEP's intranode benchmark: 4096 tokens per rank, hidden 7168, top-8
//!   of 256 experts spread evenly over the ranks;
//! - Mixtral-8x7B: 4096 tokens per rank, hidden 4096, top-2 of 8 experts.
//!
//! As DeepEP counts, each token's row goes once to every rank holding at least one of its
//! experts (its own rank included, through NCCL as well). Dispatch is `all_to_all_rows` with
//! those row counts, combine the reverse (every rank sends back what it received). Rows travel
//! two ways: as bf16 rows (DeepEP's payload; sent as f32 rows of hidden / 2, which are the same
//! bytes, since NCCL's send/recv does not look at the values and the communicator moves f32
//! tensors) and as f32 rows of hidden (what `moe::dispatch` moves today).
//!
//! Before timing, each case is checked once: every received row equals, value for value, the
//! row its source sent (and combine returns every rank's send buffer unchanged); a mismatch
//! ends the process with an error. Times are host wall time around the whole call (count
//! exchange, output allocation, the NCCL send/recv) until the rank's stream is idle, started
//! together after a host barrier; per run the slowest rank counts; median of 20 after 3
//! warm-ups. GB/s per GPU = bytes that cross between GPUs (rows sent to another rank × row
//! bytes, summed over the ranks, divided by the number of ranks) / time. The limit, measured in
//! the same run at the same byte count: a peer copy GPU 0 → GPU 1 (cuMemcpyPeerAsync, peer
//! access enabled, CUDA-event timed) and both directions at once (GPU 0 ⇄ GPU 1).
//!
//! Run: `cargo bench --features cuda --bench a2a_gpu`, or the built executable. Without a GPU,
//! NCCL, or a second GPU it prints why and exits 0.

use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{result as cu, sys, CudaContext, CudaStream};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use switchyard::backend::cuda::device::unavailable_reason;
use switchyard::backend::{cuda_device_count, Device};
use switchyard::comm::gpu::{nccl_unavailable_reason, NcclComm};
use switchyard::comm::{Communicator, LocalComm, DEFAULT_TIMEOUT};
use switchyard::tensor::Tensor;
use switchyard::{Error, Result};

const TOKENS: usize = 4096;
const WARMUPS: usize = 3;
const RUNS: usize = 20;

/// An MoE layer's routing shape.
struct Shape {
    name: &'static str,
    hidden: usize,
    experts: usize,
    top_k: usize,
}

const SHAPES: [Shape; 2] = [
    Shape {
        name: "DeepSeek-V3",
        hidden: 7168,
        experts: 256,
        top_k: 8,
    },
    Shape {
        name: "Mixtral-8x7B",
        hidden: 4096,
        experts: 8,
        top_k: 2,
    },
];

/// What a row is made of on the wire.
#[derive(Clone, Copy)]
enum Payload {
    /// `hidden` bf16 values, moved as `hidden / 2` f32 values (the same bytes).
    Bf16,
    /// `hidden` f32 values, as `moe::dispatch` sends them.
    F32,
}

impl Payload {
    fn cols(self, hidden: usize) -> usize {
        match self {
            Payload::Bf16 => hidden / 2,
            Payload::F32 => hidden,
        }
    }
    fn label(self) -> &'static str {
        match self {
            Payload::Bf16 => "bf16",
            Payload::F32 => "f32",
        }
    }
}

/// One source rank's dispatch: `tokens_to[d]` are its tokens (in order) with an expert on rank
/// `d`; each goes there once.
struct Plan {
    tokens_to: Vec<Vec<usize>>,
}

impl Plan {
    fn rows(&self) -> Vec<usize> {
        self.tokens_to.iter().map(Vec::len).collect()
    }
}

/// One measured case: a shape, a payload, and every rank's plan.
struct Case {
    shape: &'static Shape,
    payload: Payload,
    plans: Vec<Plan>,
}

/// Random top-k routing of `TOKENS` tokens on each of `ranks` ranks (distinct experts per
/// token, uniformly, as DeepEP's test draws them), experts `e` on rank `e / (experts / ranks)`.
fn route(shape: &Shape, ranks: usize, seed: u64) -> Result<Vec<Plan>> {
    if !shape.experts.is_multiple_of(ranks) {
        return Err(Error::Input(format!(
            "{}: {} experts do not spread evenly over {ranks} GPUs",
            shape.name, shape.experts
        )));
    }
    let per_rank = shape.experts / ranks;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Ok((0..ranks)
        .map(|_| {
            let mut tokens_to = vec![Vec::new(); ranks];
            for t in 0..TOKENS {
                let mut hit = vec![false; ranks];
                for e in rand::seq::index::sample(&mut rng, shape.experts, shape.top_k) {
                    hit[e / per_rank] = true;
                }
                for (d, _) in hit.iter().enumerate().filter(|h| *h.1) {
                    tokens_to[d].push(t);
                }
            }
            Plan { tokens_to }
        })
        .collect())
}

/// The row of token `token` of rank `src`: small integers, exact in f32, different per source,
/// token and column, so a row in the wrong place or a wrong value is caught.
fn row(src: usize, token: usize, cols: usize, out: &mut Vec<f32>) {
    out.extend((0..cols).map(|c| ((src * 1_000_003 + token * 7_919 + c * 31) % 16_777_213) as f32));
}

/// The rows `src` sends, in destination order.
fn send_rows(plan: &Plan, src: usize, cols: usize) -> Vec<f32> {
    let mut out = Vec::new();
    for &t in plan.tokens_to.iter().flatten() {
        row(src, t, cols, &mut out);
    }
    out
}

/// What rank `dst` must receive: every source's rows for it, in source order.
fn expected_rows(plans: &[Plan], dst: usize, cols: usize) -> Vec<f32> {
    let mut out = Vec::new();
    for (src, plan) in plans.iter().enumerate() {
        for &t in &plan.tokens_to[dst] {
            row(src, t, cols, &mut out);
        }
    }
    out
}

/// An error naming the first value that differs.
fn check(what: &str, rank: usize, got: &[f32], want: &[f32], cols: usize) -> Result<()> {
    if got.len() != want.len() {
        return Err(Error::Shape(format!(
            "{what} on rank {rank}: {} values received, {} expected",
            got.len(),
            want.len()
        )));
    }
    match got
        .iter()
        .zip(want)
        .position(|(g, w)| g.to_bits() != w.to_bits())
    {
        None => Ok(()),
        Some(i) => Err(Error::Shape(format!(
            "{what} on rank {rank}: row {} column {} is {}, expected {}",
            i / cols,
            i % cols,
            got[i],
            want[i]
        ))),
    }
}

/// One rank's seconds per timed run.
#[derive(Default)]
struct Times {
    dispatch: Vec<f64>,
    combine: Vec<f64>,
    one_row: Vec<f64>,
}

/// Seconds of `f` on this rank, started together with the other ranks after a host barrier,
/// until this rank's stream is idle.
fn timed<T>(host: &LocalComm, dev: &Device, f: impl FnOnce() -> Result<T>) -> Result<(f64, T)> {
    host.barrier()?;
    let t = Instant::now();
    let out = f()?;
    if let Device::Cuda(d) = dev {
        d.synchronize()?;
    }
    Ok((t.elapsed().as_secs_f64(), out))
}

/// One rank's checks and timings for `case`.
fn run_case(host: &LocalComm, nccl: &NcclComm, dev: &Device, case: &Case) -> Result<Times> {
    let (rank, ranks) = (host.rank(), host.size());
    let cols = case.payload.cols(case.shape.hidden);
    let plan = &case.plans[rank];
    let rows = plan.rows();
    let sent = send_rows(plan, rank, cols);
    let send =
        Tensor::from_f32([rows.iter().sum::<usize>(), cols], sent.clone())?.to_device(dev)?;
    let what = format!("{} {} dispatch", case.shape.name, case.payload.label());
    // Checked once, values and counts, before anything is timed.
    let (got, from) = nccl.all_to_all_rows(&send, &rows)?;
    let want_from: Vec<usize> = case.plans.iter().map(|p| p.tokens_to[rank].len()).collect();
    if from != want_from {
        return Err(Error::Shape(format!(
            "{what} on rank {rank}: rows from each source {from:?}, expected {want_from:?}"
        )));
    }
    let want = expected_rows(&case.plans, rank, cols);
    check(&what, rank, got.to_cpu()?.as_slice(), &want, cols)?;
    drop(want);
    let (back, back_from) = nccl.all_to_all_rows(&got, &from)?;
    let what = format!("{} {} combine", case.shape.name, case.payload.label());
    if back_from != rows {
        return Err(Error::Shape(format!(
            "{what} on rank {rank}: rows back {back_from:?}, sent {rows:?}"
        )));
    }
    check(&what, rank, back.to_cpu()?.as_slice(), &sent, cols)?;
    drop((sent, got, back));

    let mut times = Times::default();
    for i in 0..WARMUPS + RUNS {
        let (d, (got, from)) = timed(host, dev, || nccl.all_to_all_rows(&send, &rows))?;
        let (c, _) = timed(host, dev, || nccl.all_to_all_rows(&got, &from))?;
        if i >= WARMUPS {
            times.dispatch.push(d);
            times.combine.push(c);
        }
    }
    // The call's fixed cost: one row to every rank.
    let one = Tensor::from_f32([ranks, cols], vec![1.0; ranks * cols])?.to_device(dev)?;
    for i in 0..WARMUPS + RUNS {
        let (s, _) = timed(host, dev, || nccl.all_to_all_rows(&one, &vec![1; ranks]))?;
        if i >= WARMUPS {
            times.one_row.push(s);
        }
    }
    Ok(times)
}

/// One rank's thread: its GPU, its NCCL communicator, every case.
fn rank_main(host: LocalComm, cases: &[Case]) -> Result<Vec<Times>> {
    let device = Device::cuda_rank(host.rank())?;
    let Device::Cuda(dev) = &device else {
        return Err(Error::Device("cuda_rank opened no GPU".into()));
    };
    let nccl = NcclComm::over(&host, "ep", dev.clone())?;
    cases
        .iter()
        .map(|c| run_case(&host, &nccl, &device, c))
        .collect()
}

/// Median over runs of the slowest rank's seconds.
fn slowest_median(per_rank: &[&Vec<f64>]) -> f64 {
    let mut runs: Vec<f64> = (0..per_rank[0].len())
        .map(|i| per_rank.iter().map(|r| r[i]).fold(0.0, f64::max))
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

fn drv(what: &'static str) -> impl FnOnce(cu::DriverError) -> Error {
    move |e| Error::Device(format!("{what}: {e:?}"))
}

/// A plain device allocation (not from a stream-ordered pool, whose memory peer access as
/// enabled here would not cover), freed on drop.
struct RawBuf {
    ctx: Arc<CudaContext>,
    ptr: sys::CUdeviceptr,
}

impl RawBuf {
    fn new(ctx: &Arc<CudaContext>, bytes: usize) -> Result<Self> {
        ctx.bind_to_thread().map_err(drv("binding the GPU"))?;
        // SAFETY: a fresh allocation of `bytes`, initialised right after.
        let ptr = unsafe { cu::malloc_sync(bytes) }.map_err(drv("allocating"))?;
        let buf = RawBuf {
            ctx: ctx.clone(),
            ptr,
        };
        // SAFETY: `bytes` bytes at `ptr` were just allocated in the bound context.
        unsafe { cu::memset_d8_sync(ptr, 0x3c, bytes) }.map_err(drv("filling"))?;
        Ok(buf)
    }
}

impl Drop for RawBuf {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: allocated by `new` in this context, freed once, no copy pending (every
            // timed copy was waited for).
            let _ = unsafe { cu::free_sync(self.ptr) };
        }
    }
}

/// Lets `from`'s context address `to`'s memory directly; says how it went.
fn enable_peer(from: &Arc<CudaContext>, to: &Arc<CudaContext>) -> Result<&'static str> {
    from.bind_to_thread().map_err(drv("binding the GPU"))?;
    // SAFETY: both contexts are live primary contexts of this process.
    match unsafe { sys::cuCtxEnablePeerAccess(to.cu_ctx(), 0) } {
        sys::CUresult::CUDA_SUCCESS => Ok("enabled"),
        sys::CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED => Ok("already enabled"),
        other => Err(Error::Device(format!(
            "peer access between GPUs 0 and 1 could not be enabled ({other:?}); a peer copy \
             would be staged and is no limit"
        ))),
    }
}

fn copy(to: &RawBuf, from: &RawBuf, bytes: usize, stream: &CudaStream) -> Result<()> {
    stream.context().bind_to_thread().map_err(drv("binding"))?;
    // SAFETY: both buffers hold `bytes` bytes and outlive the stream's work (waited for below).
    unsafe {
        cu::memcpy_peer_async(
            to.ctx.cu_ctx(),
            to.ptr,
            from.ctx.cu_ctx(),
            from.ptr,
            bytes,
            stream.cu_stream(),
        )
    }
    .map_err(drv("peer copy"))
}

/// Median GB/s of a `bytes` peer copy GPU 0 → GPU 1, and per direction of GPU 0 ⇄ GPU 1 at
/// once, timed by CUDA events on GPU 0's stream (GPU 1's copy joins through events).
fn peer_copy(s0: &Arc<CudaStream>, s1: &Arc<CudaStream>, bytes: usize) -> Result<(f64, f64)> {
    let (c0, c1) = (s0.context(), s1.context());
    let (a0, b0) = (RawBuf::new(c0, bytes)?, RawBuf::new(c0, bytes)?);
    let (a1, b1) = (RawBuf::new(c1, bytes)?, RawBuf::new(c1, bytes)?);
    let timing = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
    let mut rates = [Vec::new(), Vec::new()];
    for i in 0..WARMUPS + RUNS {
        for (both, rate) in rates.iter_mut().enumerate() {
            let start = s0.record_event(timing).map_err(drv("event"))?;
            s1.wait(&start).map_err(drv("event wait"))?;
            copy(&a1, &a0, bytes, s0)?;
            if both == 1 {
                copy(&b0, &b1, bytes, s1)?;
            }
            let joined = s1.record_event(None).map_err(drv("event"))?;
            s0.wait(&joined).map_err(drv("event wait"))?;
            let end = s0.record_event(timing).map_err(drv("event"))?;
            let ms = start.elapsed_ms(&end).map_err(drv("event time"))? as f64;
            if i >= WARMUPS {
                rate.push(bytes as f64 / (ms * 1e-3) / 1e9);
            }
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let [uni, bi] = rates;
    Ok((median(uni), median(bi)))
}

fn main() -> Result<()> {
    if let Some(why) = unavailable_reason() {
        println!("skipped: {why}");
        return Ok(());
    }
    if let Some(why) = nccl_unavailable_reason() {
        println!("skipped: {why}");
        return Ok(());
    }
    let ranks = cuda_device_count()?;
    if ranks < 2 {
        println!("skipped: {ranks} GPU(s) visible; the all-to-all between GPUs needs 2 or more");
        return Ok(());
    }
    let mut cases = Vec::new();
    for (i, shape) in SHAPES.iter().enumerate() {
        for payload in [Payload::Bf16, Payload::F32] {
            cases.push(Case {
                shape,
                payload,
                plans: route(shape, ranks, 17 + i as u64)?,
            });
        }
    }
    println!("{ranks} GPUs, one NCCL rank each; {TOKENS} tokens per rank; median of {RUNS} runs\n");
    let per_rank: Vec<Vec<Times>> = std::thread::scope(|s| {
        let cases = &cases;
        let handles: Vec<_> = LocalComm::group("ep", ranks, DEFAULT_TIMEOUT)
            .into_iter()
            .map(|host| {
                s.spawn(move || {
                    let rank = host.rank();
                    rank_main(host, cases).unwrap_or_else(|e| {
                        // A rank that stops would leave the others waiting in NCCL.
                        eprintln!("FAILED on rank {rank}: {e}");
                        std::process::exit(1)
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect()
    });
    println!(
        "checked: every received row equals its source's row, value for value, and combine \
              returned every rank's rows unchanged (all cases)\n"
    );

    let Device::Cuda(d0) = Device::cuda(0)? else {
        unreachable!("cuda(0) is a GPU")
    };
    let Device::Cuda(d1) = Device::cuda(1)? else {
        unreachable!("cuda(1) is a GPU")
    };
    let (c0, c1) = (d0.context().clone(), d1.context().clone());
    println!(
        "peer access GPU 0 -> 1: {}, GPU 1 -> 0: {}\n",
        enable_peer(&c0, &c1)?,
        enable_peer(&c1, &c0)?
    );
    println!(
        "| shape | payload | rows/rank to other GPUs | MB crossing per GPU | dispatch ms | \
         dispatch GB/s | combine ms | combine GB/s | 1-row call ms | peer copy 0->1 GB/s | \
         0<->1 GB/s per dir | dispatch / 0<->1 | combine / 0<->1 | DeepEP-counted dispatch GB/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (k, case) in cases.iter().enumerate() {
        let row_bytes = 4 * case.payload.cols(case.shape.hidden);
        let cross_rows: usize = case
            .plans
            .iter()
            .enumerate()
            .map(|(s, p)| {
                p.rows()
                    .iter()
                    .enumerate()
                    .filter(|(d, _)| *d != s)
                    .map(|x| x.1)
                    .sum::<usize>()
            })
            .sum();
        let all_rows: usize = case
            .plans
            .iter()
            .map(|p| p.rows().iter().sum::<usize>())
            .sum();
        let bytes = cross_rows * row_bytes / ranks;
        let t = |f: fn(&Times) -> &Vec<f64>| {
            slowest_median(&per_rank.iter().map(|r| f(&r[k])).collect::<Vec<_>>())
        };
        let (disp, comb, one) = (t(|x| &x.dispatch), t(|x| &x.combine), t(|x| &x.one_row));
        let gbs = |s: f64| bytes as f64 / s / 1e9;
        let (uni, bi) = peer_copy(d0.stream(), d1.stream(), bytes)?;
        println!(
            "| {} | {} | {} | {:.1} | {:.3} | {:.0} | {:.3} | {:.0} | {:.3} | {:.0} | {:.0} | {:.2} | {:.2} | {:.0} |",
            case.shape.name,
            case.payload.label(),
            cross_rows / ranks,
            bytes as f64 / 1e6,
            disp * 1e3,
            gbs(disp),
            comb * 1e3,
            gbs(comb),
            one * 1e3,
            uni,
            bi,
            gbs(disp) / bi,
            gbs(comb) / bi,
            (all_rows * row_bytes / ranks) as f64 / disp / 1e9,
        );
    }
    println!(
        "\nGB/s per GPU: bytes sent to other GPUs (rows x row bytes, a rank's own rows not \
         counted), averaged over the ranks, / the slowest rank's wall time of the call (count \
         exchange, allocation, NCCL send/recv, stream idle). DeepEP-counted: all rows a rank \
         receives, its own included, as DeepEP's test_intranode counts them. Peer copies: \
         cuMemcpyPeerAsync of the same byte count, CUDA-event timed.\n\
         For reference only, not a same-run comparison: DeepEP's README gives 153 GB/s dispatch \
         and 158 GB/s combine intranode (8 x H800, NVLink ~160 GB/s maximum, FP8 dispatch, BF16 \
         combine, top-4 groups); NVLink bandwidth differs per machine and GPU count."
    );
    Ok(())
}
