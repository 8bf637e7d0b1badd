// Loads and stores of one element of an f32 or bf16 buffer as f32: the weight kernels read
// either, and the KV cache is bf16 on the GPU (f32 where a caller uploads f32 rows). Kernels that
// take either element type are templates over it, instantiated once per type.
#include <cuda_bf16.h>

__device__ __forceinline__ float ld(const float* p, long i) { return p[i]; }
__device__ __forceinline__ float ld(const __nv_bfloat16* p, long i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void st(float* p, long i, float v) { p[i] = v; }
__device__ __forceinline__ void st(__nv_bfloat16* p, long i, float v) { p[i] = __float2bfloat16_rn(v); }

// N = 2 or 4 consecutive elements from p (aligned to N elements) into r, in one load.
template <int N>
__device__ __forceinline__ void ld_vec(float* r, const float* p) {
    if (N == 4) {
        const float4 x = *reinterpret_cast<const float4*>(p);
        r[0] = x.x, r[1] = x.y, r[2] = x.z, r[3] = x.w;
    } else {
        const float2 x = *reinterpret_cast<const float2*>(p);
        r[0] = x.x, r[1] = x.y;
    }
}
template <int N>
__device__ __forceinline__ void ld_vec(float* r, const __nv_bfloat16* p) {
    if (N == 4) {
        const uint2 x = *reinterpret_cast<const uint2*>(p);
        const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&x.x));
        const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&x.y));
        r[0] = a.x, r[1] = a.y, r[2] = b.x, r[3] = b.y;
    } else {
        const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
        r[0] = a.x, r[1] = a.y;
    }
}
