// Programmatic dependent launch (sm_90 and later), for the kernels the host launches with
// `overlap::launch` (src/backend/cuda/overlap.rs): such a kernel may start while the previous
// kernel of the stream is still running, so it must call wait_for_previous_grid() before it
// reads anything earlier kernels wrote (or writes anything they read), and calls
// allow_next_grid() once it has, so the next kernel can be launched onto the SMs this one leaves.
// Both are no-ops on older GPUs and when the kernel was launched the ordinary way.

__device__ __forceinline__ void wait_for_previous_grid() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void allow_next_grid() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// For a kernel that touches no memory before the previous grid ends: launch overlap only.
__device__ __forceinline__ void after_previous_grid() {
    wait_for_previous_grid();
    allow_next_grid();
}
