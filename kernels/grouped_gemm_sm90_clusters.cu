// The Hopper grouped GEMMs of kernels/grouped_gemm_sm90.cu (same projections, same 128 x 256
// tile a CTA, same producer and consumers) run by clusters of CL = 2 or 4 CTAs that take each
// unit together and share operands through TMA multicast, so that each crosses from L2 once
// for the CTAs that use it. A single CTA's accumulators bound its tile to 128 x 256, so each
// expert's weights leave L2 once per 128 rows and its token rows once per 256 weight rows;
// when an expert holds a few hundred rows the L2 (SM reads plus DRAM fills), not the tensor
// cores, is the limit.
//
// Each expert's rows are cut into super tiles of 256 rows; a unit is one super tile and a group
// of CL N tiles (N mode) or CL / 2 N tiles (M mode). CTA r has M half m = r % 2 and N slot
// q = r / 2 (pairs: q = 0):
//   M mode (the super tile holds more than 128 rows): the CTAs of M half m take rows
//          128 m .. 128 m + 127, those of slot q the N tile (CL / 2) g + q. The two CTAs of one
//          N tile share its weights (each loads half of the B boxes and multicasts them to
//          both), so an expert's weights are read once per 256 rows; in a cluster of four the
//          two CTAs of one M half also share its token rows (each loads every other A box);
//   N mode (128 rows or fewer): every CTA takes the same rows and its own N tile CL g + r; the
//          A boxes (token rows) are loaded by one CTA each and multicast to all.
// `multicast` (bit 0: weights, bit 1: token rows) turns either off — a diagnostic: each CTA
// then loads the whole operand itself.
//
// Units come from a global counter taken by CTA 0 of the cluster, which writes each into every
// CTA's unit ring. Every stage of a CTA's ring may be written by the other producers, so a stage
// is refilled only when the consumers of all CL CTAs have released it; all CTAs walk the same
// units with the same stage sequence, and none leaves while another may still signal it.

// (Compiled after kernels/wgmma.cuh and kernels/grouped_gemm_sm90.cu; see Kernel::source.)

// Units of one expert of `rows` rows: n_tiles / (CL / 2) per full or more-than-half super tile,
// n_tiles / CL for a last super tile of 128 rows or fewer.
template <int CL>
__device__ __forceinline__ int pair_units(int rows, int n_tiles) {
    const int tail = rows % 256;
    const int m_units = n_tiles / (CL / 2);
    return rows / 256 * m_units + (tail == 0 ? 0 : tail <= 128 ? n_tiles / CL : m_units);
}

// Where unit t falls, for CTA `rank` of the cluster.
struct PairUnit {
    int expert, row0, row_end, n;
    bool m_pair;
};

// Unit t: its expert (units[e] <= t < units[e + 1]), then a banded raster of the expert's full
// super tiles (bands of `band` super tiles, N groups inside a band), then its last, partial one.
template <int CL>
__device__ __forceinline__ PairUnit pair_unit(int t, int rank, const int* units, const int* offsets, int n_experts,
                                              int n_tiles, int band) {
    PairUnit p;
    p.expert = expert_of_tile(units, n_experts, t);
    const int v = t - units[p.expert];
    const int start = offsets[p.expert];
    p.row_end = offsets[p.expert + 1];
    const int full = (p.row_end - start) / 256;
    const int m_units = n_tiles / (CL / 2);
    int st, g, rows;
    if (v < full * m_units) {
        band_coords(v, full, m_units, band, st, g);
        rows = 256;
    } else {
        st = full;
        g = v - full * m_units;
        rows = p.row_end - start - 256 * full;
    }
    p.m_pair = rows > 128;
    p.row0 = start + 256 * st + (p.m_pair ? 128 * (rank % 2) : 0);
    p.n = p.m_pair ? (CL / 2) * g + rank / 2 : CL * g + rank;
    return p;
}

