// The model's glue ops on f32 activations (weights bf16 or f32): casts, bias, embedding, RMSNorm,
// RoPE (cos/sin computed on the host exactly as the CPU reference does), row and column copies,
// paged attention (GQA and MLA's absorbed MQA form), a naive grouped SwiGLU and the combine.
// Simple and correct first: one thread, warp or block per output element or row.
#include <cuda_bf16.h>

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum (or max) over a block of up to 1024 threads; every thread gets the result.
__device__ float block_reduce(float v, bool is_max) {
    __shared__ float scratch[32];
    __shared__ float result;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = is_max ? warp_max(v) : warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float r = lane < warps ? scratch[lane] : (is_max ? -INFINITY : 0.0f);
        r = is_max ? warp_max(r) : warp_sum(r);
        if (lane == 0) result = r;
    }
    __syncthreads();
    return result;
}

extern "C" __global__ void cast_f32_bf16(const float* __restrict__ x, __nv_bfloat16* __restrict__ y, long n) {
    after_previous_grid();
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        y[i] = __float2bfloat16(x[i]);
}

extern "C" __global__ void cast_bf16_f32(const __nv_bfloat16* __restrict__ x, float* __restrict__ y, long n) {
    after_previous_grid();
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        y[i] = __bfloat162float(x[i]);
}

// y[r, c] += b[c]
extern "C" __global__ void add_bias(float* __restrict__ y, const float* __restrict__ b, long rows, int cols) {
    after_previous_grid();
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < rows * cols; i += (long)gridDim.x * blockDim.x)
        y[i] += b[i % cols];
}

// x[i] += y[i]
extern "C" __global__ void add_in_place(float* __restrict__ x, const float* __restrict__ y, long n) {
    after_previous_grid();
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        x[i] += y[i];
}

// out[r, i] = silu(gu[r, i]) * gu[r, inter + i] over rows of [gate | up] (a dense MLP's
// activation between its two cuBLAS GEMMs).
extern "C" __global__ void silu_mul_f32(const float* __restrict__ gu, float* __restrict__ out, long rows, int inter) {
    after_previous_grid();
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < rows * inter; i += (long)gridDim.x * blockDim.x) {
        const long r = i / inter, c = i % inter;
        const float g = gu[r * 2 * inter + c];
        out[i] = g / (1.0f + expf(-g)) * gu[r * 2 * inter + inter + c];
    }
}

// out[t, :] = table[ids[t], :]; one block per token.
template <typename T>
__device__ void embedding_impl(const T* table, const int* ids, float* out, int hidden) {
    long src = (long)ids[blockIdx.x] * hidden, dst = (long)blockIdx.x * hidden;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) out[dst + c] = ld(table, src + c);
}
extern "C" __global__ void embedding_bf16(const __nv_bfloat16* table, const int* ids, float* out, int hidden) {
    after_previous_grid();
    embedding_impl(table, ids, out, hidden);
}
extern "C" __global__ void embedding_f32(const float* table, const int* ids, float* out, int hidden) {
    after_previous_grid();
    embedding_impl(table, ids, out, hidden);
}

// y = x / sqrt(mean(x^2) + eps) * w over rows of `cols` (one block per row; y may alias x).
// With `delta`, first res += delta (stored), then the norm of res.
// One block per row; the row stays in registers (NORM_V values a thread, cols <= NORM_V *
// blockDim, checked on the host), so each pass issues all its loads before it uses any: a decode
// row is one memory round trip a pass, not one per loop step.
#define NORM_V 16
extern "C" __global__ void __launch_bounds__(1024) rms_norm_f32(
    float* __restrict__ res, const float* __restrict__ delta, const float* __restrict__ w,
    float* __restrict__ y, int cols, float eps) {
    after_previous_grid();
    const long base = (long)blockIdx.x * cols;
    float v[NORM_V];
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < NORM_V; ++j) {
        const int c = threadIdx.x + j * blockDim.x;
        v[j] = c < cols ? res[base + c] : 0.0f;
    }
    if (delta) {
#pragma unroll
        for (int j = 0; j < NORM_V; ++j) {
            const int c = threadIdx.x + j * blockDim.x;
            if (c < cols) {
                v[j] += delta[base + c];
                res[base + c] = v[j];
            }
        }
    }
