// Grouped GEMM over variable-size expert groups on Hopper's warpgroup tensor-core instructions
// (wgmma, HGMMA in the SASS), bf16 in, f32 accumulate; compiled for sm_90a only. Same two
// projections as kernels/grouped_gemm.cu:
//
//   gate/up: act[r, n] = silu(xs[r] . gate_e[n]) * (xs[r] . up_e[n]), where xs holds the token
//            rows already copied into sorted order (scatter_rows in grouped_gemm.cu), so that A
//            is a plain row-major matrix TMA can tile; SiLU*up is fused into the epilogue: each
//            N tile holds 128 gate rows and the 128 matching up rows, so one thread's accumulators
//            hold both the gate and the up value of an output element.
//   down:    y[r, n] = w[order[r]] * (act[r] . down_e[n]), the router weight in the epilogue.
//
// Tiles are 128 x 256 (x 64 of K per stage; see wgmma_grouped_gemm). One CTA per
// SM: warpgroup 0 is the producer (one thread issues TMA loads of A and B into a ring of
// 128B-swizzled shared memory, each stage guarded by a "full" and an "empty" mbarrier; it gives
// its registers back with setmaxnreg), warpgroups 1.. are consumers, each multiplying its 64
// rows of the A tile by the B tile (wgmma m64n256k16 or m64n128k16, f32 accumulators in
// registers) and storing the result straight from registers. The schedule is persistent: each
// CTA takes its first unit blockIdx.x, then the next free one from a counter, of a banded raster
// (bands of `band` M units, N inside a band; expert by expert, or over all experts' tiles) so
// that the CTAs in flight share A and B tiles in L2; the producer runs ahead into the next tile
// while the consumers store the previous one.
//
// Variable groups come from the device tile map (tile_offsets, from kernels/permute.cu with bm
// = the tile map's rows, 128): tile m belongs to expert e with tile_offsets[e] <= m <
// tile_offsets[e+1]; its rows start at offsets[e] + bm * (m - tile_offsets[e]); rows past the
// expert's end (or past the matrix, which TMA fills with zeros) are never stored, and a
// consumer whose 64 rows all lie past it neither loads nor multiplies. The host checks that K is
// a multiple of 64 and the N tiles divide N.

// (Compiled after kernels/wgmma.cuh, which holds the building blocks; see Kernel::source.)

// Unit t of the schedule: either one banded raster over all M units (expert_major = 0), or the
// experts in order, each a banded raster of its own M units (expert_major = 1), so that no band
// straddles two experts and each expert's weights are streamed by one band at a time.
template <int PER>
__device__ __forceinline__ void tile_coords(int t, const int* tile_offsets, int n_experts, int n_tiles, int band,
                                            int expert_major, int& m, int& n) {
    if (!expert_major) {
        band_coords(t, tile_offsets[n_experts] * PER, n_tiles, band, m, n);
        return;
    }
    const int e = expert_of_tile(tile_offsets, n_experts, t / (PER * n_tiles));
    const int first = tile_offsets[e] * PER;
    band_coords(t - first * n_tiles, tile_offsets[e + 1] * PER - first, n_tiles, band, m, n);
    m += first;
}

// Rows [row0, row_end) of M unit `mu`: unit mu is part BM_ / TILE (SPLIT kernels: half) or all
// of the TILE-row tile mu / (TILE / BM_) of the tile map.
template <int BM_, int TILE>
__device__ __forceinline__ void unit_rows(const int* offsets, const int* tile_offsets, int n_experts, int mu,
                                          int& row0, int& row_end) {
    constexpr int PER = TILE / BM_;
    const int m = mu / PER;
    const int e = expert_of_tile(tile_offsets, n_experts, m);
    row0 = offsets[e] + (m - tile_offsets[e]) * TILE + (mu % PER) * BM_;
    row_end = offsets[e + 1];
}

// NC = 2 consumer warpgroups share one B tile of BN_ = 256 rows (N columns of the output).
// Not SPLIT: each consumer takes its own 64 rows of an NC * 64-row A tile and all BN_ columns
//   (m64n{BN_}); a consumer whose 64 rows lie past its expert's last row idles for that tile
//   (no loads of its A rows, no MMAs), so a ragged expert's last tile costs what it holds, in
//   steps of 64 rows (128 x 256, NC = 2).
// SPLIT: both consumers take the same 64 rows, each BN_ / 2 of the columns (m64n128), on half
//   tiles of the 128-row tile map; this wastes less on groups of a few dozen rows (an M unit
//   past its expert's last row is skipped).
template <bool SPLIT, bool GATE_UP>
__device__ __forceinline__ void wgmma_grouped_gemm(
    const TmaDesc* ta,                        // A: [P, K] rows in sorted order, box 64 x 64
    const TmaDesc* tb,                        // B: [n_experts * n_total, K], box 64 x 64
    __nv_bfloat16* __restrict__ out,          // gate/up: act [P, n_total/2]; down: y [P, n_total]
    const int* __restrict__ order,            // [P] pair of each sorted row
    const float* __restrict__ pair_weight,    // down: router weight of each pair
    const int* offsets,                       // [n_experts + 1]
    const int* tile_offsets,                  // [n_experts + 1], TILE-row tiles
    int n_experts, int n_total, int k, int band, int expert_major,
    int* counter) {                           // zeroed: units taken past the first wave, or null
    constexpr int NC = 2, BN_ = 256;           // consumers, B rows of a tile
    constexpr int BM_ = SPLIT ? 64 : 64 * NC;  // rows of an M unit
    constexpr int TILE = SPLIT ? 128 : BM_;    // rows of a tile of the tile map
    constexpr int PER = TILE / BM_;
    constexpr int WN = SPLIT ? BN_ / NC : BN_;  // columns of one consumer
    constexpr int ST = SPLIT ? 5 : 4;  // pipeline stages
    constexpr int TS = 4;                            // units handed ahead
    constexpr int A_BOX = 64 * BK * 2;
    constexpr int A_BYTES = BM_ * BK * 2;
    constexpr int B_BYTES = BN_ * BK * 2;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const SmemRing ring = carve_smem<ST, TS>(smem_raw, A_BYTES, B_BYTES);
    __nv_bfloat16 *sA = ring.a, *sB = ring.b;
    unsigned long long *full = ring.full, *empty = ring.empty, *tfull = ring.tfull, *tempty = ring.tempty;
    // The unit ring: the producer hands each unit it takes to the consumers (TS deep). The tile
    // map and group offsets, cached once: every tile looks its expert up (a binary search of up
    // to 10 steps), which from global memory would stall each tile for microseconds.
    int* s_unit = ring.unit;
    int* s_tiles = ring.tables;
    int* s_offs = s_tiles + 1025;
    for (int i = threadIdx.x; i <= n_experts; i += blockDim.x) {
        s_tiles[i] = tile_offsets[i];
        s_offs[i] = offsets[i];
    }
    tile_offsets = s_tiles;
    offsets = s_offs;

    const int wg = threadIdx.x / 128;
    const int inter = n_total / 2;
    const int n_tiles = GATE_UP ? inter / (BN_ / 2) : n_total / BN_;
    const int k_tiles = k / BK;

    init_ring<ST, TS>(ring, 4 * NC, 4 * NC);  // readers: lane 0 of each consumer warp
    __syncthreads();
    const int total = tile_offsets[n_experts] * PER * n_tiles;

    if (wg == 0) {
        // Producer: one thread issues every TMA load.
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
        if (threadIdx.x != 0) return;
        int it = 0;
        // Units in the order CTAs come free (a counter), so the units in flight at any time are
        // neighbours in the raster and share their A and B tiles in L2 however the CTAs have
        // drifted; or a fixed stride when there is no counter. Each is taken one unit ahead, so
        // the atomic's latency hides behind a unit's loads.
        int next = counter ? atomicAdd(counter, 1) + gridDim.x : blockIdx.x + gridDim.x;
        for (int u = 0, t = blockIdx.x;; ++u) {
            if (u > 0) {
                t = next;
                if (t < total) next = counter ? atomicAdd(counter, 1) + gridDim.x : t + gridDim.x;
            }
            const int slot = u % TS;
            mbar_wait(&tempty[slot], ((u / TS) & 1) ^ 1);
            s_unit[slot] = t;
            mbar_arrive(&tfull[slot]);
            if (t >= total) break;
            int mu, n, row0, row_end;
            tile_coords<PER>(t, tile_offsets, n_experts, n_tiles, band, expert_major, mu, n);
            unit_rows<BM_, TILE>(offsets, tile_offsets, n_experts, mu, row0, row_end);
            if (row0 >= row_end) continue;  // an empty half tile: the consumers skip it too
            const int e = expert_of_tile(tile_offsets, n_experts, mu / PER);
            const int wrow = e * n_total;
            // Only the 64-row A boxes that hold rows of this expert (idle consumers read none).
            const int a_boxes = SPLIT ? 1 : min(NC, (row_end - row0 + 63) / 64);
            for (int kt = 0; kt < k_tiles; ++kt, ++it) {
                const int s = it % ST;
                mbar_wait(&empty[s], ((it / ST) & 1) ^ 1);
                mbar_expect_tx(&full[s], a_boxes * A_BOX + B_BYTES);
                __nv_bfloat16* a = sA + s * (BM_ * BK);
                __nv_bfloat16* b = sB + s * (BN_ * BK);
                for (int i = 0; i < a_boxes; ++i) tma_load_2d(a + i * 64 * BK, ta, &full[s], kt * BK, row0 + i * 64);
#pragma unroll
                for (int j = 0; j < BN_ / 64; ++j)
                    tma_load_2d(b + j * 64 * BK, tb, &full[s], kt * BK, wrow + b_box_row<BN_, WN, GATE_UP>(j, n, inter));
            }
        }
        return;
    }

    // Consumers: the register file is 64K; the producer keeps 128 x 40 of it.
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
    const int c = wg - 1;
    const int ct = threadIdx.x - 128 * wg;
    const int warp = ct / 32, lane = ct % 32;
    const int a_off = SPLIT ? 0 : c * 64 * BK;     // this consumer's rows of the A tile
    const int b_off = SPLIT ? c * WN * BK : 0;     // its rows of the B tile
    const int col_off = SPLIT ? c * WN : 0;        // its first column of the N tile (B rows)
    float d[WN / 2];
    int it = 0;
    for (int u = 0;; ++u) {
        const int slot = u % TS;
        mbar_wait(&tfull[slot], (u / TS) & 1);
        const int t = s_unit[slot];
        __syncwarp();
        if (lane == 0) mbar_arrive(&tempty[slot]);
        if (t >= total) break;
        int mu, n, row0, row_end;
        tile_coords<PER>(t, tile_offsets, n_experts, n_tiles, band, expert_major, mu, n);
        unit_rows<BM_, TILE>(offsets, tile_offsets, n_experts, mu, row0, row_end);
        if (row0 >= row_end) continue;
        const int my_row0 = row0 + (SPLIT ? 0 : c * 64);
        const bool idle = my_row0 >= row_end;
        float w[2];
        row_weights<GATE_UP>(order, pair_weight, my_row0, row_end, warp, lane, w);
        // (SPLIT: both consumers read the same A rows, so neither zeroes them.)
        const int valid = SPLIT ? 64 : min(64, row_end - my_row0);
        mma_unit<WN, ST, BM_, BN_>(d, sA, sB, full, it, k_tiles, idle, a_off, b_off, lane,
                                   [&](int s) { mbar_arrive(&empty[s]); }, valid);
        if (idle) continue;
        store_unit<GATE_UP, WN, BN_>(d, out, w, my_row0, row_end, n, col_off, inter, n_total, warp, lane);
    }
}

#define WG_ARGS                                                                                    \
    const __grid_constant__ TmaDesc ta, const __grid_constant__ TmaDesc tb,                        \
        __nv_bfloat16 *__restrict__ out, const int *__restrict__ order,                           \
        const float *__restrict__ pair_weight, const int *__restrict__ offsets,                   \
        const int *__restrict__ tile_offsets, int n_experts, int n_total, int k, int band, int expert_major, int *counter
#define WG_PASS &ta, &tb, out, order, pair_weight, offsets, tile_offsets, n_experts, n_total, k, band, expert_major, counter

extern "C" __global__ void __launch_bounds__(384, 1) gate_up_wgmma(WG_ARGS) { wgmma_grouped_gemm<false, true>(WG_PASS); }
extern "C" __global__ void __launch_bounds__(384, 1) down_wgmma(WG_ARGS) { wgmma_grouped_gemm<false, false>(WG_PASS); }
extern "C" __global__ void __launch_bounds__(384, 1) gate_up_wgmma64(WG_ARGS) { wgmma_grouped_gemm<true, true>(WG_PASS); }
extern "C" __global__ void __launch_bounds__(384, 1) down_wgmma64(WG_ARGS) { wgmma_grouped_gemm<true, false>(WG_PASS); }
