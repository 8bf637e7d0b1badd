// Picks on the device, so that a decode step brings only token ids to the host: greedy picks
// (argmax_margin_rows) and temperature / top-k / top-p draws (sample_rows).
//
// argmax_margin_rows: per row, the index of the largest value (the first on ties, as
// torch.argmax and backend/cpu/sample.rs argmax) and the largest minus the second largest value
// of the row's multiset (a tie gives 0, as top2_margin). NaNs never win. One block per row;
// out[2r] = index, out[2r + 1] = the margin's bits (one buffer, so one copy to the host).

// NVRTC has no math.h: spell infinity as ops.cu does.
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
#define NO_INDEX 0x7fffffff
#define ARGMAX_V 8

// (a, i): the best value and its index; b: the best of the rest. Merging keeps the pair ordered by
// (value descending, index ascending) and the larger of the loser and both seconds.
__device__ __forceinline__ void merge_top2(float& a, float& b, int& i, float a2, float b2, int i2) {
    float lo;
    if (a2 > a || (a2 == a && i2 < i)) {
        lo = a;
        a = a2;
        i = i2;
    } else {
        lo = a2;
    }
    b = fmaxf(lo, fmaxf(b, b2));
}

extern "C" __global__ void argmax_margin_rows(const float* __restrict__ x, int* __restrict__ out, int cols) {
    __shared__ float sa[32], sb[32];
    __shared__ int si[32];
    const float* row = x + (long)blockIdx.x * cols;
    float a = -INFINITY, b = -INFINITY;
    int i = NO_INDEX;
    // Each thread sees its columns in increasing order: strict > keeps the first of equal values.
    // ARGMAX_V loads are issued before any is compared, so a 32000-wide row is a few memory round
    // trips rather than one per loop step.
    for (int c0 = threadIdx.x; c0 < cols; c0 += ARGMAX_V * blockDim.x) {
        float v[ARGMAX_V];
#pragma unroll
        for (int j = 0; j < ARGMAX_V; ++j) {
            const int c = c0 + j * blockDim.x;
            v[j] = c < cols ? row[c] : -INFINITY;
        }
#pragma unroll
        for (int j = 0; j < ARGMAX_V; ++j) {
            const int c = c0 + j * blockDim.x;
            if (c >= cols) break;
            if (v[j] > a) {
                b = a;
                a = v[j];
                i = c;
            } else if (v[j] > b) {
                b = v[j];
            }
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float a2 = __shfl_xor_sync(0xffffffffu, a, o);
        float b2 = __shfl_xor_sync(0xffffffffu, b, o);
        int i2 = __shfl_xor_sync(0xffffffffu, i, o);
        merge_top2(a, b, i, a2, b2, i2);
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        sa[warp] = a;
        sb[warp] = b;
        si[warp] = i;
    }
    __syncthreads();
    if (warp != 0) return;
    const int warps = blockDim.x / 32;
    a = lane < warps ? sa[lane] : -INFINITY;
    b = lane < warps ? sb[lane] : -INFINITY;
    i = lane < warps ? si[lane] : NO_INDEX;
    for (int o = 16; o > 0; o >>= 1) {
        float a2 = __shfl_xor_sync(0xffffffffu, a, o);
        float b2 = __shfl_xor_sync(0xffffffffu, b, o);
        int i2 = __shfl_xor_sync(0xffffffffu, i, o);
        merge_top2(a, b, i, a2, b2, i2);
    }
    if (lane == 0) {
        // A row without a value above -inf picks 0, as the host argmax does.
        out[2 * blockIdx.x] = i == NO_INDEX ? 0 : i;
        out[2 * blockIdx.x + 1] = __float_as_int(a - b);
    }
}

// sample_rows: backend/cpu/sample.rs `sample` for one row per block, the draw's parameters in
// draws[5b..5b + 5] = (logits row, temperature bits, kept = min(top_k, cols) or cols, top_p bits,
// uniform bits); out[b] = the token.
//
// The host's order is by logit descending (f32::total_cmp: +NaN first, -NaN last), ties lower id
// first. Here every value gets a 64-bit key, (order_key(value) << idbits) | id, whose ascending
// order is that order, so "the first n of the order" is "the keys <= some key". No sort: each
// question ("which element is the k-th?", "where does the mass reach top_p?", "where does the
// running sum pass uniform · mass?") is a radix search over the key, 11 bits per pass, with a
// block-wide histogram of the count or the weight per digit. Weights exp((l - max) / T) are summed
// as 64-bit fixed-point integers (2^(62 - idbits) per unit, so a row's sum cannot overflow):
// integer sums do not depend on the order of the atomics, so a seeded draw repeats exactly.
#define SAMPLE_THREADS 512
#define SAMPLE_DIGIT 11
#define SAMPLE_BINS (1 << SAMPLE_DIGIT)

typedef unsigned long long u64;

// Ascending order_key = descending f32::total_cmp order.
__device__ __forceinline__ unsigned int order_key(float v) {
    const unsigned int b = __float_as_uint(v);
    const unsigned int t = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return ~t;
}

__device__ __forceinline__ bool is_nan_bits(float v) {
    return (__float_as_uint(v) & 0x7fffffffu) > 0x7f800000u;
}

struct SampleShared {
    u64 sum[SAMPLE_BINS];
    unsigned int cnt[SAMPLE_BINS];
    u64 scan[SAMPLE_THREADS];
    float best[SAMPLE_THREADS];
    int best_i[SAMPLE_THREADS];
    int bin;
    int nan;
    u64 before;
    u64 key;
};

// What every pass needs to know of the row.
struct SampleRow {
    const float* x;
    int cols;
    int idbits;
    int nbits;     // 32 + idbits: the key's width
    float max;     // the host's max: logits[argmax]
    float t;       // temperature
    double scale;  // fixed-point units per unit of weight
};

__device__ __forceinline__ u64 key_of(const SampleRow& r, int c, float v) {
    return ((u64)order_key(v) << r.idbits) | (u64)c;
}

__device__ __forceinline__ float weight_of(const SampleRow& r, float v) {
    return __expf((v - r.max) / r.t);
}

// A weight as fixed point; NaN and 0 give 0.
__device__ __forceinline__ u64 fixed(const SampleRow& r, float w) {
    return w > 0.0f ? (u64)((double)w * r.scale) : 0ull;
}

// The first element of the order among those with key <= limit at which the running total of q
// (1 per element, or its fixed-point weight when `weighted`) reaches thr (thr >= 1). Returns
// whether there is one; *key is its key and *through the running total up to and including it.
// Every thread of the block calls it and gets the same answer.
__device__ bool search_key(SampleShared& sh, const SampleRow& r, u64 limit, bool weighted, u64 thr,
                           u64* key, u64* through) {
    const int tid = threadIdx.x;
    u64 prefix = 0, base = 0;
    int hi = r.nbits;
    while (hi > 0) {
        const int shift = hi > SAMPLE_DIGIT ? hi - SAMPLE_DIGIT : 0;
        const u64 mask = (1ull << (hi - shift)) - 1;
        __syncthreads();  // everyone has read the last pass's results
        for (int b = tid; b < SAMPLE_BINS; b += SAMPLE_THREADS) {
            sh.sum[b] = 0;
            sh.cnt[b] = 0;
        }
        if (tid == 0) sh.bin = -1;
        __syncthreads();
        for (int c = tid; c < r.cols; c += SAMPLE_THREADS) {
            const float v = r.x[c];
            const u64 k = key_of(r, c, v);
            if (k > limit || (k >> hi) != prefix) continue;
            const int b = (int)((k >> shift) & mask);
            atomicAdd(&sh.cnt[b], 1u);
            const u64 q = weighted ? fixed(r, weight_of(r, v)) : 1ull;
            if (q != 0) atomicAdd(&sh.sum[b], q);
        }
        __syncthreads();
        // Inclusive scan of the bins, SAMPLE_BINS / SAMPLE_THREADS consecutive bins per thread.
        const int per = SAMPLE_BINS / SAMPLE_THREADS;
        u64 local = 0;
        for (int j = 0; j < per; ++j) local += sh.sum[per * tid + j];
        sh.scan[tid] = local;
        __syncthreads();
        for (int off = 1; off < SAMPLE_THREADS; off <<= 1) {
            const u64 v = tid >= off ? sh.scan[tid - off] : 0ull;
            __syncthreads();
            sh.scan[tid] += v;
            __syncthreads();
        }
        u64 run = base + sh.scan[tid] - local;
        for (int j = 0; j < per; ++j) {
            const u64 after = run + sh.sum[per * tid + j];
            // The running total is below thr at the start (base < thr), so one bin crosses.
            if (run < thr && after >= thr) {
                sh.bin = per * tid + j;
                sh.before = run;
            }
            run = after;
        }
        __syncthreads();
        const int bin = sh.bin;
        if (bin < 0) return false;  // the total never reaches thr (only on the first pass)
        prefix = (prefix << (hi - shift)) | (u64)bin;
        base = sh.before;
        hi = shift;
        if (hi == 0 || sh.cnt[bin] == 1) {
            // One element left: the crossing one. Its key is the prefix, or found by one pass.
            *through = base + sh.sum[bin];
            if (hi > 0) {
                for (int c = tid; c < r.cols; c += SAMPLE_THREADS) {
                    const u64 k = key_of(r, c, r.x[c]);
                    if (k <= limit && (k >> hi) == prefix) sh.key = k;
                }
                __syncthreads();
                *key = sh.key;
            } else {
                *key = prefix;
            }
            __syncthreads();
            return true;
        }
    }
    return false;
}

extern "C" __global__ void sample_rows(const float* __restrict__ x, const int* __restrict__ draws,
                                       int* __restrict__ out, int cols) {
    __shared__ SampleShared sh;
    const int tid = threadIdx.x;
    const int* d = draws + 5 * blockIdx.x;
    SampleRow r;
    r.x = x + (long)d[0] * cols;
    r.cols = cols;
    r.idbits = cols > 1 ? 32 - __clz(cols - 1) : 0;
    r.nbits = 32 + r.idbits;
    r.t = __int_as_float(d[1]);
    const int kept = d[2];
    const float top_p = __int_as_float(d[3]);
    const float uniform = __int_as_float(d[4]);
    r.scale = (double)(1ull << (62 - r.idbits));
    const u64 id_mask = (1ull << r.idbits) - 1;

    // The host's argmax (the first largest value; NaN never wins, but a NaN at 0 stays) and the
    // order's last key.
    float bv = -INFINITY;
    int bi = NO_INDEX;
    u64 kmax = 0;
    for (int c = tid; c < cols; c += SAMPLE_THREADS) {
        const float v = r.x[c];
        if (v > bv) {
            bv = v;
            bi = c;
        }
        const u64 k = key_of(r, c, v);
        kmax = k > kmax ? k : kmax;
    }
    sh.best[tid] = bv;
    sh.best_i[tid] = bi;
    sh.scan[tid] = kmax;
    __syncthreads();
    for (int s = SAMPLE_THREADS / 2; s > 0; s >>= 1) {
        if (tid < s) {
            const float v2 = sh.best[tid + s];
            const int i2 = sh.best_i[tid + s];
            if (v2 > sh.best[tid] || (v2 == sh.best[tid] && i2 < sh.best_i[tid])) {
                sh.best[tid] = v2;
                sh.best_i[tid] = i2;
            }
            const u64 k2 = sh.scan[tid + s];
            if (k2 > sh.scan[tid]) sh.scan[tid] = k2;
        }
        __syncthreads();
    }
    const bool nan0 = is_nan_bits(r.x[0]);
    const int argmax = (nan0 || sh.best_i[0] == NO_INDEX) ? 0 : sh.best_i[0];
    r.max = nan0 ? r.x[0] : (sh.best_i[0] == NO_INDEX ? -INFINITY : sh.best[0]);
    kmax = sh.scan[0];
    if (!(r.t > 0.0f) && !is_nan_bits(r.t)) {
        if (tid == 0) out[blockIdx.x] = argmax;
        return;
    }

    // top-k: the kept-th key of the order bounds the kept set.
    u64 limit = ~0ull, key = 0, through = 0;
    if (kept < cols && search_key(sh, r, ~0ull, false, (u64)kept, &key, &through)) limit = key;
    const u64 last_kept = kept < cols ? limit : kmax;

    // The kept set's total weight, and whether a weight is NaN (then every probability is NaN
    // and the host returns the last kept token).
    u64 total = 0;
    int nan = 0;
    for (int c = tid; c < cols; c += SAMPLE_THREADS) {
        const float v = r.x[c];
        if (key_of(r, c, v) > limit) continue;
        const float w = weight_of(r, v);
        if (is_nan_bits(w)) nan = 1;
        else total += fixed(r, w);
    }
    __syncthreads();
    if (tid == 0) sh.nan = 0;
    sh.scan[tid] = total;
    __syncthreads();
    if (nan) atomicOr(&sh.nan, 1);
    for (int s = SAMPLE_THREADS / 2; s > 0; s >>= 1) {
        if (tid < s) sh.scan[tid] += sh.scan[tid + s];
        __syncthreads();
    }
    total = sh.scan[0];
    if (sh.nan || total == 0) {
        if (tid == 0) out[blockIdx.x] = (int)(last_kept & id_mask);
        return;
    }

    // top-p: the shortest prefix whose mass reaches top_p (NaN never does: all is kept).
    u64 mass = total;
    if (top_p < 1.0f) {
        const double want = (double)top_p * (double)total;
        u64 thr = 1;
        if (want > 1.0) {
            thr = (u64)want;  // truncation: want > 0, so floor; then up to the ceiling
            if ((double)thr < want) ++thr;
        }
        if (search_key(sh, r, limit, true, thr, &key, &through)) {
            limit = key;
            mass = through;
        }
    }
    const u64 last = limit == ~0ull ? kmax : limit;

    // The draw: the first token at which the running sum passes uniform · mass.
    int token = (int)(last & id_mask);
    if (!is_nan_bits(uniform)) {
        const double want = (double)uniform * (double)mass;
        if (want < 9.0e18) {
            const u64 thr = want < 0.0 ? 1ull : (u64)want + 1;  // floor + 1: passes it
            if (search_key(sh, r, limit, true, thr, &key, &through)) token = (int)(key & id_mask);
        }
    }
    if (tid == 0) out[blockIdx.x] = token;
}
