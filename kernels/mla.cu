// Multi-head latent attention decode in the weight-absorbed form (DeepSeek-V2/V3: every head's
// query q̃_h = [W_UKᵀ q_nope,h ; q_rope,h] of 576 = 512 + 64 dims scores the same cached rows
// c_p = [latent (512) ; rope key (64)], and o_h = Σ_p softmax_p(scale · q̃_h · c_p) c_p[:512]),
// on the tensor cores (mma.sync m16n8k16 bf16, f32 accumulation) over the bf16 latent cache.
// (Compiled after kernels/attention.cu, whose fa_pack, quad_max and quad_sum it uses,
// kernels/cp_async.cuh and kernels/mma_sync.cuh.)
//
// A block (8 warps) multiplies HG groups of 16 (query row, head) pairs at once — the M rows of
// both products — so that each cached row crosses from L2 once for all of them:
//   decode (ROWS = false): one query row, 16 HG of its heads (HG = 2, or 1 where the heads do
//          not divide into 32);
//   prefill (ROWS = true): up to HG = 4 consecutive query rows of one sequence (a unit of the
//          step's plan), 16 heads each, every row masked at its own position.
// The block walks the positions in tiles of KEYS keys, two tiles in flight: while the warps
// multiply tile j, cp.async brings tile j + 1 into the other half of a double buffer (the copy
// engine, not the warps, waits for memory). For tile j: the warps of group hg compute S = Q̃ Kᵀ
// for its 16 rows, each over KEYS HG / 8 keys; the row maxima meet in shared memory; each warp
// writes its exp2'd scores there as bf16 P; then warp w adds P · V for output columns
// 64w .. 64w + 63 of every group, V being the first 512 dims of the same rows (B fragments
// through ldmatrix.trans, so the tile is stored once, row-major, and each fragment serves HG
// groups). Row sums stay per warp (over its keys) until the end, rescaled alike since the
// maxima are shared.
//
// Few decode rows (small batch) give too few blocks for the GPU: then the host splits each
// row's positions into gridDim.y chunks of `split_len` (a multiple of KEYS), each block writes
// its unnormalised output, row maximum and row sum to `part`, and mla_merge combines the chunks.
#define MLA_DK 576
#define MLA_DV 512
#define MLA_WARPS 8
#define MLA_THREADS (32 * MLA_WARPS)
#define MLA_ST (MLA_DK + 8)  // smem row stride of Q̃ and key rows (bf16): conflict-free fragments

// A fragment (16 rows from row r0, k = 16 from column k0) of a row-major bf16 tile with row
// stride `st`.
__device__ __forceinline__ void mla_frag_a(unsigned* a, const __nv_bfloat16* t, int st, int r0, int k0) {
    const int lane = threadIdx.x % 32;
    ldmatrix_x4(smem_u32(t + (r0 + lane % 8 + (lane & 8)) * st + k0 + (lane & 16) / 2), a[0], a[1], a[2], a[3]);
}

// Cache slot of position p of the block's range, or -1 past it.
__device__ __forceinline__ int mla_slot(const int* table, int p, int k_last, int block_size) {
    return p <= k_last ? table[p / block_size] * block_size + p % block_size : -1;
}

// Bytes of dynamic shared memory mla_decode<HG, ROWS, KEYS> takes (the host passes the same
// count): Q̃, two key tiles, P, the warps' row maxima, two tiles' slots.
#define MLA_SMEM(HG, KEYS) \
    ((16 * (HG) + 2 * (KEYS)) * MLA_ST * 2 + 16 * (HG) * ((KEYS) + 8) * 2 + MLA_WARPS * 16 * 4 + 2 * (KEYS) * 4)

