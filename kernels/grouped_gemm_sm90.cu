// Grouped GEMM over variable-size expert groups on Hopper's warpgroup tensor-core instructions
// (wgmma, HGMMA in the SASS), bf16 in, f32 accumulate; compiled for sm_90a only. Same two
// projections as kernels/grouped_gemm.cu:
//
//   gate/up: act[r, n] = silu(xs[r] . gate_e[n]) * (xs[r] . up_e[n]), where xs holds the token
//            rows already gathered into sorted order (gather_rows in grouped_gemm.cu), so that A
//            is a plain row-major matrix TMA can tile; SiLU*up is fused into the epilogue: each
//            N tile holds 128 gate rows and the 128 matching up rows, so one thread's accumulators
//            hold both the gate and the up value of an output element.
//   down:    y[r, n] = w[order[r]] * (act[r] . down_e[n]), the router weight in the epilogue.
//
// Tiles are 128 x 256 or 192 x 128 (x 64 of K per stage; see wgmma_grouped_gemm). One CTA per
// SM: warpgroup 0 is the producer (one thread issues TMA loads of A and B into a ring of
// 128B-swizzled shared memory, each stage guarded by a "full" and an "empty" mbarrier; it gives
// its registers back with setmaxnreg), warpgroups 1.. are consumers, each multiplying its 64
// rows of the A tile by the B tile (wgmma m64n256k16 or m64n128k16, f32 accumulators in
// registers) and storing the result straight from registers. The schedule is persistent: each
// CTA walks units blockIdx.x, +gridDim.x, ... of a banded raster (bands of `band` M units, N
// inside a band) so that the CTAs in flight share A and B tiles in L2; the producer runs ahead
// into the next tile while the consumers store the previous one.
//
// Variable groups come from the device tile map (tile_offsets, from kernels/permute.cu with bm
// = the tile map's rows, 128 or 192): tile m belongs to expert e with tile_offsets[e] <= m <
// tile_offsets[e+1]; its rows start at offsets[e] + bm * (m - tile_offsets[e]); rows past the
// expert's end (or past the matrix, which TMA fills with zeros) are never stored, and a
// consumer whose 64 rows all lie past it neither loads nor multiplies. The host checks that K is
// a multiple of 64 and the N tiles divide N.

#include <cuda_bf16.h>

// A CUtensorMap (128 opaque bytes), passed by value as a __grid_constant__ kernel parameter.
struct __align__(64) TmaDesc {
    unsigned long long v[16];
};

#define BN 256
#define BK 64
#define B_STAGE_BYTES (BN * BK * 2)

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

__device__ __forceinline__ void mbar_wait(unsigned long long* bar, unsigned parity) {
    const unsigned a = smem_u32(bar);
    unsigned done;
    do {
        asm volatile(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(a), "r"(parity)
            : "memory");
    } while (!done);
}

// TMA: a box of the 2D tensor `map` at (inner c0, outer c1) into shared memory at `dst`,
// completing `bytes` transactions on `bar`.
__device__ __forceinline__ void tma_load_2d(void* dst, const TmaDesc* map, unsigned long long* bar, int c0, int c1) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];\n" ::"r"(
            smem_u32(dst)),
        "l"(reinterpret_cast<unsigned long long>(map)), "r"(smem_u32(bar)), "r"(c0), "r"(c1)
        : "memory");
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

__device__ __forceinline__ float silu(float g) { return g / (1.0f + __expf(-g)); }

// Finds the expert whose tiles contain `tile` (tile_offsets has n_experts + 1 entries).
__device__ __forceinline__ int expert_of_tile(const int* tile_offsets, int n_experts, int tile) {
    int lo = 0, hi = n_experts;  // invariant: tile_offsets[lo] <= tile < tile_offsets[hi]
    while (hi - lo > 1) {
        int mid = (lo + hi) >> 1;
        if (tile_offsets[mid] <= tile) lo = mid; else hi = mid;
    }
    return lo;
}

// D[64 x 256] += A[64 x 16] * B[256 x 16]^T, both K-major in 128B-swizzled shared memory.
__device__ __forceinline__ void wgmma_m64n256k16(float* d, unsigned long long da, unsigned long long db) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63,"
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79,"
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95,"
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111,"
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
        "}, %128, %129, p, 1, 1, 0, 0;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
          "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
          "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
          "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
          "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
          "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
          "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
          "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
          "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "l"(da), "l"(db));
}

