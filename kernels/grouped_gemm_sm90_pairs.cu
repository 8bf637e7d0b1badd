// The Hopper grouped GEMMs of kernels/grouped_gemm_sm90.cu (same projections, same 128 x 256
// tile a CTA, same producer and consumers) run by clusters of two CTAs that take each unit
// together and share one operand through TMA multicast, so that it crosses from L2 once for
// both SMs. A single CTA's accumulators bound its tile to 128 x 256, so each expert's weights
// leave L2 once per 128 rows and its token rows once per 128 columns; when an expert holds a
// few hundred rows the L2 (SM reads plus DRAM fills), not the tensor cores, is the limit.
//
// Each expert's rows are cut into super tiles of 256 rows; a unit is one super tile and one
// column group:
//   M pair (the super tile holds more than 128 rows): CTA r takes rows 128 r .. 128 r + 127
//          and both take the same N tile; each loads half of the B boxes (the weights) and
//          multicasts them to both, so the expert's weights are read once per 256 rows;
//   N pair (128 rows or fewer): both take the same rows, CTA r the N tile 2 g + r; each loads
//          every other A box (the token rows) and multicasts it.
// `multicast` (bit 0: B of M pairs, bit 1: A of N pairs) turns either off — a diagnostic: each
// CTA then loads the whole operand itself.
//
// Units come from a global counter taken by CTA 0 of the cluster, which writes each into both
// CTAs' unit rings. Every stage of a CTA's ring may be written by both producers, so a stage is
// refilled only when the consumers of both CTAs have released it; both CTAs walk the same units
// with the same stage sequence, and neither leaves while the other may still signal it.

// (Compiled after kernels/wgmma.cuh and kernels/grouped_gemm_sm90.cu; see Kernel::source.)

// Units of one expert of `rows` rows: n_tiles per full or more-than-half super tile, n_tiles / 2
// for a last super tile of 128 rows or fewer.
__device__ __forceinline__ int pair_units(int rows, int n_tiles) {
    const int tail = rows % 256;
    return rows / 256 * n_tiles + (tail == 0 ? 0 : tail <= 128 ? n_tiles / 2 : n_tiles);
}

// Where unit t falls, for CTA `rank` of the pair.
struct PairUnit {
    int expert, row0, row_end, n;
    bool m_pair;
};

// Unit t: its expert (units[e] <= t < units[e + 1]), then a banded raster of the expert's full
// super tiles (bands of `band` super tiles, N inside a band), then its last, partial one.
__device__ __forceinline__ PairUnit pair_unit(int t, int rank, const int* units, const int* offsets, int n_experts,
                                              int n_tiles, int band) {
    PairUnit p;
    p.expert = expert_of_tile(units, n_experts, t);
    const int v = t - units[p.expert];
    const int start = offsets[p.expert];
    p.row_end = offsets[p.expert + 1];
    const int full = (p.row_end - start) / 256;
    int st, g, rows;
    if (v < full * n_tiles) {
        band_coords(v, full, n_tiles, band, st, g);
        rows = 256;
    } else {
        st = full;
        g = v - full * n_tiles;
        rows = p.row_end - start - 256 * full;
    }
    p.m_pair = rows > 128;
    p.row0 = start + 256 * st + (p.m_pair ? 128 * rank : 0);
    p.n = p.m_pair ? g : 2 * g + rank;
    return p;
}