template <int HG, bool ROWS, int KEYS>
__device__ __forceinline__ void mla_decode(
    const float* __restrict__ q, const __nv_bfloat16* __restrict__ kc, float* __restrict__ out,
    const int* __restrict__ q_seq, const int* __restrict__ q_pos, const int* __restrict__ table_off,
    const int* __restrict__ tables, const int* __restrict__ rows, int n_heads, int block_size, float scale,
    int split_len, float* __restrict__ part) {
    constexpr int M = 16 * HG;                  // (row, head) pairs of the block
    constexpr int WPG = MLA_WARPS / HG;         // warps of a group in S
    constexpr int NJ = KEYS / WPG / 8;          // n-tiles of keys a warp scores
    constexpr int NT = MLA_DV / MLA_WARPS / 8;  // n-tiles of a warp's output columns
    constexpr int PST = KEYS + 8;               // smem row stride of P (bf16)
    constexpr int PIECES = KEYS * MLA_DK / 8;   // 16-byte copies of a tile
    constexpr int SA = HG >= 4 ? 2 : 4;         // partial sums of S (k-steps 36: SA divides)
    static_assert(NJ >= 1 && MLA_WARPS % HG == 0, "a group's keys split over its warps");
    extern __shared__ __align__(16) unsigned char mla_smem[];
    __nv_bfloat16* qs = reinterpret_cast<__nv_bfloat16*>(mla_smem);  // [M][MLA_ST]
    __nv_bfloat16* ks = qs + M * MLA_ST;                              // [2][KEYS][MLA_ST]
    __nv_bfloat16* ps = ks + 2 * KEYS * MLA_ST;                       // [M][PST]
    float* red = reinterpret_cast<float*>(ps + M * PST);              // [8 warps][16 rows]
    int* s_slot = reinterpret_cast<int*>(red + MLA_WARPS * 16);       // [2][KEYS]

    // Group h's query row t_h, first head and last position (ROWS: a unit of `rows` is (first
    // row, rows, sequence, first position); groups past its rows repeat its last row and store
    // nothing); the block reads positions up to k_last.
    const int groups = ROWS ? n_heads / 16 : n_heads / M;
    const int b = blockIdx.x / groups, hb = blockIdx.x % groups;
    const int* unit = ROWS ? rows + 4 * b : rows;
    const int live = ROWS ? unit[1] : HG;
    const int t0 = ROWS ? unit[0] : rows[b];
    const int pos = ROWS ? unit[3] + live - 1 : q_pos[t0];
    const int* table = tables + table_off[ROWS ? unit[2] : q_seq[t0]];
    auto row_of = [&](int h) { return ROWS ? t0 + min(h, live - 1) : t0; };
    auto head_of = [&](int h) { return ROWS ? hb * 16 : hb * M + h * 16; };
    auto last_of = [&](int h) { return ROWS ? pos - (live - 1 - min(h, live - 1)) : pos; };
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    const int hg = warp / WPG, kw0 = (warp % WPG) * (8 * NJ);  // S: this warp's group, keys

    // This block's positions: all of them, or chunk blockIdx.y (possibly empty: m stays -inf).
    const int k0 = gridDim.y > 1 ? blockIdx.y * split_len : 0;
    const int k_last = gridDim.y > 1 ? min(pos, k0 + split_len - 1) : pos;
    const int my_last = gridDim.y > 1 ? k_last : last_of(hg);  // the warp's group's mask
    const int n_tiles = k_last >= k0 ? (k_last - k0) / KEYS + 1 : 0;

    // Tile j's KEYS rows into stage j % 2, from the slots in s_slot[j % 2] (zeros past k_last).
    auto fetch = [&](int j) {
        const int* sl = s_slot + (j & 1) * KEYS;
        const unsigned dst = (unsigned)__cvta_generic_to_shared(ks + (j & 1) * KEYS * MLA_ST);
        for (int i = threadIdx.x; i < PIECES; i += MLA_THREADS) {
            const int key = i / (MLA_DK / 8), c = (i % (MLA_DK / 8)) * 8, slot = sl[key];
            cp_async16(dst + (key * MLA_ST + c) * 2, kc + (long)max(slot, 0) * MLA_DK + c, slot >= 0);
        }
        cp_async_commit();
    };

    for (int i = threadIdx.x; i < M * MLA_DK / 2; i += MLA_THREADS) {
        const int r = i / (MLA_DK / 2), c = (i % (MLA_DK / 2)) * 2, h = r / 16;
        const float2 x = *reinterpret_cast<const float2*>(
            q + ((long)row_of(h) * n_heads + head_of(h) + r % 16) * MLA_DK + c);
        *reinterpret_cast<unsigned*>(&qs[r * MLA_ST + c]) = fa_pack(x.x, x.y);
    }
    // Slots two tiles ahead of the copies: thread p < KEYS loads its key's slot of tile j + 3 at
    // tile j and stores it at tile j + 1, so the table's latency hides behind a tile's work.
    const bool slotter = threadIdx.x < KEYS;
    const int sp = k0 + threadIdx.x;
    if (slotter) {
        s_slot[threadIdx.x] = mla_slot(table, sp, k_last, block_size);
        s_slot[KEYS + threadIdx.x] = mla_slot(table, sp + KEYS, k_last, block_size);
    }
    int next_slot = slotter ? mla_slot(table, sp + 2 * KEYS, k_last, block_size) : -1;
    __syncthreads();
    if (n_tiles > 0) fetch(0);

    float o[HG][NT][4];
#pragma unroll
    for (int h = 0; h < HG; h++)
#pragma unroll
        for (int j = 0; j < NT; j++) o[h][j][0] = o[h][j][1] = o[h][j][2] = o[h][j][3] = 0.0f;
    float m[HG][2], l[HG][2];  // rows g and g + 8 of each group
#pragma unroll
    for (int h = 0; h < HG; h++) m[h][0] = m[h][1] = -INFINITY, l[h][0] = l[h][1] = 0.0f;
    const float sl2 = scale * 1.4426950408889634f;

    for (int j = 0; j < n_tiles; j++) {
        // Every warp is done with tile j - 1: its stage takes tile j + 1, whose slots (stored at
        // tile j - 1) are visible; tile j's slots, already copied from, take tile j + 2's.
        __syncthreads();
        if (j + 1 < n_tiles) fetch(j + 1);
        if (slotter) {
            s_slot[(j & 1) * KEYS + threadIdx.x] = next_slot;
            next_slot = mla_slot(table, sp + (j + 3) * KEYS, k_last, block_size);
        }
        if (j + 1 < n_tiles) cp_async_wait<1>(); else cp_async_wait<0>();
        __syncthreads();  // tile j, copied by every thread, is visible
        const __nv_bfloat16* kt = ks + (j & 1) * KEYS * MLA_ST;
        const int kb = k0 + j * KEYS;

        // S for this warp's keys and its group's 16 rows, in SA partial sums over alternating
        // k-steps: independent mma chains for the tensor cores to overlap (one chain of 36
        // dependent products a key tile left them waiting on their own latency).
        float sp[SA][NJ][4];
#pragma unroll
        for (int u = 0; u < SA; u++)
#pragma unroll
            for (int jj = 0; jj < NJ; jj++) sp[u][jj][0] = sp[u][jj][1] = sp[u][jj][2] = sp[u][jj][3] = 0.0f;
        for (int kq = 0; kq < MLA_DK / 16; kq += SA) {
#pragma unroll
            for (int u = 0; u < SA; u++) {
                const int kk = kq + u;
                unsigned a[4];
                mla_frag_a(a, qs, MLA_ST, hg * 16, kk * 16);
#pragma unroll
                for (int jj = 0; jj < NJ; jj += 2) {
                    // B fragments of key n-tiles jj and jj + 1 (rows of the key tile, k = dims).
                    const int key = kw0 + jj * 8 + lane % 8 + (lane & 16) / 2;
                    const unsigned addr = smem_u32(&kt[key * MLA_ST + kk * 16 + (lane & 8)]);
                    if (jj + 1 < NJ) {
                        unsigned b[4];
                        ldmatrix_x4(addr, b[0], b[1], b[2], b[3]);
                        mma_bf16(sp[u][jj], a, b[0], b[1]);
                        mma_bf16(sp[u][jj + 1], a, b[2], b[3]);
                    } else {
                        unsigned b[2];
                        ldmatrix_x2(addr, b[0], b[1]);
                        mma_bf16(sp[u][jj], a, b[0], b[1]);
                    }
                }
            }
        }
        float s[NJ][4];
#pragma unroll
        for (int jj = 0; jj < NJ; jj++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                s[jj][e] = sp[0][jj][e];
#pragma unroll
                for (int u = 1; u < SA; u++) s[jj][e] += sp[u][jj][e];
            }
        // Mask and scale; the tile's row maxima over the group's warps.
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int jj = 0; jj < NJ; jj++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int p = kb + kw0 + jj * 8 + 2 * tq + (e & 1);
                const float v = p <= my_last ? s[jj][e] * sl2 : -INFINITY;
                s[jj][e] = v;
                if (e < 2) mx0 = fmaxf(mx0, v); else mx1 = fmaxf(mx1, v);
            }
        }
        mx0 = quad_max(mx0);
        mx1 = quad_max(mx1);
        if (tq == 0) red[warp * 16 + g] = mx0, red[warp * 16 + g + 8] = mx1;
        __syncthreads();
        // Every warp rescales its outputs of every group. The tile's first position is visible
        // to every row (a row's chunk starts at or before it) and lies in each group's first
        // warp's keys, so the maxima are finite from the first tile on.
