// Grouped GEMM over variable-size expert groups on the tensor cores (mma.sync m16n8k16 bf16,
// f32 accumulate), for the two expert projections of a SwiGLU MoE layer:
//
//   gate/up: act[r, n] = silu(x[tok(r)] . gate_e[n]) * (x[tok(r)] . up_e[n])
//            A rows are gathered from the tokens on load (tok(r) = order[r] / top_k), the
//            weights are [n_experts, 2*inter, hidden] (gate rows, then up rows), and SiLU*up is
//            fused into the epilogue: the same thread holds the gate and up accumulators of one
//            output element.
//   down:    y[r, n] = w[order[r]] * (act[r] . down_e[n]), weights [n_experts, hidden, inter];
//            the router weight of the (token, expert) pair is applied in the epilogue.
//
// Rows r of expert e are offsets[e]..offsets[e+1] (the permutation kernels compute them on the
// device). blockIdx.x walks the M tiles of all experts (tile_offsets[e] is the first tile of
// expert e); blockIdx.y is the N tile. Blocks past the last tile exit at once, so the grid can be
// sized without knowing the per-expert counts on the host. M runs fastest so that the blocks in
// flight share one expert's weight tile (weights stream from HBM once at large T).
//
// Both operands are K-contiguous ("TN"), so A and B fragments come straight from ldmatrix.
// Shared memory holds STAGES stages of a BM x 32 A tile and a BN x 32 B tile, filled by
// cp.async (16 bytes a thread, zero-filled past a group's end) and XOR-swizzled so ldmatrix is
// free of bank conflicts. K must be a multiple of 32 and N of the N tile (checked on the host).

#include <cuda_bf16.h>

// (silu and expert_of_tile come from kernels/grouped_common.cuh, the cp.async helpers from
// kernels/cp_async.cuh, ldmatrix and mma_bf16 from kernels/mma_sync.cuh, all compiled before
// this file.)

#define BK 32

// Offset in 16-byte chunks of (row, chunk) in a [rows][4 chunks] tile, swizzled.
__device__ __forceinline__ int swz(int row, int chunk) {
    return row * 4 + (chunk ^ ((row >> 1) & 3));
}

// Row of B (weights) in the N tile for n-fragment f of warp wn.
template <int BN, int WN_FRAGS, bool GATE_UP>
__device__ __forceinline__ int b_row(int wn, int f) {
    if (GATE_UP) {
        constexpr int HALF = WN_FRAGS / 2;
        return f < HALF ? wn * HALF * 8 + f * 8 : BN / 2 + wn * HALF * 8 + (f - HALF) * 8;
    } else {
        return wn * WN_FRAGS * 8 + f * 8;
    }
}

