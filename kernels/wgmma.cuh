// Building blocks of the Hopper grouped GEMMs (kernels/grouped_gemm_sm90.cu, one CTA a unit,
// and kernels/grouped_gemm_sm90_clusters.cu, two or four CTAs of a cluster a unit): mbarriers, TMA loads
// (plain and multicast), wgmma on 128B-swizzled shared memory, a unit's main loop on a consumer
// warpgroup and its epilogue. Compiled as one NVRTC program with both (Kernel::source).

#include <cuda_bf16.h>

// A CUtensorMap (128 opaque bytes), passed by value as a __grid_constant__ kernel parameter.
struct __align__(64) TmaDesc {
    unsigned long long v[16];
};

// K of one pipeline stage (one 128-byte swizzle row of bf16).
#define BK 64

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbar_init(unsigned long long* bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count));
}

__device__ __forceinline__ void mbar_expect_tx(unsigned long long* bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes)
                 : "memory");
}

__device__ __forceinline__ void mbar_arrive(unsigned long long* bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}

// Waits for the phase of `bar` with `parity` to complete; CLUSTER also acquires what threads of
// the other CTAs of the cluster released before arriving (mbar_wait_cluster).
template <bool CLUSTER>
__device__ __forceinline__ void mbar_wait_parity(unsigned long long* bar, unsigned parity) {
    const unsigned a = smem_u32(bar);
    unsigned done;
    do {
        if (CLUSTER)
            asm volatile(
                "{\n.reg .pred p;\nmbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                : "=r"(done)
                : "r"(a), "r"(parity)
                : "memory");
        else
            asm volatile(
                "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                : "=r"(done)
                : "r"(a), "r"(parity)
                : "memory");
    } while (!done);
}

__device__ __forceinline__ void mbar_wait(unsigned long long* bar, unsigned parity) { mbar_wait_parity<false>(bar, parity); }

// TMA: a box of the 2D tensor `map` at (inner c0, outer c1) into shared memory at `dst`,
// completing `bytes` transactions on `bar`.
__device__ __forceinline__ void tma_load_2d(void* dst, const TmaDesc* map, unsigned long long* bar, int c0, int c1) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];\n" ::"r"(
            smem_u32(dst)),
        "l"(reinterpret_cast<unsigned long long>(map)), "r"(smem_u32(bar)), "r"(c0), "r"(c1)
        : "memory");
}

// The same box multicast into the shared memory of the CTAs of the cluster in `mask` (bit r:
// CTA r; same offset, each completing the box's bytes on its own mbarrier at `bar`'s offset).
__device__ __forceinline__ void tma_load_2d_multicast(void* dst, const TmaDesc* map, unsigned long long* bar, int c0,
                                                      int c1, unsigned mask) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, {%3, %4}], [%2], %5;\n" ::"r"(
            smem_u32(dst)),
        "l"(reinterpret_cast<unsigned long long>(map)), "r"(smem_u32(bar)), "r"(c0), "r"(c1), "h"((unsigned short)mask)
        : "memory");
}

// The address of `p`'s offset in the shared memory of CTA `cta` of the cluster.
__device__ __forceinline__ unsigned cluster_addr(const void* p, unsigned cta) {
    unsigned r;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(r) : "r"(smem_u32(p)), "r"(cta));
    return r;
}

// Arrives on the mbarrier at `bar`'s offset in CTA `cta` of the cluster, releasing this thread's
// earlier writes (local or remote shared memory) to the cluster.
__device__ __forceinline__ void mbar_arrive_cta(unsigned long long* bar, unsigned cta) {
    asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];\n" ::"r"(cluster_addr(bar, cta))
                 : "memory");
}

// Arrives on the mbarrier at `bar`'s offset in CTA `cta` of the cluster with the default (CTA)
// release: enough to hand back a stage that this thread's wgmma has finished reading (the wait
// on its group orders the reads), and far cheaper per stage than a cluster-scope release, which
// waits for all of this thread's earlier memory operations.
__device__ __forceinline__ void mbar_arrive_remote(unsigned long long* bar, unsigned cta) {
    asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];\n" ::"r"(cluster_addr(bar, cta)) : "memory");
}

// mbar_wait that also acquires what threads of the other CTAs released before arriving.
__device__ __forceinline__ void mbar_wait_cluster(unsigned long long* bar, unsigned parity) {
    mbar_wait_parity<true>(bar, parity);
}

__device__ __forceinline__ void st_cluster(int* p, unsigned cta, int v) {
    asm volatile("st.shared::cluster.u32 [%0], %1;\n" ::"r"(cluster_addr(p, cta)), "r"(v) : "memory");
}

