// Asynchronous 16-byte copies from global to shared memory (cp.async, sm_80+): the mma.sync
// grouped GEMM's tiles (kernels/grouped_gemm.cu) and MLA decode's latent rows (kernels/mla.cu).

// 16 bytes from `src` to the shared address `dst`, or 16 zero bytes when !valid (src is then
// not read but must still be a mapped address).
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, bool valid) {
    int size = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(size));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }
