// Helpers both grouped-GEMM programs share (kernels/grouped_gemm.cu and the Hopper ones; each
// source is compiled after this file, see Kernel::source).

__device__ __forceinline__ float silu(float g) { return g / (1.0f + __expf(-g)); }

// Finds the expert whose tiles contain `tile` (tile_offsets has n_experts + 1 entries).
__device__ __forceinline__ int expert_of_tile(const int* tile_offsets, int n_experts, int tile) {
    int lo = 0, hi = n_experts;  // invariant: tile_offsets[lo] <= tile < tile_offsets[hi]
    while (hi - lo > 1) {
        int mid = (lo + hi) >> 1;
        if (tile_offsets[mid] <= tile) lo = mid; else hi = mid;
    }
    return lo;
}
