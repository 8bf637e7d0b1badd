// Seeded pseudo-random fills on the device (tests and benchmarks make gigabytes of weights
// without a host copy): a counter-based hash of (seed, index) -> uniform in [-scale, scale].

#include <cuda_bf16.h>

__device__ __forceinline__ float uniform_pm1(unsigned long long seed, unsigned long long i) {
    unsigned long long z = seed * 0x9E3779B97F4A7C15ull + i + 0x632BE59BD9B4E019ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

extern "C" __global__ void fill_uniform_bf16(__nv_bfloat16* out, unsigned long long n, unsigned long long seed, float scale) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x)
        out[i] = __float2bfloat16_rn(scale * uniform_pm1(seed, i));
}

extern "C" __global__ void fill_uniform_f32(float* out, unsigned long long n, unsigned long long seed, float scale) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x)
        out[i] = scale * uniform_pm1(seed, i);
}