__device__ __forceinline__ unsigned cluster_rank() {
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
    return r;
}

// Every thread of both CTAs of the cluster, with release/acquire of shared memory.
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}

// Shared-memory matrix descriptor of a K-major tile with 128-byte rows in the 128B swizzle
// (8-row atoms of 1024 bytes: stride byte offset 1024, leading byte offset unused = 1).
__device__ __forceinline__ unsigned long long smem_desc(const void* p) {
    const unsigned long long a = smem_u32(p);
    return ((a & 0x3FFFFull) >> 4) | (1ull << 16) | (64ull << 32) | (1ull << 62);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Keeps the compiler from moving accumulator reads or writes across the asynchronous wgmma.
template <int N>
__device__ __forceinline__ void fence_regs(float* d) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// (The wgmma instruction itself, one wrapper a shape: kernels/wgmma_shapes.cuh.)

// Unit t of a banded raster over m_units x n_tiles: bands of `band` M units, N in order inside
// a band, M fastest.
__device__ __forceinline__ void band_coords(int t, int m_units, int n_tiles, int band, int& m, int& n) {
    const int b = t / (band * n_tiles);
    const int first = b * band;
    const int rows = min(band, m_units - first);
    const int idx = t - b * band * n_tiles;
    m = first + idx % rows;
    n = idx / rows;
}

// The shared memory of both Hopper kernels: ST pipeline stages of an A tile (a_bytes) and a B
// tile (b_bytes) from a 1024-byte boundary (the 128B swizzle's; the host adds 1 KiB of slack,
// and both CTAs of a pair get the same offsets, which multicast and remote arrivals rely on),
// the stages' full and empty barriers, the unit ring (TS slots: two barriers and an int each),
// then the kernel's tables.
struct SmemRing {
    __nv_bfloat16 *a, *b;
    unsigned long long *full, *empty, *tfull, *tempty;
    int* unit;
    int* tables;
};

template <int ST, int TS>
__device__ __forceinline__ SmemRing carve_smem(unsigned char* raw, int a_bytes, int b_bytes) {
    unsigned char* smem = raw + ((1024 - (smem_u32(raw) & 1023)) & 1023);
    SmemRing r;
    r.a = reinterpret_cast<__nv_bfloat16*>(smem);
    r.b = reinterpret_cast<__nv_bfloat16*>(smem + ST * a_bytes);
    r.full = reinterpret_cast<unsigned long long*>(smem + ST * (a_bytes + b_bytes));
    r.empty = r.full + ST;
    r.tfull = r.empty + ST;
    r.tempty = r.tfull + TS;
    r.unit = reinterpret_cast<int*>(r.tempty + TS);
    r.tables = r.unit + TS;
    return r;
}

// Thread 0 initialises the barriers: a stage is filled by one producer arrival (plus its
// bytes) and freed by `stage_readers` arrivals; a unit slot likewise by one and `unit_readers`.
template <int ST, int TS>
__device__ __forceinline__ void init_ring(const SmemRing& r, unsigned stage_readers, unsigned unit_readers) {
    if (threadIdx.x != 0) return;
    for (int s = 0; s < ST; ++s) {
        mbar_init(&r.full[s], 1);
        mbar_init(&r.empty[s], stage_readers);
    }
    for (int s = 0; s < TS; ++s) {
        mbar_init(&r.tfull[s], 1);
        mbar_init(&r.tempty[s], unit_readers);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

// B row of box j (64 weight rows) of N tile n. Gate/up: each consumer's WN rows are WN/2 gate
// rows, then the same features' up rows, so one thread holds both halves of an output element.
template <int BN_, int WN, bool GATE_UP>
__device__ __forceinline__ int b_box_row(int j, int n, int inter) {
    if (!GATE_UP) return n * BN_ + j * 64;
    const int slice = j * 64 / WN, within = j * 64 % WN;
    const int up = within >= WN / 2;
    return up * inter + n * (BN_ / 2) + slice * (WN / 2) + within - up * (WN / 2);
}

// One unit's main loop on a consumer warpgroup: k_tiles stages of the ring from `it` on, each
// waited for, multiplied (unless idle) and handed back with `release(stage)` once the next
// stage's MMAs are issued. d ends up holding this consumer's 64 x WN accumulators.
// Zeroes rows [from, 64) of a consumer's 64-row A block in shared memory (128-byte rows; the
// swizzle only permutes chunks inside a row) and makes the zeros visible to its wgmma. Those rows
// belong to the next expert or lie past the matrix and are never stored; multiplying zeros
// instead of live token values costs the tensor cores less energy, and the layer runs at the
// GPU's power cap. All 128 threads of the consumer warpgroup take part.
__device__ __forceinline__ void zero_tail_rows(__nv_bfloat16* a, int from) {
    uint4* rows = reinterpret_cast<uint4*>(a);
    for (int i = from * 8 + (int)(threadIdx.x & 127); i < 64 * 8; i += 128) rows[i] = make_uint4(0, 0, 0, 0);
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    asm volatile("bar.sync %0, 128;\n" ::"r"((int)(threadIdx.x / 128)) : "memory");
}

// valid_rows: rows of this consumer's 64-row A block that belong to the unit (64: all); the rest
// are zeroed in each stage before the MMAs (zero_tail_rows). The consumer must own its A block
// (not shared with another consumer).
template <int WN, int ST, int BM_, int BN_, class Release>
__device__ __forceinline__ void mma_unit(float* d, __nv_bfloat16* sA, const __nv_bfloat16* sB,
                                         unsigned long long* full, int& it, int k_tiles, bool idle, int a_off,
                                         int b_off, int lane, Release release, int valid_rows = 64) {
#pragma unroll
    for (int i = 0; i < WN / 2; ++i) d[i] = 0.0f;
    for (int kt = 0; kt < k_tiles; ++kt, ++it) {
        const int s = it % ST;
        mbar_wait(&full[s], (it / ST) & 1);
        if (!idle) {
            __nv_bfloat16* a = sA + s * (BM_ * BK) + a_off;
            const __nv_bfloat16* b = sB + s * (BN_ * BK) + b_off;
            if (valid_rows < 64) zero_tail_rows(a, valid_rows);
            fence_regs<WN / 2>(d);
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < BK / 16; ++kk) {
                wgmma_m64k16<WN>(d, smem_desc(a + kk * 16), smem_desc(b + kk * 16));
            }
            wgmma_commit();
            // Keep this stage's group in flight; the previous one is done, release its stage.
            wgmma_wait<1>();
            fence_regs<WN / 2>(d);
        }
        if (kt > 0 && lane == 0) release((it - 1) % ST);
    }
    wgmma_wait<0>();
    fence_regs<WN / 2>(d);
    if (lane == 0) release((it - 1) % ST);
}

// The router weights of this consumer thread's two epilogue rows (down; gate/up has none),
// loaded before the unit's main loop so that the two dependent global loads hide behind it.
template <bool GATE_UP>
__device__ __forceinline__ void row_weights(const int* __restrict__ order, const float* __restrict__ pair_weight,
                                            int my_row0, int row_end, int warp, int lane, float* w) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int row = my_row0 + warp * 16 + (lane >> 2) + h * 8;
        w[h] = !GATE_UP && row < row_end ? pair_weight[order[row]] : 0.0f;
    }
}