// The producer's loads of one stage of unit p into CTA `rank`'s stage buffers a (token rows)
// and b (weights): each shared box is loaded by one of the CTAs sharing it and multicast to
// them (see the header for who shares what).
template <int CL, bool GATE_UP>
__device__ __forceinline__ void pair_stage_loads(const PairUnit& p, int rank, int multicast, const TmaDesc* ta,
                                                 const TmaDesc* tb, __nv_bfloat16* a, __nv_bfloat16* b,
                                                 unsigned long long* bar, int kt, int wrow, int inter, int a_boxes) {
    constexpr int BN_ = 256, WN = 256;
    const int m = rank % 2, q = rank / 2;
    // Token rows: in M mode shared by the CTAs of one M half (a cluster of four only), in N mode
    // by all.
    const unsigned a_mask = p.m_pair ? (CL == 4 ? (1u | 4u) << m : 0u) : (1u << CL) - 1;
    const int a_sharers = p.m_pair ? CL / 2 : CL, a_slot = p.m_pair ? q : rank;
    const bool share_a = a_mask != 0 && (multicast & 2);
    for (int i = 0; i < a_boxes; ++i) {
        __nv_bfloat16* dst = a + i * 64 * BK;
        if (!share_a) tma_load_2d(dst, ta, bar, kt * BK, p.row0 + i * 64);
        else if (i % a_sharers == a_slot) tma_load_2d_multicast(dst, ta, bar, kt * BK, p.row0 + i * 64, a_mask);
    }
    // Weights: in M mode shared by the two CTAs of one N tile.
    const bool share_b = p.m_pair && (multicast & 1);
#pragma unroll
    for (int j = 0; j < BN_ / 64; ++j) {
        const int r = wrow + b_box_row<BN_, WN, GATE_UP>(j, p.n, inter);
        if (!share_b) tma_load_2d(b + j * 64 * BK, tb, bar, kt * BK, r);
        else if (j / 2 == m) tma_load_2d_multicast(b + j * 64 * BK, tb, bar, kt * BK, r, 3u << (2 * q));
    }
}

template <bool GATE_UP, int CL>
__device__ __forceinline__ void wgmma_pair_gemm(
    const TmaDesc* ta,                        // A: [P, K] rows in sorted order, box 64 x 64
    const TmaDesc* tb,                        // B: [n_experts * n_total, K], box 64 x 64
    __nv_bfloat16* __restrict__ out,          // gate/up: act [P, n_total/2]; down: y [P, n_total]
    const int* __restrict__ order,            // [P] pair of each sorted row
    const float* __restrict__ pair_weight,    // down: router weight of each pair
    const int* offsets,                       // [n_experts + 1]
    int n_experts, int n_total, int k, int band, int multicast,
    int* counter) {                           // zeroed: units taken so far
    constexpr int BM_ = 128, BN_ = 256, WN = 256, ST = 4, TS = 4;
    constexpr int A_BOX = 64 * BK * 2;
    constexpr int B_BYTES = BN_ * BK * 2;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const SmemRing ring = carve_smem<ST, TS>(smem_raw, BM_ * BK * 2, B_BYTES);
    __nv_bfloat16 *sA = ring.a, *sB = ring.b;
    unsigned long long *full = ring.full, *empty = ring.empty, *tfull = ring.tfull;
    unsigned long long* tempty = ring.tempty;  // used in CTA 0 only: every reader of all CTAs
    int* s_unit = ring.unit;
    int* s_units = ring.tables;  // [n_experts + 1] units before each expert
    int* s_offs = s_units + 1025;
    for (int i = threadIdx.x; i <= n_experts; i += blockDim.x) s_offs[i] = offsets[i];
    offsets = s_offs;

    const int wg = threadIdx.x / 128;
    const int rank = (int)cluster_rank();
    const int inter = n_total / 2;
    const int n_tiles = GATE_UP ? inter / (BN_ / 2) : n_total / BN_;
    const int k_tiles = k / BK;
    band = max(1, band / 2);  // super tiles of two 128-row M units

    // Readers: lane 0 of each consumer warp of every CTA (and of a unit, the other producers).
    init_ring<ST, TS>(ring, CL * 8, CL * 8 + CL - 1);
    __syncthreads();
    if (threadIdx.x < 32) {
        // Units before each expert: a warp scan over chunks of 32 experts.
        const int lane = threadIdx.x;
        int carry = 0;
        for (int base = 0; base < n_experts; base += 32) {
            const int e = base + lane;
            int v = e < n_experts ? pair_units<CL>(offsets[e + 1] - offsets[e], n_tiles) : 0;
#pragma unroll
            for (int off = 1; off < 32; off <<= 1) {
                const int y = __shfl_up_sync(0xffffffffu, v, off);
                if (lane >= off) v += y;
            }
            if (e < n_experts) s_units[e + 1] = carry + v;
            carry += __shfl_sync(0xffffffffu, v, 31);
        }
        if (lane == 0) s_units[0] = 0;
    }
    // Every CTA's barriers exist (and the scan is done) before any signals another.
    cluster_sync();
    const int total = s_units[n_experts];

    if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
        if (threadIdx.x == 0) {
            int it = 0;
            // CTA 0 takes each unit one ahead, so the atomic's latency hides behind a unit's loads.
            int next = rank == 0 ? atomicAdd(counter, 1) : 0;
            for (int u = 0;; ++u) {
                const int slot = u % TS;
                int t;
                if (rank == 0) {
                    mbar_wait(&tempty[slot], ((u / TS) & 1) ^ 1);
                    t = next;
                    if (t < total) next = atomicAdd(counter, 1);
                    s_unit[slot] = t;
                    for (int r = 1; r < CL; ++r) st_cluster(&s_unit[slot], r, t);
                    mbar_arrive(&tfull[slot]);
                    for (int r = 1; r < CL; ++r) mbar_arrive_cta(&tfull[slot], r);
                } else {
                    mbar_wait_cluster(&tfull[slot], (u / TS) & 1);
                    t = s_unit[slot];
                    if (t >= 0) mbar_arrive_remote(&tempty[slot], 0);  // (after the read: see below)
                }
                if (t >= total) break;
                const PairUnit p = pair_unit<CL>(t, rank, s_units, offsets, n_experts, n_tiles, band);
                const int a_boxes = min(2, (p.row_end - p.row0 + 63) / 64);
                for (int kt = 0; kt < k_tiles; ++kt, ++it) {
                    const int s = it % ST;
                    mbar_wait(&empty[s], ((it / ST) & 1) ^ 1);
                    mbar_expect_tx(&full[s], a_boxes * A_BOX + B_BYTES);
                    pair_stage_loads<CL, GATE_UP>(p, rank, multicast, ta, tb, sA + s * (BM_ * BK), sB + s * (BN_ * BK),
                                                  &full[s], kt, p.expert * n_total, inter, a_boxes);
                }
            }
        }
    } else {
        asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
        const int c = wg - 1;
        const int ct = threadIdx.x - 128 * wg;
        const int warp = ct / 32, lane = ct % 32;
        float d[WN / 2];
        int it = 0;
        for (int u = 0;; ++u) {
            const int slot = u % TS;
            mbar_wait_cluster(&tfull[slot], (u / TS) & 1);
            const int t = s_unit[slot];
            __syncwarp();
            // Hands the slot back once its value is read (the branch on it orders the two)
            // without a cluster-scope release, which would first wait for this thread's
            // epilogue stores of the previous unit.
            if (lane == 0 && t >= 0) mbar_arrive_remote(&tempty[slot], 0);
            if (t >= total) break;
            const PairUnit p = pair_unit<CL>(t, rank, s_units, offsets, n_experts, n_tiles, band);
            const int my_row0 = p.row0 + c * 64;
            const bool idle = my_row0 >= p.row_end;
            float w[2];
            row_weights<GATE_UP>(order, pair_weight, my_row0, p.row_end, warp, lane, w);
            mma_unit<WN, ST, BM_, BN_>(d, sA, sB, full, it, k_tiles, idle, c * 64 * BK, 0, lane, [&](int s) {
                mbar_arrive(&empty[s]);
                for (int r = 1; r < CL; ++r) mbar_arrive_remote(&empty[s], (rank + r) % CL);
            }, min(64, p.row_end - my_row0));
            if (idle) continue;
            store_unit<GATE_UP, WN, BN_>(d, out, w, my_row0, p.row_end, p.n, 0, inter, n_total, warp, lane);
        }
    }
    // No CTA leaves while another may still multicast into it or arrive on its barriers.
    __syncwarp();
    cluster_sync();
}