#pragma unroll
        for (int h = 0; h < HG; h++) {
            float x0 = -INFINITY, x1 = -INFINITY;
#pragma unroll
            for (int w = h * WPG; w < (h + 1) * WPG; w++) {
                x0 = fmaxf(x0, red[w * 16 + g]);
                x1 = fmaxf(x1, red[w * 16 + g + 8]);
            }
            const float nm0 = fmaxf(m[h][0], x0), nm1 = fmaxf(m[h][1], x1);
            const float c0 = exp2f(m[h][0] - nm0), c1 = exp2f(m[h][1] - nm1);
            m[h][0] = nm0, m[h][1] = nm1;
            l[h][0] *= c0, l[h][1] *= c1;
#pragma unroll
            for (int jn = 0; jn < NT; jn++) o[h][jn][0] *= c0, o[h][jn][1] *= c0, o[h][jn][2] *= c1, o[h][jn][3] *= c1;
        }
        // P of this warp's keys for its group (m and l of the other groups' rows are kept alike
        // by every warp; only the own group's sums grow here).
#pragma unroll
        for (int h = 0; h < HG; h++) {
            if (h != hg) continue;
#pragma unroll
            for (int jj = 0; jj < NJ; jj++) {
                const float p0 = exp2f(s[jj][0] - m[h][0]), p1 = exp2f(s[jj][1] - m[h][0]);
                const float p2 = exp2f(s[jj][2] - m[h][1]), p3 = exp2f(s[jj][3] - m[h][1]);
                l[h][0] += p0 + p1, l[h][1] += p2 + p3;
                const int col = kw0 + jj * 8 + 2 * tq;
                *reinterpret_cast<unsigned*>(&ps[(h * 16 + g) * PST + col]) = fa_pack(p0, p1);
                *reinterpret_cast<unsigned*>(&ps[(h * 16 + g + 8) * PST + col]) = fa_pack(p2, p3);
            }
        }
        __syncthreads();
        // O (this warp's 64 columns, every group) += P · V over the tile's keys.
