// RMSNorm with the residual add fused: residual += delta (when delta is given), then
// out = residual / sqrt(mean(residual^2) + eps) * w. bf16 storage, f32 math; the updated
// residual is stored back as bf16 (what the next layer reads). One block per row.

#include <cuda_bf16.h>

extern "C" __global__ void __launch_bounds__(256) add_rms_norm(
    __nv_bfloat16* __restrict__ residual, const __nv_bfloat16* __restrict__ delta,
    const __nv_bfloat16* __restrict__ w, __nv_bfloat16* __restrict__ out, int hidden, float eps) {
    __shared__ float s_part[8];
    const size_t base = (size_t)blockIdx.x * hidden;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
        float v = __bfloat162float(residual[base + c]);
        if (delta) {
            v += __bfloat162float(delta[base + c]);
            residual[base + c] = __float2bfloat16_rn(v);
            v = __bfloat162float(residual[base + c]);
        }
        ss += v * v;
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
    if ((threadIdx.x & 31) == 0) s_part[threadIdx.x >> 5] = ss;
    __syncthreads();
    float total = 0.0f;
    for (int i = 0; i < (int)(blockDim.x >> 5); ++i) total += s_part[i];
    const float inv = rsqrtf(total / hidden + eps);
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
        float v = __bfloat162float(residual[base + c]);
        out[base + c] = __float2bfloat16_rn(v * inv * __bfloat162float(w[c]));
    }
}