// BM x BN block tile, WARPS_M x WARPS_N warps, each warp (BM / WARPS_M) x (WN_FRAGS * 8).
template <int BM, int BN, int WARPS_M, int WARPS_N, int WN_FRAGS, int STAGES, bool GATE_UP>
__device__ __forceinline__ void grouped_gemm(
    const __nv_bfloat16* __restrict__ a,         // gate/up: x [T, K]; down: act [P, K]
    const __nv_bfloat16* __restrict__ w,         // [n_experts, N_total, K]
    __nv_bfloat16* __restrict__ out,             // gate/up: act [P, N_total/2]; down: y [P, N_total]
    const int* __restrict__ order,               // [P] pair of each sorted row
    const float* __restrict__ pair_weight,       // down: router weight of each pair
    const int* __restrict__ offsets,             // [n_experts + 1]
    const int* __restrict__ tile_offsets,        // [n_experts + 1]
    int n_experts, int n_total, int k, int top_k) {
    constexpr int THREADS = WARPS_M * WARPS_N * 32;
    constexpr int WM_FRAGS = BM / WARPS_M / 16;
    static_assert(BN == WARPS_N * WN_FRAGS * 8, "warps must cover the N tile");
    static_assert(!GATE_UP || WN_FRAGS % 2 == 0, "gate/up needs paired fragments");
    extern __shared__ __align__(128) unsigned char smem_raw[];
    uint4* sA = reinterpret_cast<uint4*>(smem_raw);           // [STAGES][BM * 4]
    uint4* sB = sA + STAGES * BM * 4;                         // [STAGES][BN * 4]

    const int tile = blockIdx.x;
    if (tile >= tile_offsets[n_experts]) return;
    const int e = expert_of_tile(tile_offsets, n_experts, tile);
    const int row_begin = offsets[e] + (tile - tile_offsets[e]) * BM;
    const int row_end = offsets[e + 1];
    const int n0 = blockIdx.y * (GATE_UP ? BN / 2 : BN);
    const int inter = n_total / 2;
    const __nv_bfloat16* w_e = w + (size_t)e * n_total * k;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / WARPS_N, wn = warp % WARPS_N;

    // Per-thread load assignments: chunk c of row r (4 chunks of 8 bf16 per 32-wide row).
    constexpr int A_CHUNKS = BM * 4, B_CHUNKS = BN * 4;
    constexpr int A_ITERS = (A_CHUNKS + THREADS - 1) / THREADS;
    constexpr int B_ITERS = (B_CHUNKS + THREADS - 1) / THREADS;
    const __nv_bfloat16* a_src[A_ITERS];
    bool a_ok[A_ITERS];
#pragma unroll
    for (int i = 0; i < A_ITERS; ++i) {
        int idx = tid + i * THREADS;
        int r = idx >> 2, c = idx & 3;
        int row = row_begin + r;
        bool ok = idx < A_CHUNKS && row < row_end;
        int src_row = 0;
        if (ok) src_row = GATE_UP ? order[row] / top_k : row;
        a_ok[i] = ok;
        a_src[i] = a + (size_t)src_row * k + c * 8;
    }
    const __nv_bfloat16* b_src[B_ITERS];
#pragma unroll
    for (int i = 0; i < B_ITERS; ++i) {
        int idx = tid + i * THREADS;
        int r = idx >> 2, c = idx & 3;
        int wrow;
        if (GATE_UP) wrow = r < BN / 2 ? n0 + r : inter + n0 + (r - BN / 2);
        else wrow = n0 + r;
        b_src[i] = w_e + (size_t)wrow * k + c * 8;
    }

    auto load_stage = [&](int slot, int kt) {
        const int koff = kt * BK;
#pragma unroll
        for (int i = 0; i < A_ITERS; ++i) {
            int idx = tid + i * THREADS;
            if (idx < A_CHUNKS) {
                int r = idx >> 2, c = idx & 3;
                cp_async16(smem_u32(sA + slot * BM * 4 + swz(r, c)), a_src[i] + (a_ok[i] ? koff : 0), a_ok[i]);
            }
        }
#pragma unroll
        for (int i = 0; i < B_ITERS; ++i) {
            int idx = tid + i * THREADS;
            if (idx < B_CHUNKS) {
                int r = idx >> 2, c = idx & 3;
                cp_async16(smem_u32(sB + slot * BN * 4 + swz(r, c)), b_src[i] + koff, true);
            }
        }
    };

    float acc[WM_FRAGS][WN_FRAGS][4];
#pragma unroll
    for (int i = 0; i < WM_FRAGS; ++i)
#pragma unroll
        for (int j = 0; j < WN_FRAGS; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.0f;

    const int k_tiles = k / BK;
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < k_tiles) load_stage(s, s);
        cp_async_commit();
    }

    for (int kt = 0; kt < k_tiles; ++kt) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        {
            int next = kt + STAGES - 1;
            if (next < k_tiles) load_stage(next % STAGES, next);
            cp_async_commit();
        }
        const int slot = kt % STAGES;
        const uint4* tA = sA + slot * BM * 4;
        const uint4* tB = sB + slot * BN * 4;
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
            unsigned af[WM_FRAGS][4];
#pragma unroll
            for (int i = 0; i < WM_FRAGS; ++i) {
                int r = wm * (BM / WARPS_M) + i * 16 + (lane & 15);
                int c = kk * 2 + (lane >> 4);
                ldmatrix_x4(smem_u32(tA + swz(r, c)), af[i][0], af[i][1], af[i][2], af[i][3]);
            }
            unsigned bf[WN_FRAGS][2];
            if (WN_FRAGS % 2 == 0) {
#pragma unroll
                for (int p = 0; p < WN_FRAGS / 2; ++p) {
                    int g = lane >> 3;
                    int f = p * 2 + (g >> 1);
                    int r = b_row<BN, WN_FRAGS, GATE_UP>(wn, f) + (lane & 7);
                    int c = kk * 2 + (g & 1);
                    ldmatrix_x4(smem_u32(tB + swz(r, c)), bf[p * 2][0], bf[p * 2][1], bf[p * 2 + 1][0], bf[p * 2 + 1][1]);
                }
            } else {
#pragma unroll
                for (int f = 0; f < WN_FRAGS; ++f) {
                    int g = (lane >> 3) & 1;
                    int r = b_row<BN, WN_FRAGS, GATE_UP>(wn, f) + (lane & 7);
                    int c = kk * 2 + g;
                    ldmatrix_x2(smem_u32(tB + swz(r, c)), bf[f][0], bf[f][1]);
                }
            }