#pragma unroll
        for (int kk = 0; kk < KEYS / 16; kk++) {
            unsigned a[HG][4];
#pragma unroll
            for (int h = 0; h < HG; h++) mla_frag_a(a[h], ps, PST, h * 16, kk * 16);
            const int mat = lane / 8, r = lane % 8;
            const int key = kk * 16 + (mat & 1) * 8 + r;
#pragma unroll
            for (int jn = 0; jn < NT; jn += 2) {
                unsigned b[4];
                ldmatrix_x4_trans(smem_u32(&kt[key * MLA_ST + warp * (8 * NT) + jn * 8 + (mat >> 1) * 8]), b[0], b[1], b[2], b[3]);
#pragma unroll
                for (int h = 0; h < HG; h++) {
                    mma_bf16(o[h][jn], a[h], b[0], b[1]);
                    mma_bf16(o[h][jn + 1], a[h], b[2], b[3]);
                }
            }
        }
    }
    // Row sums: over the quad (this warp's keys), then over the group's warps.
    float L[HG][2];
#pragma unroll
    for (int h = 0; h < HG; h++) {
        const float q0 = quad_sum(l[h][0]), q1 = quad_sum(l[h][1]);
        __syncthreads();
        if (h == hg && tq == 0) red[warp * 16 + g] = q0, red[warp * 16 + g + 8] = q1;
        __syncthreads();
        L[h][0] = L[h][1] = 0.0f;
#pragma unroll
        for (int w = h * WPG; w < (h + 1) * WPG; w++) L[h][0] += red[w * 16 + g], L[h][1] += red[w * 16 + g + 8];
    }