// D[64 x 128] += A[64 x 16] * B[128 x 16]^T, both K-major in 128B-swizzled shared memory.
__device__ __forceinline__ void wgmma_m64n128k16(float* d, unsigned long long da, unsigned long long db) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
        "}, %64, %65, p, 1, 1, 0, 0;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(da), "l"(db));
}

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

// NC consumer warpgroups share one B tile of BN_ rows (N columns of the output).
// Not SPLIT: each consumer takes its own 64 rows of an NC * 64-row A tile and all BN_ columns
//   (m64n{BN_}); a consumer whose 64 rows lie past its expert's last row idles for that tile
//   (no loads of its A rows, no MMAs), so a ragged expert's last tile costs what it holds, in
//   steps of 64 rows. 128 x 256 (NC = 2) for many rows an expert; 192 x 128 (NC = 3) for
//   experts of one to a few hundred rows, whose weights one tile then streams once.
// SPLIT: both consumers take the same 64 rows, each BN_ / 2 of the columns (m64n128), on half
//   tiles of the 128-row tile map; this wastes less on groups of a few dozen rows (an M unit
//   past its expert's last row is skipped).
template <int NC, int BN_, bool SPLIT, bool GATE_UP>
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
    constexpr int BM_ = SPLIT ? 64 : 64 * NC;  // rows of an M unit
    constexpr int TILE = SPLIT ? 128 : BM_;    // rows of a tile of the tile map
    constexpr int PER = TILE / BM_;
    constexpr int WN = SPLIT ? BN_ / NC : BN_;  // columns of one consumer
    constexpr int ST = (NC == 2 && !SPLIT) ? 4 : 5;  // pipeline stages
    constexpr int TS = 4;                            // units handed ahead
    constexpr int A_BOX = 64 * BK * 2;
    constexpr int A_BYTES = BM_ * BK * 2;
    constexpr int B_BYTES = BN_ * BK * 2;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    // 128B-swizzled tiles need 1024-byte alignment; the host adds 1 KiB of slack.
    unsigned char* smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
    __nv_bfloat16* sA = reinterpret_cast<__nv_bfloat16*>(smem);
    __nv_bfloat16* sB = reinterpret_cast<__nv_bfloat16*>(smem + ST * A_BYTES);
    unsigned long long* full = reinterpret_cast<unsigned long long*>(smem + ST * (A_BYTES + B_BYTES));
    unsigned long long* empty = full + ST;
    // The tile map and group offsets, cached once: every tile looks its expert up (a binary
    // search of up to 10 steps), which from global memory would stall each tile for microseconds.
    // The tile ring: the producer hands each unit it takes to the consumers (TS deep).
    unsigned long long* tfull = empty + ST;
    unsigned long long* tempty = tfull + TS;
    int* s_unit = reinterpret_cast<int*>(tempty + TS);
    int* s_tiles = s_unit + TS;
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

    if (threadIdx.x == 0) {
        for (int s = 0; s < ST; ++s) {
            mbar_init(&full[s], 1);
            mbar_init(&empty[s], 4 * NC);  // lane 0 of each consumer warp
        }
        for (int s = 0; s < TS; ++s) {
            mbar_init(&tfull[s], 1);
            mbar_init(&tempty[s], 4 * NC);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    const int total = tile_offsets[n_experts] * PER * n_tiles;

    if (wg == 0) {
        // Producer: one thread issues every TMA load.
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
        if (threadIdx.x != 0) return;
        int it = 0;
        for (int u = 0, t = blockIdx.x;; ++u) {
            // Units in the order CTAs come free (a counter), so the units in flight at any time
            // are neighbours in the raster and share their A and B tiles in L2 however the
            // CTAs have drifted; or a fixed stride when there is no counter.
            if (u > 0) t = counter ? atomicAdd(counter, 1) + gridDim.x : t + gridDim.x;
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
                for (int j = 0; j < BN_ / 64; ++j) {
                    int r;
                    if (GATE_UP) {
                        // Each consumer's WN rows: WN/2 gate rows, then the same features' up rows.
                        const int slice = j * 64 / WN, within = j * 64 % WN;
                        const int up = within >= WN / 2;
                        r = up * inter + n * (BN_ / 2) + slice * (WN / 2) + within - up * (WN / 2);
                    } else {
                        r = n * BN_ + j * 64;
                    }
                    tma_load_2d(b + j * 64 * BK, tb, &full[s], kt * BK, wrow + r);
                }
            }
        }
        return;
    }

    // Consumers: the register file is 64K; the producer keeps 128 x 40 of it.
    if (NC == 2) asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
    else asm volatile("setmaxnreg.inc.sync.aligned.u32 152;\n");
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
#pragma unroll
        for (int i = 0; i < WN / 2; ++i) d[i] = 0.0f;
        for (int kt = 0; kt < k_tiles; ++kt, ++it) {
            const int s = it % ST;
            mbar_wait(&full[s], (it / ST) & 1);
            if (!idle) {
                const __nv_bfloat16* a = sA + s * (BM_ * BK) + a_off;
                const __nv_bfloat16* b = sB + s * (BN_ * BK) + b_off;
                fence_regs<WN / 2>(d);
                wgmma_fence();
#pragma unroll
                for (int kk = 0; kk < BK / 16; ++kk) {
                    if (WN == 256) wgmma_m64n256k16(d, smem_desc(a + kk * 16), smem_desc(b + kk * 16));
                    else wgmma_m64n128k16(d, smem_desc(a + kk * 16), smem_desc(b + kk * 16));
                }
                wgmma_commit();
                // Keep this stage's group in flight; the previous one is done, release its stage.
                wgmma_wait<1>();
                fence_regs<WN / 2>(d);
            }
            if (kt > 0 && lane == 0) mbar_arrive(&empty[(it - 1) % ST]);
        }
        wgmma_wait<0>();
        fence_regs<WN / 2>(d);
        if (lane == 0) mbar_arrive(&empty[(it - 1) % ST]);
        if (idle) continue;

        // Epilogue: d[4j + q] is row 16 * warp + lane / 4 + 8 * (q / 2), column 8j + 2 * (lane % 4) + q % 2.
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
                const float w = pair_weight[order[row]];
#pragma unroll
                for (int j = 0; j < WN / 8; ++j) {
                    const int col = n * BN_ + col_off + j * 8 + 2 * (lane & 3);
                    *reinterpret_cast<__nv_bfloat162*>(out + (size_t)row * n_total + col) =
                        __floats2bfloat162_rn(w * d[4 * j + 2 * h], w * d[4 * j + 2 * h + 1]);
                }
            }
        }
    }
}

