// Seeded pseudo-random fills on the device (tests, benchmarks and --random-weights make gigabytes of weights
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

// N(0, std) weights for `--random-weights` on the GPU: Box-Muller over a counter-based hash
// (SplitMix64 of the tensor's key and the pair index), so every value is a pure function of
// (seed ^ name hash, index) whatever the launch shape. Pair j gives elements 2j and 2j + 1.
__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ float2 normal_pair(unsigned long long key, unsigned long long j, float std) {
    unsigned long long z = mix64(mix64(key) + (j + 1) * 0x9E3779B97F4A7C15ull);
    float u1 = (float)((unsigned)(z >> 40) + 1u) * (1.0f / 16777216.0f);    // (0, 1]: safe for log
    float u2 = (float)((unsigned)(z >> 8) & 0xffffffu) * (1.0f / 16777216.0f);  // [0, 1)
    float r = sqrtf(-2.0f * logf(u1)) * std;
    float s, c;
    sincospif(2.0f * u2, &s, &c);
    return make_float2(r * c, r * s);
}

extern "C" __global__ void fill_normal_bf16(__nv_bfloat16* out, unsigned long long n, unsigned long long key, float std) {
    for (unsigned long long j = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; 2 * j < n;
         j += (unsigned long long)gridDim.x * blockDim.x) {
        float2 v = normal_pair(key, j, std);
        out[2 * j] = __float2bfloat16_rn(v.x);
        if (2 * j + 1 < n) out[2 * j + 1] = __float2bfloat16_rn(v.y);
    }
}

// The same values as fill_normal_bf16 (rounded through bf16), stored as f32 (vectors).
extern "C" __global__ void fill_normal_f32(float* out, unsigned long long n, unsigned long long key, float std) {
    for (unsigned long long j = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; 2 * j < n;
         j += (unsigned long long)gridDim.x * blockDim.x) {
        float2 v = normal_pair(key, j, std);
        out[2 * j] = __bfloat162float(__float2bfloat16_rn(v.x));
        if (2 * j + 1 < n) out[2 * j + 1] = __bfloat162float(__float2bfloat16_rn(v.y));
    }
}