#pragma unroll
    for (int j = 0; j < NORM_V; ++j) ss += v[j] * v[j];
    ss = block_reduce(ss, false);
    const float inv = 1.0f / sqrtf(ss / cols + eps);
#pragma unroll
    for (int j = 0; j < NORM_V; ++j) {
        const int c = threadIdx.x + j * blockDim.x;
        if (c < cols) y[base + c] = v[j] * inv * w[c];
    }
}

// RoPE in place: row t of x holds chunks of 2*half values; cs holds per row [cos(half), sin(half)]
// (attention factor already applied). interleaved: pairs (2i, 2i+1), else (i, i+half).
// `per_row` blocks a row, one pair a thread.
extern "C" __global__ void rope_f32(float* __restrict__ x, const float* __restrict__ cs, int cols, int half,
                                    int interleaved, int per_row) {
    after_previous_grid();
    const long row = blockIdx.x / per_row;
    const int k = (blockIdx.x % per_row) * blockDim.x + threadIdx.x;
    const int chunks = cols / (2 * half);
    if (k >= chunks * half) return;
    const float* c = cs + row * 2 * half;
    const int ch = k / half, i = k % half;
    const int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
    float* p = x + row * cols + ch * 2 * half;
    const float x1 = p[a], x2 = p[b], co = c[i], si = c[half + i];
    p[a] = x1 * co - x2 * si;
    p[b] = x2 * co + x1 * si;
}

// What a GQA layer does between its QKV projection and attention, in one launch: row t of qkv
// holds q (q_w), k (kv_w) and v (kv_w); q_out[t] = RoPE(q), keys[slot[t]] = RoPE(k),
// values[slot[t]] = v (cache rows of kv_w). RoPE as rope_f32 (cs: row t's cos then sin, `half`
// each). `per_row` blocks a row: thread j takes the j-th rotation pair of q then of k, and the
// j-th value of v.
template <typename C>
__device__ __forceinline__ void qkv_rope_cache_impl(const float* __restrict__ qkv, float* __restrict__ q_out,
                                                    C* __restrict__ keys, C* __restrict__ values,
                                                    const int* __restrict__ slots, const float* __restrict__ cs,
                                                    int q_w, int kv_w, int half, int interleaved, int per_row) {
    const long row = blockIdx.x / per_row;
    const int j = (blockIdx.x % per_row) * blockDim.x + threadIdx.x;
    const float* in = qkv + row * (q_w + 2 * kv_w);
    const long slot = slots[row];
    const int q_pairs = q_w / 2, pairs = q_pairs + kv_w / 2;
    if (j < pairs) {
        const bool is_q = j < q_pairs;
        const int p = is_q ? j : j - q_pairs, ch = p / half, i = p % half;
        const int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
        const float* src = in + (is_q ? 0 : q_w) + ch * 2 * half;
        const float* c = cs + row * 2 * half;
        const float x1 = src[a], x2 = src[b], co = c[i], si = c[half + i];
        const float y1 = x1 * co - x2 * si, y2 = x2 * co + x1 * si;
        if (is_q) {
            float* dst = q_out + row * q_w + ch * 2 * half;
            dst[a] = y1, dst[b] = y2;
        } else {
            const long at = slot * kv_w + ch * 2 * half;
            st(keys, at + a, y1), st(keys, at + b, y2);
        }
    }
    if (j < kv_w) st(values, slot * kv_w + j, in[q_w + kv_w + j]);
}

#define QRC_ARGS(C)                                                                                         \
    const float *__restrict__ qkv, float *__restrict__ q_out, C *__restrict__ keys, C *__restrict__ values, \
        const int *__restrict__ slots, const float *__restrict__ cs, int q_w, int kv_w, int half, int interleaved, int per_row