#pragma unroll
            for (int i = 0; i < WM_FRAGS; ++i)
#pragma unroll
                for (int j = 0; j < WN_FRAGS; ++j) mma_bf16(acc[i][j], af[i], bf[j][0], bf[j][1]);
        }
    }
    cp_async_wait<0>();

    // Epilogue: fragment element q sits at row (lane / 4) + 8 * (q / 2), column 2 * (lane % 4) + q % 2.
#pragma unroll
    for (int i = 0; i < WM_FRAGS; ++i) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            int row = row_begin + wm * (BM / WARPS_M) + i * 16 + (lane >> 2) + h * 8;
            if (row >= row_end) continue;
            if (GATE_UP) {
                constexpr int HALF = WN_FRAGS / 2;
#pragma unroll
                for (int j = 0; j < HALF; ++j) {
                    int col = n0 + wn * HALF * 8 + j * 8 + 2 * (lane & 3);
                    float g0 = acc[i][j][2 * h], g1 = acc[i][j][2 * h + 1];
                    float u0 = acc[i][j + HALF][2 * h], u1 = acc[i][j + HALF][2 * h + 1];
                    __nv_bfloat162 v = __floats2bfloat162_rn(silu(g0) * u0, silu(g1) * u1);
                    *reinterpret_cast<__nv_bfloat162*>(out + (size_t)row * inter + col) = v;
                }
            } else {
                float s = pair_weight ? pair_weight[order[row]] : 1.0f;
#pragma unroll
                for (int j = 0; j < WN_FRAGS; ++j) {
                    int col = n0 + wn * WN_FRAGS * 8 + j * 8 + 2 * (lane & 3);
                    __nv_bfloat162 v = __floats2bfloat162_rn(s * acc[i][j][2 * h], s * acc[i][j][2 * h + 1]);
                    *reinterpret_cast<__nv_bfloat162*>(out + (size_t)row * n_total + col) = v;
                }
            }
        }
    }
}

#define GG_ARGS                                                                                    \
    const __nv_bfloat16 *__restrict__ a, const __nv_bfloat16 *__restrict__ w,                      \
        __nv_bfloat16 *__restrict__ out, const int *__restrict__ order,                           \
        const float *__restrict__ pair_weight, const int *__restrict__ offsets,                   \
        const int *__restrict__ tile_offsets, int n_experts, int n_total, int k, int top_k
#define GG_PASS a, w, out, order, pair_weight, offsets, tile_offsets, n_experts, n_total, k, top_k

// Large groups: 128 x 128 tiles, 8 warps of 64 x 32.
extern "C" __global__ void __launch_bounds__(256) gate_up_large(GG_ARGS) {
    grouped_gemm<128, 128, 2, 4, 4, 4, true>(GG_PASS);
}
extern "C" __global__ void __launch_bounds__(256) down_large(GG_ARGS) {
    grouped_gemm<128, 128, 2, 4, 4, 4, false>(GG_PASS);
}