#define PAIR_ARGS                                                                                  \
    const __grid_constant__ TmaDesc ta, const __grid_constant__ TmaDesc tb,                        \
        __nv_bfloat16 *__restrict__ out, const int *__restrict__ order,                           \
        const float *__restrict__ pair_weight, const int *__restrict__ offsets, int n_experts,     \
        int n_total, int k, int band, int multicast, int *counter
#define PAIR_PASS &ta, &tb, out, order, pair_weight, offsets, n_experts, n_total, k, band, multicast, counter

extern "C" __global__ void __cluster_dims__(2, 1, 1) __launch_bounds__(384, 1) gate_up_wgmma_pairs(PAIR_ARGS) {
    wgmma_pair_gemm<true, 2>(PAIR_PASS);
}
extern "C" __global__ void __cluster_dims__(2, 1, 1) __launch_bounds__(384, 1) down_wgmma_pairs(PAIR_ARGS) {
    wgmma_pair_gemm<false, 2>(PAIR_PASS);
}
extern "C" __global__ void __cluster_dims__(4, 1, 1) __launch_bounds__(384, 1) gate_up_wgmma_quads(PAIR_ARGS) {
    wgmma_pair_gemm<true, 4>(PAIR_PASS);
}
extern "C" __global__ void __cluster_dims__(4, 1, 1) __launch_bounds__(384, 1) down_wgmma_quads(PAIR_ARGS) {
    wgmma_pair_gemm<false, 4>(PAIR_PASS);
}