#define QRC_PASS qkv, q_out, keys, values, slots, cs, q_w, kv_w, half, interleaved, per_row
// Caches of f32 rows (MLA's latent on the GPU) or of bf16 rows (a GQA model's).
extern "C" __global__ void qkv_rope_cache(QRC_ARGS(float)) { after_previous_grid(); qkv_rope_cache_impl(QRC_PASS); }
extern "C" __global__ void qkv_rope_cache_bf16(QRC_ARGS(__nv_bfloat16)) { after_previous_grid(); qkv_rope_cache_impl(QRC_PASS); }

// What an MLA layer does between its projections and the absorbed attention, in one launch, one
// block a new token t: q[t] holds n_heads heads of (nope, rope) query dims, kv[t] the latent
// (lora) and the rope key (rope):
//   cache[slot[t]] = [RMSNorm(latent) · norm_w ; RoPE(k_rot)]   (the latent row MLA caches)
//   q_nope[t, h·nope + c] = bf16(q[t, h·(nope + rope) + c])      (the W_UKᵀ GEMM's input)
//   q_full[t, h·(lora + rope) + lora + c] = RoPE(q_rot,h)[c]     (the GEMM fills [0, lora))
// RMSNorm and RoPE as rms_norm_f32 and rope_f32 (cs: row t's cos then sin, rope / 2 each).
template <typename C>
__device__ __forceinline__ void mla_rope_cache_impl(
    const float* __restrict__ q, const float* __restrict__ kv, const float* __restrict__ norm_w, float eps,
    __nv_bfloat16* __restrict__ q_nope, float* __restrict__ q_full, C* __restrict__ cache,
    const int* __restrict__ slots, const float* __restrict__ cs, int n_heads, int nope, int rope, int lora,
    int interleaved) {
    const long t = blockIdx.x;
    const int half = rope / 2, row_w = lora + rope;
    const float* kvr = kv + t * row_w;
    const float* c = cs + t * 2 * half;
    C* out = cache + (long)slots[t] * row_w;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < lora; i += blockDim.x) ss += kvr[i] * kvr[i];
    const float inv = 1.0f / sqrtf(block_reduce(ss, false) / lora + eps);
    for (int i = threadIdx.x; i < lora; i += blockDim.x) st(out, i, kvr[i] * inv * norm_w[i]);
    const float* qr = q + t * n_heads * (nope + rope);
    for (int i = threadIdx.x; i < (n_heads + 1) * half; i += blockDim.x) {
        // Rotation pair i % half of query head i / half, or of the rope key (the last "head").
        const int h = i / half, p = i % half;
        const int a = interleaved ? 2 * p : p, b = interleaved ? 2 * p + 1 : p + half;
        const float* src = h < n_heads ? qr + h * (nope + rope) + nope : kvr + lora;
        const float x1 = src[a], x2 = src[b], co = c[p], si = c[half + p];
        const float y1 = x1 * co - x2 * si, y2 = x2 * co + x1 * si;
        if (h < n_heads) {
            float* dst = q_full + (t * n_heads + h) * row_w + lora;
            dst[a] = y1, dst[b] = y2;
        } else {
            st(out, lora + a, y1), st(out, lora + b, y2);
        }
    }
    for (int i = threadIdx.x; i < n_heads * nope; i += blockDim.x)
        q_nope[t * n_heads * nope + i] = __float2bfloat16_rn(qr[(i / nope) * (nope + rope) + i % nope]);
}

#define MRC_ARGS(C)                                                                                              \
    const float *__restrict__ q, const float *__restrict__ kv, const float *__restrict__ norm_w, float eps,       \
        __nv_bfloat16 *__restrict__ q_nope, float *__restrict__ q_full, C *__restrict__ cache,                  \
        const int *__restrict__ slots, const float *__restrict__ cs, int n_heads, int nope, int rope, int lora, \
        int interleaved