// Decode (few rows per expert): stream each touched expert's weights once at full bandwidth.
// blockIdx.x is a 32-row M tile of the tile map (bm = 32), blockIdx.y a 16-row (or 32-row, the
// *_stream32 kernels) slab of the expert's weights (gate/up: 8 gate rows and the 8 up rows of the
// same features; down: 16 output features; twice that). The 8 warps split K (warp w takes the 32-wide K steps w, w+8, ...); each lane loads
// its weights straight from HBM into registers (16 bytes a row, 8 steps in flight, no L1
// allocation) together with the matching 16 bytes of its token row, and multiplies on the tensor
// cores with the weights as the M side of mma.m16n8k16 and 8 token rows as N. K is permuted
// consistently on both sides: lane (g, c) loads k = 8c..8c+7 of a step from weight rows g and
// g+8 and from token row g, and feeds them as the fragment pairs the instruction expects at
// k = 2c, 2c+8 (first k16 half) and again (second half), so nothing is shuffled on the way in.
// A tile with more than 8 rows takes another pass per 8 rows (its weights then come from L2);
// the host sends only loads averaging a few rows per expert here. The warps' partial sums meet
// in shared memory and warp 0 writes the epilogue (SiLU*up, or the router weight).
// Both are launched to overlap the kernel before them (kernels/overlap.cuh). Gate/up waits for
// it (the routing) at once; down, which follows gate/up, finds its expert in the tile map of the
// routing two kernels back (complete before gate/up let down launch; read from L2, as this SM's
// L1 may hold an earlier layer's map) and requests its first weights before it waits for act.
#define ST_U 8

__device__ __forceinline__ uint4 ld_stream(const void* p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];\n"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
}

// R = rows-pairs a lane owns: the slab is 16 * R weight rows, so R = 2 halves the token-row
// loads per weight byte and doubles the work a block amortises its start over.
template <bool GATE_UP, int R>
__device__ __forceinline__ void stream_gemm(GG_ARGS) {
    constexpr int U = ST_U / R;  // K steps in flight: the same 2 * R * U weight loads a lane
    __shared__ float red[8][4 * R][32];  // [warp][element][lane]
    __shared__ int s_e, s_row0, s_end;
    if (GATE_UP) {
        wait_for_previous_grid();
        allow_next_grid();
    }
    bool waited = GATE_UP;
    // Find this tile's expert with one round of parallel loads (a binary search would chain up to
    // 10 dependent loads before the first weight byte is requested, at every block).
    const int tile = blockIdx.x;
    if (threadIdx.x == 0) s_e = -1;
    __syncthreads();
    for (int i = threadIdx.x; i < n_experts; i += blockDim.x) {
        const int t0 = __ldcg(tile_offsets + i), t1 = __ldcg(tile_offsets + i + 1);
        const int o0 = __ldcg(offsets + i), o1 = __ldcg(offsets + i + 1);
        if (t0 <= tile && tile < t1) {
            s_e = i;
            s_row0 = o0 + (tile - t0) * 32;
            s_end = o1;
        }
    }
    __syncthreads();
    if (s_e < 0) return;  // past the last tile
    const int e = s_e;
    const int row0 = s_row0;
    const int rows = min(32, s_end - row0);
    const int inter = n_total / 2;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    // This lane's weight rows: pair r is (ra[r], rb[r]), the M rows g and g + 8 of mma group r.
    int ra[R], rb[R];
    const __nv_bfloat16* wa_p[R];
    const __nv_bfloat16* wb_p[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        if (GATE_UP) {
            ra[r] = blockIdx.y * 8 * R + 8 * r + g;  // gate feature; its up row is inter + ra
            rb[r] = inter + ra[r];
        } else {
            ra[r] = blockIdx.y * 16 * R + 16 * r + g;
            rb[r] = ra[r] + 8;
        }
        wa_p[r] = w + ((size_t)e * n_total + ra[r]) * k + c * 8;
        wb_p[r] = w + ((size_t)e * n_total + rb[r]) * k + c * 8;
    }
    const int n_steps = k / 32;
    for (int p0 = 0; p0 < rows; p0 += 8) {
        const bool xv = p0 + g < rows;
        int src = 0;
        if (xv) src = GATE_UP ? order[row0 + p0 + g] / top_k : row0 + p0 + g;
        const __nv_bfloat16* xp = a + (size_t)src * k + c * 8;  // no load yet
        float acc[R][4];
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[r][q] = 0.0f;
        for (int s0 = warp; s0 < n_steps; s0 += 8 * U) {
            uint4 wa[U][R], wb[U][R], xq[U];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                if (s0 + 8 * u < n_steps) {
#pragma unroll
                    for (int r = 0; r < R; ++r) {
                        wa[u][r] = ld_stream(wa_p[r] + (s0 + 8 * u) * 32);
                        wb[u][r] = ld_stream(wb_p[r] + (s0 + 8 * u) * 32);
                    }
                }
            }
            if (!waited) {  // down: its first weights are on their way; now act must be complete
                wait_for_previous_grid();
                allow_next_grid();
                waited = true;
            }
#pragma unroll
            for (int u = 0; u < U; ++u) {
                xq[u] = make_uint4(0, 0, 0, 0);
                if (xv && s0 + 8 * u < n_steps) xq[u] = __ldg(reinterpret_cast<const uint4*>(xp + (s0 + 8 * u) * 32));
            }
#pragma unroll
            for (int u = 0; u < U; ++u) {
                if (s0 + 8 * u < n_steps) {
#pragma unroll
                    for (int r = 0; r < R; ++r) {
                        const unsigned lo[4] = {wa[u][r].x, wb[u][r].x, wa[u][r].y, wb[u][r].y};
                        const unsigned hi[4] = {wa[u][r].z, wb[u][r].z, wa[u][r].w, wb[u][r].w};
                        mma_bf16(acc[r], lo, xq[u].x, xq[u].y);
                        mma_bf16(acc[r], hi, xq[u].z, xq[u].w);
                    }
                }
            }
        }
        if (!waited) {  // a warp with no K steps: the epilogue still reads the routing weights
            wait_for_previous_grid();
            allow_next_grid();
            waited = true;
        }
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
            for (int q = 0; q < 4; ++q) red[warp][4 * r + q][lane] = acc[r][q];
        __syncthreads();
        if (warp == 0) {
#pragma unroll
            for (int r = 0; r < R; ++r) {
                float v[4];
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    float sum = 0.0f;
#pragma unroll
                    for (int w8 = 0; w8 < 8; ++w8) sum += red[w8][4 * r + q][lane];
                    v[q] = sum;
                }
                // v[q]: weight row ra (q < 2) or rb (q >= 2), token p0 + 2c + q % 2.
#pragma unroll
                for (int p = 0; p < 2; ++p) {
                    const int j = p0 + 2 * c + p;
                    if (j >= rows) continue;
                    const int row = row0 + j;
                    if (GATE_UP) {
                        out[(size_t)row * inter + ra[r]] = __float2bfloat16_rn(silu(v[p]) * v[2 + p]);
                    } else {
                        const float sc = pair_weight[order[row]];
                        out[(size_t)row * n_total + ra[r]] = __float2bfloat16_rn(sc * v[p]);
                        out[(size_t)row * n_total + rb[r]] = __float2bfloat16_rn(sc * v[2 + p]);
                    }
                }
            }
        }
        __syncthreads();  // red is reused by the next pass
    }
}