#define WG_ARGS                                                                                    \
    const __grid_constant__ TmaDesc ta, const __grid_constant__ TmaDesc tb,                        \
        __nv_bfloat16 *__restrict__ out, const int *__restrict__ order,                           \
        const float *__restrict__ pair_weight, const int *__restrict__ offsets,                   \
        const int *__restrict__ tile_offsets, int n_experts, int n_total, int k, int band, int expert_major, int *counter
#define WG_PASS &ta, &tb, out, order, pair_weight, offsets, tile_offsets, n_experts, n_total, k, band, expert_major, counter

extern "C" __global__ void __launch_bounds__(384, 1) gate_up_wgmma(WG_ARGS) { wgmma_grouped_gemm<2, 256, false, true>(WG_PASS); }
extern "C" __global__ void __launch_bounds__(384, 1) down_wgmma(WG_ARGS) { wgmma_grouped_gemm<2, 256, false, false>(WG_PASS); }
extern "C" __global__ void __launch_bounds__(384, 1) gate_up_wgmma64(WG_ARGS) { wgmma_grouped_gemm<2, 256, true, true>(WG_PASS); }
extern "C" __global__ void __launch_bounds__(384, 1) down_wgmma64(WG_ARGS) { wgmma_grouped_gemm<2, 256, true, false>(WG_PASS); }
extern "C" __global__ void __launch_bounds__(512, 1) gate_up_wgmma192(WG_ARGS) { wgmma_grouped_gemm<3, 128, false, true>(WG_PASS); }
extern "C" __global__ void __launch_bounds__(512, 1) down_wgmma192(WG_ARGS) { wgmma_grouped_gemm<3, 128, false, false>(WG_PASS); }