#define MRC_PASS q, kv, norm_w, eps, q_nope, q_full, cache, slots, cs, n_heads, nope, rope, lora, interleaved
// The latent cache in f32 (widths the per-query kernel reads) or bf16 (DeepSeek's).
extern "C" __global__ void mla_rope_cache(MRC_ARGS(float)) { after_previous_grid(); mla_rope_cache_impl(MRC_PASS); }
extern "C" __global__ void mla_rope_cache_bf16(MRC_ARGS(__nv_bfloat16)) { after_previous_grid(); mla_rope_cache_impl(MRC_PASS); }

// dst[rows[i] * dst_w + dst_off + c] = src[srow(i) * src_w + src_off + c] for c < len, where
// srow(i) = src_rows ? src_rows[i] / div : i. Covers gathers, scatters (cache writes) and column
// slices/concats. `per_row` blocks a row, COPY_V elements a thread, all loaded before any store.
#define COPY_V 4
template <typename C>
__device__ __forceinline__ void copy_rows_impl(const float* __restrict__ src, int src_w, int src_off,
                                               const int* src_rows, int div, C* __restrict__ dst, int dst_w,
                                               int dst_off, const int* dst_rows, int len, int per_row) {
    const long i = blockIdx.x / per_row;
    const int c0 = (blockIdx.x % per_row) * blockDim.x * COPY_V + threadIdx.x;
    const long s = src_rows ? (long)(src_rows[i] / div) : i;
    const long d = dst_rows ? (long)dst_rows[i] : i;
    const float* sp = src + s * src_w + src_off;
    C* dp = dst + d * dst_w + dst_off;
    float v[COPY_V];
#pragma unroll
    for (int j = 0; j < COPY_V; ++j) {
        const int c = c0 + j * blockDim.x;
        if (c < len) v[j] = sp[c];
    }
#pragma unroll
    for (int j = 0; j < COPY_V; ++j) {
        const int c = c0 + j * blockDim.x;
        if (c < len) st(dp, c, v[j]);
    }
}

#define COPY_ARGS(C)                                                                                            \
    const float *__restrict__ src, int src_w, int src_off, const int *src_rows, int div, C *__restrict__ dst,  \
        int dst_w, int dst_off, const int *dst_rows, int len, int per_row
#define COPY_PASS src, src_w, src_off, src_rows, div, dst, dst_w, dst_off, dst_rows, len, per_row
extern "C" __global__ void copy_rows(COPY_ARGS(float)) { after_previous_grid(); copy_rows_impl(COPY_PASS); }
// Into a bf16 cache (rounded to nearest even).
extern "C" __global__ void copy_rows_to_bf16(COPY_ARGS(__nv_bfloat16)) { after_previous_grid(); copy_rows_impl(COPY_PASS); }