#pragma unroll
    for (int h = 0; h < HG; h++) {
        if (h >= live) break;
        const int head = head_of(h) + g;
        if (gridDim.y == 1) {
            float* out0 = out + ((long)row_of(h) * n_heads + head) * MLA_DV + warp * (8 * NT);
            float* out1 = out0 + 8 * MLA_DV;
#pragma unroll
            for (int jn = 0; jn < NT; jn++) {
                const int c = jn * 8 + 2 * tq;
                *reinterpret_cast<float2*>(out0 + c) = make_float2(o[h][jn][0] / L[h][0], o[h][jn][1] / L[h][0]);
                *reinterpret_cast<float2*>(out1 + c) = make_float2(o[h][jn][2] / L[h][1], o[h][jn][3] / L[h][1]);
            }
            continue;
        }
        // A chunk (decode only): [row b][head][chunk] records of MLA_DV unnormalised outputs,
        // the max, the sum.
        float* rec0 = part + (((long)b * n_heads + head) * gridDim.y + blockIdx.y) * (MLA_DV + 2);
        float* rec1 = rec0 + 8 * (long)gridDim.y * (MLA_DV + 2);
#pragma unroll
        for (int jn = 0; jn < NT; jn++) {
            const int c = warp * (8 * NT) + jn * 8 + 2 * tq;
            *reinterpret_cast<float2*>(rec0 + c) = make_float2(o[h][jn][0], o[h][jn][1]);
            *reinterpret_cast<float2*>(rec1 + c) = make_float2(o[h][jn][2], o[h][jn][3]);
        }
        if (warp == 0 && tq == 0) {
            rec0[MLA_DV] = m[h][0], rec0[MLA_DV + 1] = L[h][0];
            rec1[MLA_DV] = m[h][1], rec1[MLA_DV + 1] = L[h][1];
        }
    }
}

// Merges the `splits` chunk records of each (row i, head) into out[rows[i]][head]: each chunk's
// outputs and sum weighted by 2^(its max - the largest max); empty chunks (max -inf) weigh 0.
// One block of 128 threads per (row, head), 4 output columns a thread.
extern "C" __global__ void __launch_bounds__(128) mla_merge(const float* __restrict__ part, float* __restrict__ out,
                                                            const int* __restrict__ rows, int n_heads, int splits) {
    after_previous_grid();
    const long i = blockIdx.x / n_heads;
    const int head = blockIdx.x % n_heads;
    const float* rec = part + (i * n_heads + head) * splits * (MLA_DV + 2);
    float mx = -INFINITY;
    for (int s = 0; s < splits; s++) mx = fmaxf(mx, rec[s * (MLA_DV + 2) + MLA_DV]);
    float sum = 0.0f, acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int s = 0; s < splits; s++) {
        const float* r = rec + s * (MLA_DV + 2);
        const float w = exp2f(r[MLA_DV] - mx);  // 0 for an empty chunk
        sum += w * r[MLA_DV + 1];
#pragma unroll
        for (int c = 0; c < 4; c++) acc[c] += w * r[threadIdx.x * 4 + c];
    }
    float* o = out + ((long)rows[i] * n_heads + head) * MLA_DV + threadIdx.x * 4;
#pragma unroll
    for (int c = 0; c < 4; c++) o[c] = acc[c] / sum;
}

#define MLA_ARGS                                                                                            \
    const float *__restrict__ q, const __nv_bfloat16 *__restrict__ kc, float *__restrict__ out,             \
        const int *__restrict__ q_seq, const int *__restrict__ q_pos, const int *__restrict__ table_off,    \
        const int *__restrict__ tables, const int *__restrict__ rows, int n_heads, int block_size, float scale, \
        int split_len, float *__restrict__ part
#define MLA_PASS q, kc, out, q_seq, q_pos, table_off, tables, rows, n_heads, block_size, scale, split_len, part
extern "C" __global__ void __launch_bounds__(MLA_THREADS) mla_decode_h16(MLA_ARGS) { after_previous_grid(); mla_decode<1, false, 64>(MLA_PASS); }
extern "C" __global__ void __launch_bounds__(MLA_THREADS) mla_decode_h32(MLA_ARGS) { after_previous_grid(); mla_decode<2, false, 64>(MLA_PASS); }
// Prefill: units of up to four consecutive rows of one sequence, 16 heads each, 32-key tiles
// (64 (row, head) pairs and two 64-key tiles would not fit the shared memory).
extern "C" __global__ void __launch_bounds__(MLA_THREADS) mla_prefill_r4(MLA_ARGS) { after_previous_grid(); mla_decode<4, true, 32>(MLA_PASS); }