template <bool GATE_UP>
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
    constexpr int A_BYTES = BM_ * BK * 2;
    constexpr int B_BYTES = BN_ * BK * 2;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const SmemRing ring = carve_smem<ST, TS>(smem_raw, A_BYTES, B_BYTES);
    __nv_bfloat16 *sA = ring.a, *sB = ring.b;
    unsigned long long *full = ring.full, *empty = ring.empty, *tfull = ring.tfull;
    unsigned long long* tempty = ring.tempty;  // used in CTA 0 only: every reader of both CTAs
    int* s_unit = ring.unit;
    int* s_units = ring.tables;  // [n_experts + 1] units before each expert
    int* s_offs = s_units + 1025;
    for (int i = threadIdx.x; i <= n_experts; i += blockDim.x) s_offs[i] = offsets[i];
    offsets = s_offs;

    const int wg = threadIdx.x / 128;
    const int rank = (int)cluster_rank(), peer = rank ^ 1;
    const int inter = n_total / 2;
    const int n_tiles = GATE_UP ? inter / (BN_ / 2) : n_total / BN_;
    const int k_tiles = k / BK;
    band = max(1, band / 2);  // super tiles of two 128-row M units

    // Readers: lane 0 of each consumer warp of both CTAs (and of a unit, CTA 1's producer).
    init_ring<ST, TS>(ring, 2 * 8, 2 * 8 + 1);
    __syncthreads();
    if (threadIdx.x < 32) {
        // Units before each expert: a warp scan over chunks of 32 experts.
        const int lane = threadIdx.x;
        int carry = 0;
        for (int base = 0; base < n_experts; base += 32) {
            const int e = base + lane;
            int v = e < n_experts ? pair_units(offsets[e + 1] - offsets[e], n_tiles) : 0;
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
    // Both CTAs' barriers exist (and the scan is done) before either signals the other.
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
                    st_cluster(&s_unit[slot], 1, t);
                    mbar_arrive(&tfull[slot]);
                    mbar_arrive_cta(&tfull[slot], 1);
                } else {
                    mbar_wait_cluster(&tfull[slot], (u / TS) & 1);
                    t = s_unit[slot];
                    if (t >= 0) mbar_arrive_remote(&tempty[slot], 0);  // (after the read: see below)
                }
                if (t >= total) break;
                const PairUnit p = pair_unit(t, rank, s_units, offsets, n_experts, n_tiles, band);
                const int wrow = p.expert * n_total;
                const int a_boxes = min(2, (p.row_end - p.row0 + 63) / 64);
                const bool share_a = !p.m_pair && (multicast & 2);
                const bool share_b = p.m_pair && (multicast & 1);
                for (int kt = 0; kt < k_tiles; ++kt, ++it) {
                    const int s = it % ST;
                    mbar_wait(&empty[s], ((it / ST) & 1) ^ 1);
                    mbar_expect_tx(&full[s], a_boxes * A_BOX + B_BYTES);
                    __nv_bfloat16* a = sA + s * (BM_ * BK);
                    __nv_bfloat16* b = sB + s * (BN_ * BK);
                    for (int i = 0; i < a_boxes; ++i) {
                        if (!share_a) tma_load_2d(a + i * 64 * BK, ta, &full[s], kt * BK, p.row0 + i * 64);
                        else if (i % 2 == rank) tma_load_2d_pair(a + i * 64 * BK, ta, &full[s], kt * BK, p.row0 + i * 64);
                    }
#pragma unroll
                    for (int j = 0; j < BN_ / 64; ++j) {
                        const int r = wrow + b_box_row<BN_, WN, GATE_UP>(j, p.n, inter);
                        if (!share_b) tma_load_2d(b + j * 64 * BK, tb, &full[s], kt * BK, r);
                        else if (j / 2 == rank) tma_load_2d_pair(b + j * 64 * BK, tb, &full[s], kt * BK, r);
                    }
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
            const PairUnit p = pair_unit(t, rank, s_units, offsets, n_experts, n_tiles, band);
            const int my_row0 = p.row0 + c * 64;
            const bool idle = my_row0 >= p.row_end;
            float w[2];
            row_weights<GATE_UP>(order, pair_weight, my_row0, p.row_end, warp, lane, w);
            mma_unit<WN, ST, BM_, BN_>(d, sA, sB, full, it, k_tiles, idle, c * 64 * BK, 0, lane, [&](int s) {
                mbar_arrive(&empty[s]);
                mbar_arrive_remote(&empty[s], peer);
            });
            if (idle) continue;
            store_unit<GATE_UP, WN, BN_>(d, out, w, my_row0, p.row_end, p.n, 0, inter, n_total, warp, lane);
        }
    }
    // Neither CTA leaves while the other may still multicast into it or arrive on its barriers.
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
    wgmma_pair_gemm<true>(PAIR_PASS);
}
extern "C" __global__ void __cluster_dims__(2, 1, 1) __launch_bounds__(384, 1) down_wgmma_pairs(PAIR_ARGS) {
    wgmma_pair_gemm<false>(PAIR_PASS);
}