// Causal paged attention. One block per (row, head), row = rows[blockIdx.x / n_heads] (the query
// rows this kernel serves: decode rows and short runs; prefill runs go to attention.cu). Keys of a query at position pos in
// sequence seq: positions first..pos, slot(p) = table[seq][p / block_size] * block_size + p % block_size.
// Online softmax over chunks of CH positions; each thread owns output dims tid, tid + blockDim, ...
#define ATT_CH 256
#define ATT_MAX_DIMS 8
template <typename C>
__device__ __forceinline__ void paged_attention_impl(
    const float* __restrict__ q, const C* __restrict__ kc, const C* __restrict__ vc, float* __restrict__ out,
    const int* __restrict__ q_seq, const int* __restrict__ q_pos, const int* __restrict__ table_off, const int* __restrict__ tables,
    const int* __restrict__ rows, int n_heads, int group, int qk_dim, int v_dim, int k_width, int v_width, int block_size, float scale, int window) {
    extern __shared__ float smem[];
    float* qs = smem;              // qk_dim
    float* ps = smem + qk_dim;     // ATT_CH
    int t = rows[blockIdx.x / n_heads], head = blockIdx.x % n_heads, kv = head / group;
    int seq = q_seq[t], pos = q_pos[t];
    const int* table = tables + table_off[seq];
    int first = window > 0 ? max(0, pos + 1 - window) : 0;
    for (int c = threadIdx.x; c < qk_dim; c += blockDim.x) qs[c] = q[((long)t * n_heads + head) * qk_dim + c];
    __syncthreads();
    float m = -INFINITY, l = 0.0f, acc[ATT_MAX_DIMS];
    for (int j = 0; j < ATT_MAX_DIMS; j++) acc[j] = 0.0f;
    for (int start = first; start <= pos; start += ATT_CH) {
        int n = min(ATT_CH, pos + 1 - start);
        float local_max = -INFINITY;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            int p = start + i;
            long slot = (long)table[p / block_size] * block_size + p % block_size;
            const C* k = kc + slot * k_width + (long)kv * qk_dim;
            float s = 0.0f;
            for (int c = 0; c < qk_dim; c++) s += qs[c] * ld(k, c);
            s *= scale;
            ps[i] = s;
            local_max = fmaxf(local_max, s);
        }
        float new_m = fmaxf(m, block_reduce(local_max, true));
        float correction = expf(m - new_m);  // 0 on the first chunk (m = -inf)
        float local_sum = 0.0f;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            float e = expf(ps[i] - new_m);
            ps[i] = e;
            local_sum += e;
        }
        l = l * correction + block_reduce(local_sum, false);  // the reduction's barrier publishes ps
        m = new_m;
        for (int j = 0; j < ATT_MAX_DIMS; j++) {
            int d = threadIdx.x + j * blockDim.x;
            if (d >= v_dim) break;
            float a = acc[j] * correction;
            for (int i = 0; i < n; i++) {
                int p = start + i;
                long slot = (long)table[p / block_size] * block_size + p % block_size;
                a += ps[i] * ld(vc, slot * v_width + (long)kv * v_dim + d);
            }
            acc[j] = a;
        }
        __syncthreads();
    }
    for (int j = 0; j < ATT_MAX_DIMS; j++) {
        int d = threadIdx.x + j * blockDim.x;
        if (d >= v_dim) break;
        out[((long)t * n_heads + head) * v_dim + d] = acc[j] / l;
    }
}

#define PA_ARGS(C)                                                                                                    \
    const float *__restrict__ q, const C *__restrict__ kc, const C *__restrict__ vc, float *__restrict__ out,         \
        const int *__restrict__ q_seq, const int *__restrict__ q_pos, const int *__restrict__ table_off,             \
        const int *__restrict__ tables, const int *__restrict__ rows, int n_heads, int group, int qk_dim, int v_dim, \
        int k_width, int v_width, int block_size, float scale, int window
#define PA_PASS q, kc, vc, out, q_seq, q_pos, table_off, tables, rows, n_heads, group, qk_dim, v_dim, k_width, v_width, block_size, scale, window
// Over f32 caches or bf16 caches (a GQA model's on the GPU); the math is f32 in both.
extern "C" __global__ void paged_attention_f32(PA_ARGS(float)) { after_previous_grid(); paged_attention_impl(PA_PASS); }
extern "C" __global__ void paged_attention_bf16(PA_ARGS(__nv_bfloat16)) { after_previous_grid(); paged_attention_impl(PA_PASS); }

