// Flash attention (Dao 2023, FlashAttention-2 layout) for prefill over the paged KV cache (bf16, or
// f32 rounded to bf16 as it is read), on
// the tensor cores: mma.sync m16n8k16 bf16 with f32 accumulation for both S = Q Kᵀ and O = P V.
//
// One block (4 warps) per (query tile, head): a tile is up to 64 queries of one sequence at
// consecutive positions pos0 .. pos0 + n - 1 (the host cuts them from the step's QueryPos; row r
// of the tile is query t0 + r). Warp w owns tile rows 16w .. 16w + 15; its Q fragments are loaded
// once from global memory (f32 -> bf16) into registers. The block walks the sequence's keys in
// tiles of 64 positions from the first key any of its rows may see (the window) to the last
// query's position: each tile is read from the paged cache through the block table (4 elements a
// load), as bf16 into shared memory (K row-major, V transposed so both B fragments are single
// 32-bit loads), and every warp runs the online softmax over it (exp2 with the scale folded into
// log2 e). Key p is visible to query position q when p <= q and, with a window w > 0, p > q - w;
// the scale multiplies q.k as in paged_attention_f32. Keys past the last query position are
// zero-filled, never read. Row sums stay per thread until the end (the max is shared by the quad
// of threads holding a row, so the partial sums rescale alike).
//
// D (= qk_dim = v_dim) is 64 or 128; each (key, head) row must start 16-byte aligned (checked on
// the host). Smem rows are padded by 8 bf16 so the fragment loads of a warp hit 32 distinct banks.

#include <cuda_bf16.h>

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

#define FA_ROWS 64   // query rows per block (4 warps x 16)
#define FA_KEYS 64   // keys per tile
#define FA_THREADS 128

// Max and sum over the quad of threads that hold one row of an mma.sync accumulator.
__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffff, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffff, v, 1);
    return v + __shfl_xor_sync(0xffffffff, v, 2);
}

// Two floats as a bf16x2 word, the first in the low half (the lower column of a fragment).
__device__ __forceinline__ unsigned fa_pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&v);
}

// Four consecutive cache elements as four bf16 (two words, low half first).
__device__ __forceinline__ uint2 fa_load4(const float* p) {
    const float4 x = *reinterpret_cast<const float4*>(p);
    return make_uint2(fa_pack(x.x, x.y), fa_pack(x.z, x.w));
}
__device__ __forceinline__ uint2 fa_load4(const __nv_bfloat16* p) { return *reinterpret_cast<const uint2*>(p); }

