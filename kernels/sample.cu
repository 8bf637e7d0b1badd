// Greedy picks on the device, so that a decode step brings only token ids to the host.
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
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = row[c];
        if (v > a) {
            b = a;
            a = v;
            i = c;
        } else if (v > b) {
            b = v;
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