// Epilogue of one consumer straight from registers: d[4j + q] is row 16 * warp + lane / 4 +
// 8 * (q / 2), column 8j + 2 * (lane % 4) + q % 2 of its 64 x WN block. Gate/up stores
// silu(gate) * up (act columns n * BN_/2 + col_off/2 ...); down stores the row times its router
// weight w[h] (row_weights).
template <bool GATE_UP, int WN, int BN_>
__device__ __forceinline__ void store_unit(const float* d, __nv_bfloat16* __restrict__ out, const float* w, int my_row0,
                                           int row_end, int n, int col_off, int inter, int n_total, int warp,
                                           int lane) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int row = my_row0 + warp * 16 + (lane >> 2) + h * 8;
        if (row >= row_end) continue;
        if (GATE_UP) {
#pragma unroll
            for (int j = 0; j < WN / 16; ++j) {
                const int col = n * (BN_ / 2) + col_off / 2 + j * 8 + 2 * (lane & 3);
                const float g0 = d[4 * j + 2 * h], g1 = d[4 * j + 2 * h + 1];
                const float u0 = d[4 * (j + WN / 16) + 2 * h], u1 = d[4 * (j + WN / 16) + 2 * h + 1];
                *reinterpret_cast<__nv_bfloat162*>(out + (size_t)row * inter + col) =
                    __floats2bfloat162_rn(silu(g0) * u0, silu(g1) * u1);
            }
        } else {
#pragma unroll
            for (int j = 0; j < WN / 8; ++j) {
                const int col = n * BN_ + col_off + j * 8 + 2 * (lane & 3);
                *reinterpret_cast<__nv_bfloat162*>(out + (size_t)row * n_total + col) =
                    __floats2bfloat162_rn(w[h] * d[4 * j + 2 * h], w[h] * d[4 * j + 2 * h + 1]);
            }
        }
    }
}