template <int D, typename C>
__device__ __forceinline__ void flash_prefill(
    const float* __restrict__ q, const C* __restrict__ kc, const C* __restrict__ vc, float* __restrict__ out,
    const int* __restrict__ tiles, const int* __restrict__ table_off, const int* __restrict__ tables,
    int n_heads, int group, int k_width, int v_width, int block_size, float scale, int window) {
    constexpr int KST = D + 8;        // K smem row stride (bf16)
    constexpr int VST = FA_KEYS + 8;  // transposed V smem row stride (bf16)
    constexpr int KD = D / 16;        // k-steps of Q Kᵀ
    constexpr int ND = D / 8;         // n-tiles of O
    // 4-element loads a thread makes of a K or V tile, issued FA_BATCH at a time (all at once would
    // spill the O accumulators at D = 128).
    constexpr int FA_LOADS = FA_KEYS * (D / 4) / FA_THREADS, FA_BATCH = FA_LOADS < 8 ? FA_LOADS : 8;
    // Raw 16-bit words (a __shared__ array of a class type could need dynamic initialisation).
    __shared__ __align__(16) unsigned short ks_raw[FA_KEYS * KST];
    __shared__ __align__(16) unsigned short vt_raw[D * VST];
    __shared__ int s_slot[FA_KEYS];
    __nv_bfloat16* ks = reinterpret_cast<__nv_bfloat16*>(ks_raw);
    __nv_bfloat16* vt = reinterpret_cast<__nv_bfloat16*>(vt_raw);

    // Heads vary fastest and tiles run last to first, so the blocks with the most keys (a
    // sequence's late tiles, for every head) start first and the short ones fill the tail.
    const int head = blockIdx.x, kv = head / group, tile = gridDim.y - 1 - blockIdx.y;
    const int t0 = tiles[tile * 4 + 0], n = tiles[tile * 4 + 1];
    const int seq = tiles[tile * 4 + 2], pos0 = tiles[tile * 4 + 3];
    const int* table = tables + table_off[seq];
    const int last = pos0 + n - 1;
    const int first = window > 0 ? max(0, pos0 + 1 - window) : 0;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    // The two tile rows this thread holds (g and g + 8 of the warp's 16) and their positions.
    const int r0 = warp * 16 + g, r1 = r0 + 8;
    const bool ok0 = r0 < n, ok1 = r1 < n;
    const int qp0 = pos0 + r0, qp1 = pos0 + r1;
    const int lo0 = window > 0 ? qp0 + 1 - window : 0, lo1 = window > 0 ? qp1 + 1 - window : 0;
    // Keys this warp can see at all (a warp with no valid rows sees none).
    const int wlast = min(last, pos0 + warp * 16 + 15);
    const int wfirst = window > 0 ? pos0 + warp * 16 + 1 - window : 0;
    const bool warp_live = warp * 16 < n;

    unsigned qa[KD][4];
    {
        const float* q0 = q + ((long)(t0 + r0) * n_heads + head) * D;
        const float* q1 = q + ((long)(t0 + r1) * n_heads + head) * D;
#pragma unroll
        for (int kk = 0; kk < KD; kk++) {
            int c = kk * 16 + 2 * tq;
            qa[kk][0] = ok0 ? fa_pack(q0[c], q0[c + 1]) : 0u;
            qa[kk][1] = ok1 ? fa_pack(q1[c], q1[c + 1]) : 0u;
            qa[kk][2] = ok0 ? fa_pack(q0[c + 8], q0[c + 9]) : 0u;
            qa[kk][3] = ok1 ? fa_pack(q1[c + 8], q1[c + 9]) : 0u;
        }
    }

    float o[ND][4];
#pragma unroll
    for (int j = 0; j < ND; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    const float sl2 = scale * 1.4426950408889634f;  // scale * log2(e): softmax in base 2

    for (int kb = first; kb <= last; kb += FA_KEYS) {
        __syncthreads();  // the previous tile's readers are done
        // Each key's cache slot, looked up once (-1 past the last query position): the loads
        // below then need no block-table round trip and no branch, so a thread's loads of a tile
        // are all in flight at once (a guarded lookup-then-load per element serialised ~64
        // global round trips a tile and made this kernel 10x slower).
        if (threadIdx.x < FA_KEYS) {
            const int p = kb + threadIdx.x;
            s_slot[threadIdx.x] = p <= last ? table[p / block_size] * block_size + p % block_size : -1;
        }
        __syncthreads();
        // K: a warp reads whole rows (coalesced) and stores them row-major (conflict-free).
#pragma unroll 1
        for (int it0 = 0; it0 < FA_LOADS; it0 += FA_BATCH)
#pragma unroll
        for (int it = it0; it < it0 + FA_BATCH; it++) {
            const int i = threadIdx.x + it * FA_THREADS;
            const int key = i / (D / 4), c = (i % (D / 4)) * 4, slot = s_slot[key];
            uint2 x = fa_load4(kc + (long)max(slot, 0) * k_width + (long)kv * D + c);
            if (slot < 0) x = make_uint2(0u, 0u);
            *reinterpret_cast<uint2*>(&ks[key * KST + c]) = x;
        }
        // V: lanes take consecutive keys of one column group, so the transposed stores of a warp
        // fill one smem row (a column-major walk would put a warp's stores in 2 banks).
#pragma unroll 1
        for (int it0 = 0; it0 < FA_LOADS; it0 += FA_BATCH)
#pragma unroll
        for (int it = it0; it < it0 + FA_BATCH; it++) {
            const int i = threadIdx.x + it * FA_THREADS;
            const int key = i % FA_KEYS, c = (i / FA_KEYS) * 4, slot = s_slot[key];
            uint2 x = fa_load4(vc + (long)max(slot, 0) * v_width + (long)kv * D + c);
            if (slot < 0) x = make_uint2(0u, 0u);
            const __nv_bfloat16* e = reinterpret_cast<const __nv_bfloat16*>(&x);
#pragma unroll
            for (int i = 0; i < 4; i++) vt[(c + i) * VST + key] = e[i];
        }
        __syncthreads();
        // Skip tiles wholly after this warp's last row or before its first row's window.
        if (!warp_live || kb > wlast || kb + FA_KEYS - 1 < wfirst) continue;

        float s[FA_KEYS / 8][4];
#pragma unroll
        for (int j = 0; j < FA_KEYS / 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KD; kk++) {
#pragma unroll
            for (int j = 0; j < FA_KEYS / 8; j++) {
                const __nv_bfloat16* kr = &ks[(j * 8 + g) * KST + kk * 16 + 2 * tq];
                mma_bf16(s[j], qa[kk], *reinterpret_cast<const unsigned*>(kr),
                       *reinterpret_cast<const unsigned*>(kr + 8));
            }
        }
        // Mask, scale, tile row max.
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int j = 0; j < FA_KEYS / 8; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int p = kb + j * 8 + 2 * tq + (e & 1);
                bool vis = e < 2 ? (ok0 && p <= qp0 && p >= lo0) : (ok1 && p <= qp1 && p >= lo1);
                float v = vis ? s[j][e] * sl2 : -INFINITY;
                s[j][e] = v;
                if (e < 2) mx0 = fmaxf(mx0, v); else mx1 = fmaxf(mx1, v);
            }
        }
        mx0 = quad_max(mx0);
        mx1 = quad_max(mx1);
        float nm0 = fmaxf(m0, mx0), nm1 = fmaxf(m1, mx1);
        // A row that has seen no visible key yet keeps -inf; use 0 as its base so exp2 gives 0
        // rather than NaN (-inf - -inf).
        float b0 = nm0 == -INFINITY ? 0.0f : nm0, b1 = nm1 == -INFINITY ? 0.0f : nm1;
        float c0 = exp2f(m0 - b0), c1 = exp2f(m1 - b1);
        m0 = nm0;
        m1 = nm1;
        l0 *= c0;
        l1 *= c1;
#pragma unroll
        for (int j = 0; j < ND; j++) {
            o[j][0] *= c0;
            o[j][1] *= c0;
            o[j][2] *= c1;
            o[j][3] *= c1;
        }
        // P as A fragments: S's accumulator layout for key n-tiles 2k and 2k+1 is exactly the A
        // layout of the k-th 16-key step.
        unsigned pa[FA_KEYS / 16][4];
#pragma unroll
        for (int j = 0; j < FA_KEYS / 8; j++) {
            float p0 = exp2f(s[j][0] - b0), p1 = exp2f(s[j][1] - b0);
            float p2 = exp2f(s[j][2] - b1), p3 = exp2f(s[j][3] - b1);
            l0 += p0 + p1;
            l1 += p2 + p3;
            pa[j / 2][(j % 2) * 2 + 0] = fa_pack(p0, p1);
            pa[j / 2][(j % 2) * 2 + 1] = fa_pack(p2, p3);
        }
#pragma unroll
        for (int kk = 0; kk < FA_KEYS / 16; kk++) {
#pragma unroll
            for (int j = 0; j < ND; j++) {
                const __nv_bfloat16* vr = &vt[(j * 8 + g) * VST + kk * 16 + 2 * tq];
                mma_bf16(o[j], pa[kk], *reinterpret_cast<const unsigned*>(vr),
                       *reinterpret_cast<const unsigned*>(vr + 8));
            }
        }
    }
    l0 = quad_sum(l0);
    l1 = quad_sum(l1);
    // Every valid row sees at least its own position, so l > 0 there.
    float* out0 = out + ((long)(t0 + r0) * n_heads + head) * D;
    float* out1 = out + ((long)(t0 + r1) * n_heads + head) * D;
