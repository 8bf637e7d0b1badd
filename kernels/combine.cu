// Unpermute and combine: out[t] = sum_j y[row_of_pair[t * top_k + j]] (+ addend[t]), in f32,
// stored as bf16. The down projection already scaled each row by its router weight, so this is
// a plain gather-sum; j runs in order so the result does not depend on the grouping. `addend`
// (nullable) is the shared experts' output or any other [T, hidden] term added in the same pass.
// 8 bf16 (16 bytes) per thread; hidden % 8 == 0.

#include <cuda_bf16.h>

extern "C" __global__ void __launch_bounds__(256) moe_combine(
    const __nv_bfloat16* __restrict__ y, const int* __restrict__ row_of_pair,
    const __nv_bfloat16* __restrict__ addend, __nv_bfloat16* __restrict__ out, int hidden, int top_k) {
    wait_for_previous_grid();  // y and row_of_pair
    const int t = blockIdx.y;
    const int c = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (c >= hidden) return;
    float acc[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[i] = 0.0f;
    if (addend) {
        uint4 v = *reinterpret_cast<const uint4*>(addend + (size_t)t * hidden + c);
        const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            float2 f = __bfloat1622float2(h[i]);
            acc[2 * i] = f.x;
            acc[2 * i + 1] = f.y;
        }
    }
    for (int j = 0; j < top_k; ++j) {
        int row = row_of_pair[(size_t)t * top_k + j];
        uint4 v = *reinterpret_cast<const uint4*>(y + (size_t)row * hidden + c);
        const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            float2 f = __bfloat1622float2(h[i]);
            acc[2 * i] += f.x;
            acc[2 * i + 1] += f.y;
        }
    }
    uint4 o;
    __nv_bfloat162* oh = reinterpret_cast<__nv_bfloat162*>(&o);
#pragma unroll
    for (int i = 0; i < 4; ++i) oh[i] = __floats2bfloat162_rn(acc[2 * i], acc[2 * i + 1]);
    *reinterpret_cast<uint4*>(out + (size_t)t * hidden + c) = o;
}