extern "C" __global__ void __launch_bounds__(256, 2) gate_up_stream(GG_ARGS) { stream_gemm<true, 1>(GG_PASS); }
extern "C" __global__ void __launch_bounds__(256, 2) down_stream(GG_ARGS) { stream_gemm<false, 1>(GG_PASS); }
extern "C" __global__ void __launch_bounds__(256, 2) gate_up_stream32(GG_ARGS) { stream_gemm<true, 2>(GG_PASS); }
extern "C" __global__ void __launch_bounds__(256, 2) down_stream32(GG_ARGS) { stream_gemm<false, 2>(GG_PASS); }

// xs[row_of_pair[t * top_k + j]] = x[t] for each of token t's top_k pairs: the token rows in
// sorted order, so that the Hopper kernels' A operand is a plain matrix TMA can tile. One block
// per token, 16 bytes a thread: each token row is read once and written top_k times (a block
// per sorted row read each token's row top_k times, in an order that rarely found it in L2:
// 370 MB of reads for 59 MB of rows at DeepSeek-V3 T = 4096 on an H100).
extern "C" __global__ void __launch_bounds__(128) scatter_rows(
    const __nv_bfloat16* __restrict__ x, __nv_bfloat16* __restrict__ xs, const int* __restrict__ row_of_pair,
    int hidden, int top_k) {
    __shared__ int rows[32];  // top_k <= 32 (MAX_TOP_K)
    const int t = blockIdx.x;
    if (threadIdx.x < top_k) rows[threadIdx.x] = row_of_pair[(size_t)t * top_k + threadIdx.x];
    __syncthreads();
    const uint4* src = reinterpret_cast<const uint4*>(x + (size_t)t * hidden);
    for (int i = threadIdx.x; i < hidden / 8; i += blockDim.x) {
        const uint4 v = src[i];
        for (int j = 0; j < top_k; ++j) reinterpret_cast<uint4*>(xs + (size_t)rows[j] * hidden)[i] = v;
    }
}