#pragma unroll
    for (int j = 0; j < ND; j++) {
        int c = j * 8 + 2 * tq;
        if (ok0) *reinterpret_cast<float2*>(out0 + c) = make_float2(o[j][0] / l0, o[j][1] / l0);
        if (ok1) *reinterpret_cast<float2*>(out1 + c) = make_float2(o[j][2] / l1, o[j][3] / l1);
    }
}

#define FA_ARGS(C)                                                                                                  \
    const float* __restrict__ q, const C* __restrict__ kc, const C* __restrict__ vc, float* __restrict__ out,         \
        const int* __restrict__ tiles, const int* __restrict__ table_off, const int* __restrict__ tables, int n_heads, \
        int group, int k_width, int v_width, int block_size, float scale, int window
#define FA_PASS q, kc, vc, out, tiles, table_off, tables, n_heads, group, k_width, v_width, block_size, scale, window

// The suffix names the cache's element type (the model's GPU cache is bf16).
extern "C" __global__ void __launch_bounds__(FA_THREADS) flash_prefill_d64(FA_ARGS(float)) { after_previous_grid(); flash_prefill<64>(FA_PASS); }
extern "C" __global__ void __launch_bounds__(FA_THREADS) flash_prefill_d64_bf16(FA_ARGS(__nv_bfloat16)) { after_previous_grid(); flash_prefill<64>(FA_PASS); }
// D = 128 on three blocks an SM (168 registers, 24 bytes of spill): the kernel waits on global
// loads, and the two blocks of 4 warps that 174 registers allowed hid too little of it.
extern "C" __global__ void __launch_bounds__(FA_THREADS, 3) flash_prefill_d128(FA_ARGS(float)) { after_previous_grid(); flash_prefill<128>(FA_PASS); }
extern "C" __global__ void __launch_bounds__(FA_THREADS, 3) flash_prefill_d128_bf16(FA_ARGS(__nv_bfloat16)) { after_previous_grid(); flash_prefill<128>(FA_PASS); }