// Naive grouped SwiGLU, one warp per output element.
// act[r, i] = silu(x_r . gu[e, i] + b[e, i]) * (x_r . gu[e, inter + i] + b[e, inter + i]), e = expert[r].
template <typename W>
__device__ void gate_up_impl(const float* x, const W* gu, const float* bias, const int* expert, float* act, int rows, int hidden, int inter) {
    long warp = (blockIdx.x * (long)blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (warp >= (long)rows * inter) return;
    int r = warp / inter, i = warp % inter, e = expert[r];
    const float* xr = x + (long)r * hidden;
    const W* g = gu + ((long)e * 2 * inter + i) * hidden;
    const W* u = gu + ((long)e * 2 * inter + inter + i) * hidden;
    float sg = 0.0f, su = 0.0f;
    for (int c = lane; c < hidden; c += 32) {
        sg += xr[c] * ld(g, c);
        su += xr[c] * ld(u, c);
    }
    sg = warp_sum(sg);
    su = warp_sum(su);
    if (lane == 0) {
        if (bias) {
            sg += bias[(long)e * 2 * inter + i];
            su += bias[(long)e * 2 * inter + inter + i];
        }
        act[(long)r * inter + i] = sg / (1.0f + expf(-sg)) * su;
    }
}
extern "C" __global__ void grouped_gate_up_bf16(const float* x, const __nv_bfloat16* gu, const float* bias, const int* expert, float* act, int rows, int hidden, int inter) {
    after_previous_grid();
    gate_up_impl(x, gu, bias, expert, act, rows, hidden, inter);
}
extern "C" __global__ void grouped_gate_up_f32(const float* x, const float* gu, const float* bias, const int* expert, float* act, int rows, int hidden, int inter) {
    after_previous_grid();
    gate_up_impl(x, gu, bias, expert, act, rows, hidden, inter);
}

// y[r, j] = act_r . down[e, j] + b[e, j]
template <typename W>
__device__ void down_impl(const float* act, const W* dn, const float* bias, const int* expert, float* y, int rows, int hidden, int inter) {
    long warp = (blockIdx.x * (long)blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (warp >= (long)rows * hidden) return;
    int r = warp / hidden, j = warp % hidden, e = expert[r];
    const float* a = act + (long)r * inter;
    const W* w = dn + ((long)e * hidden + j) * inter;
    float s = 0.0f;
    for (int c = lane; c < inter; c += 32) s += a[c] * ld(w, c);
    s = warp_sum(s);
    if (lane == 0) y[(long)r * hidden + j] = s + (bias ? bias[(long)e * hidden + j] : 0.0f);
}
extern "C" __global__ void grouped_down_bf16(const float* act, const __nv_bfloat16* dn, const float* bias, const int* expert, float* y, int rows, int hidden, int inter) {
    after_previous_grid();
    down_impl(act, dn, bias, expert, y, rows, hidden, inter);
}
extern "C" __global__ void grouped_down_f32(const float* act, const float* dn, const float* bias, const int* expert, float* y, int rows, int hidden, int inter) {
    after_previous_grid();
    down_impl(act, dn, bias, expert, y, rows, hidden, inter);
}

// out[t, :] = sum_j w[t*k + j] * y[row_of_pair[t*k + j], :], summed in j order. One block per token.
extern "C" __global__ void combine_f32(const float* __restrict__ y, const int* __restrict__ row_of_pair, const float* __restrict__ w,
                                       float* __restrict__ out, int hidden, int top_k) {
    after_previous_grid();
    long t = blockIdx.x;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
        float s = 0.0f;
        for (int j = 0; j < top_k; j++) {
            long pair = t * top_k + j;
            s += w[pair] * y[(long)row_of_pair[pair] * hidden + c];
        }
        out[t * hidden + c] = s;
    }
}

// s[t, :] *= sigmoid(gate[t]). One block per row.
extern "C" __global__ void sigmoid_scale_rows(float* s, const float* __restrict__ gate, int cols) {
    after_previous_grid();
    float g = 1.0f / (1.0f + expf(-gate[blockIdx.x]));
    for (int c = threadIdx.x; c < cols; c += blockDim.x) s[(long)blockIdx.x * cols + c] *= g;
}

// Index of the largest value of each row (the first on ties). One block per row.
extern "C" __global__ void argmax_rows(const float* __restrict__ x, int* __restrict__ out, int cols) {
    after_previous_grid();
    __shared__ float bv[1024];
    __shared__ int bi[1024];
    const float* row = x + (long)blockIdx.x * cols;
    float best = -INFINITY;
    int idx = 0x7fffffff;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = row[c];
        if (v > best || (v == best && c < idx)) { best = v; idx = c; }
    }
    bv[threadIdx.x] = best;
    bi[threadIdx.x] = idx;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float v = bv[threadIdx.x + s];
            int i = bi[threadIdx.x + s];
            if (v > bv[threadIdx.x] || (v == bv[threadIdx.x] && i < bi[threadIdx.x])) { bv[threadIdx.x] = v; bi[threadIdx.x] = i; }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = bi[0] == 0x7fffffff ? 0 : bi[0];
}