// Per-query paged attention for D = 64 or 128 (decode rows and the short runs the flash tiles do
// not take), f32 math over f32 or bf16 caches: one block (8 warps) per (query row, KV head) serves the `group`
// query heads that share the KV head, so each key and value row is read once for all of them
// (paged_attention_f32 in ops.cu reads them once per query head, and walks the positions of a
// head one after another). Warp w takes positions first + w, first + w + 8, ..., two at a time
// so that four row loads are in flight; each lane holds D / 32 consecutive dims of the group's
// (pre-scaled) queries and of its running outputs, with an online softmax per warp and head.
// The warps' partial maxima, sums and outputs merge through shared memory at the end.
#define DEC_WARPS 8
#define DEC_MAX_GROUP 8

__device__ __forceinline__ float dec_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// One key (kr) and value (vr) row into the running softmax of every head of the group.
template <int V>
__device__ __forceinline__ void dec_step(const float (*qv)[V], const float* kr, const float* vr, int group, float* m,
                                         float* l, float (*acc)[V]) {
#pragma unroll
    for (int h = 0; h < DEC_MAX_GROUP; ++h) {
        if (h >= group) break;
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < V; ++i) s += qv[h][i] * kr[i];
        s = dec_warp_sum(s);
        const float nm = fmaxf(m[h], s);
        const float corr = expf(m[h] - nm), e = expf(s - nm);
        l[h] = l[h] * corr + e;
#pragma unroll
        for (int i = 0; i < V; ++i) acc[h][i] = acc[h][i] * corr + e * vr[i];
        m[h] = nm;
    }
}

template <int D, typename C>
__device__ void paged_decode(const float* __restrict__ q, const C* __restrict__ kc, const C* __restrict__ vc,
                             float* __restrict__ out, const int* __restrict__ q_seq, const int* __restrict__ q_pos,
                             const int* __restrict__ table_off, const int* __restrict__ tables,
                             const int* __restrict__ rows, int n_heads, int group, int k_width, int v_width,
                             int block_size, float scale, int window) {
    constexpr int V = D / 32;
    extern __shared__ float dec_smem[];  // [DEC_WARPS][group][D + 2]: outputs, max, sum
    const int n_kv = n_heads / group;
    const int t = rows[blockIdx.x / n_kv], kv = blockIdx.x % n_kv;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int pos = q_pos[t];
    const int* table = tables + table_off[q_seq[t]];
    const int first = window > 0 ? max(0, pos + 1 - window) : 0;
    float qv[DEC_MAX_GROUP][V], acc[DEC_MAX_GROUP][V], m[DEC_MAX_GROUP], l[DEC_MAX_GROUP];
#pragma unroll
    for (int h = 0; h < DEC_MAX_GROUP; ++h) {
        m[h] = -INFINITY, l[h] = 0.0f;
#pragma unroll
        for (int i = 0; i < V; ++i) acc[h][i] = 0.0f, qv[h][i] = 0.0f;
        if (h < group) {
            ld_vec<V>(qv[h], q + ((long)t * n_heads + kv * group + h) * D + lane * V);
#pragma unroll
            for (int i = 0; i < V; ++i) qv[h][i] *= scale;
        }
    }
    const long k_off = (long)kv * D + lane * V, v_off = (long)kv * D + lane * V;
    for (int p = first + warp; p <= pos; p += 2 * DEC_WARPS) {
        const int p2 = p + DEC_WARPS;
        const bool two = p2 <= pos;
        const long s1 = (long)table[p / block_size] * block_size + p % block_size;
        const long s2 = two ? (long)table[p2 / block_size] * block_size + p2 % block_size : s1;
        float k1[V], v1[V], k2[V], v2[V];
        ld_vec<V>(k1, kc + s1 * k_width + k_off);
        ld_vec<V>(v1, vc + s1 * v_width + v_off);
        ld_vec<V>(k2, kc + s2 * k_width + k_off);
        ld_vec<V>(v2, vc + s2 * v_width + v_off);
        dec_step<V>(qv, k1, v1, group, m, l, acc);
        if (two) dec_step<V>(qv, k2, v2, group, m, l, acc);
    }
    // Merge: warp w's head h row of D outputs, then its max and sum.
    const int stride = D + 2;
#pragma unroll
    for (int h = 0; h < DEC_MAX_GROUP; ++h) {
        if (h >= group) break;
        float* row = dec_smem + (warp * group + h) * stride;
#pragma unroll
        for (int i = 0; i < V; ++i) row[lane * V + i] = acc[h][i];
        if (lane == 0) row[D] = m[h], row[D + 1] = l[h];
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < group * D; idx += blockDim.x) {
        const int h = idx / D, d = idx % D;
        float mx = -INFINITY;
        for (int w = 0; w < DEC_WARPS; ++w) mx = fmaxf(mx, dec_smem[(w * group + h) * stride + D]);
        float sum = 0.0f, o = 0.0f;
        for (int w = 0; w < DEC_WARPS; ++w) {
            const float* row = dec_smem + (w * group + h) * stride;
            const float c = expf(row[D] - mx);  // 0 for a warp that saw no position
            sum += row[D + 1] * c;
            o += row[d] * c;
        }
        out[((long)t * n_heads + kv * group + h) * D + d] = o / sum;
    }
}

#define DEC_ARGS(C)                                                                                                 \
    const float *__restrict__ q, const C *__restrict__ kc, const C *__restrict__ vc, float *__restrict__ out,         \
        const int *__restrict__ q_seq, const int *__restrict__ q_pos, const int *__restrict__ table_off,             \
        const int *__restrict__ tables, const int *__restrict__ rows, int n_heads, int group, int qk_dim, int v_dim, \
        int k_width, int v_width, int block_size, float scale, int window
// (qk_dim = v_dim = D: the arguments are paged_attention_f32's, so the host launches either alike.)
#define DEC_PASS q, kc, vc, out, q_seq, q_pos, table_off, tables, rows, n_heads, group, k_width, v_width, block_size, scale, window

extern "C" __global__ void __launch_bounds__(32 * DEC_WARPS) paged_decode_d64(DEC_ARGS(float)) { after_previous_grid(); paged_decode<64>(DEC_PASS); }
extern "C" __global__ void __launch_bounds__(32 * DEC_WARPS) paged_decode_d128(DEC_ARGS(float)) { after_previous_grid(); paged_decode<128>(DEC_PASS); }
extern "C" __global__ void __launch_bounds__(32 * DEC_WARPS) paged_decode_d64_bf16(DEC_ARGS(__nv_bfloat16)) { after_previous_grid(); paged_decode<64>(DEC_PASS); }
extern "C" __global__ void __launch_bounds__(32 * DEC_WARPS) paged_decode_d128_bf16(DEC_ARGS(__nv_bfloat16)) { after_previous_grid(); paged_decode<128>(DEC_PASS); }
