// Permute (token, expert) pairs into groups by expert, on the device, with no host round-trip:
//   1. expert_histogram: each block counts the pairs of its chunk per expert.
//   2. expert_offsets: one block turns the chunk counts into per-expert offsets (exclusive prefix
//      sum), each chunk's first position inside every expert, and the GEMM tile offsets
//      (ceil(count / bm) tiles per expert) that the grouped GEMM maps its blocks with.
//   3. expert_scatter: one warp per chunk places its pairs in token order (__match_any_sync ranks
//      pairs of the same expert), so the permutation is stable, equal to the CPU counting sort.
// Outputs: order[row] = pair (t * top_k + j), row_of_pair[pair] = row.
// expert_permute_one does all three in one block when the pairs fit one chunk (decode), saving
// two launches where launches are most of the time; route_permute_one also routes the tokens
// first (kernels/route.cu is compiled before this file), one launch for both.

#define CHUNK 256

extern "C" __global__ void __launch_bounds__(256) expert_histogram(
    const int* __restrict__ experts, int n_pairs, int n_experts, int* __restrict__ chunk_counts) {
    extern __shared__ int hist[];
    for (int e = threadIdx.x; e < n_experts; e += blockDim.x) hist[e] = 0;
    __syncthreads();
    int p = blockIdx.x * CHUNK + threadIdx.x;
    if (p < n_pairs) atomicAdd(&hist[experts[p]], 1);
    __syncthreads();
    for (int e = threadIdx.x; e < n_experts; e += blockDim.x)
        chunk_counts[(size_t)blockIdx.x * n_experts + e] = hist[e];
}

// Inclusive scan of v over the block's 1024 threads (thread e holds v for expert e): by
// shuffles inside each warp, then over the 32 warp totals; three barriers instead of the twenty
// of a shared-memory Hillis-Steele scan, which at one token was most of this kernel's time.
__device__ __forceinline__ int block_scan_1024(int v, int* s_warp) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, v, off);
        if (lane >= off) v += y;
    }
    if (lane == 31) s_warp[warp] = v;
    __syncthreads();
    if (warp == 0) {
        int w = s_warp[lane];
#pragma unroll
        for (int off = 1; off < 32; off <<= 1) {
            const int y = __shfl_up_sync(0xffffffffu, w, off);
            if (lane >= off) w += y;
        }
        s_warp[lane] = w;
    }
    __syncthreads();
    return v + (warp > 0 ? s_warp[warp - 1] : 0);
}

// One block of 1024 threads; n_experts <= 1024.
extern "C" __global__ void __launch_bounds__(1024) expert_offsets(
    int* __restrict__ chunk_counts, int n_chunks, int n_experts, int bm, int* __restrict__ offsets,
    int* __restrict__ tile_offsets) {
    __shared__ int s_warp[2][32];
    const int e = threadIdx.x;
    int total = 0;
    if (e < n_experts) {
#pragma unroll 8
        for (int c = 0; c < n_chunks; ++c) {
            int v = chunk_counts[(size_t)c * n_experts + e];
            chunk_counts[(size_t)c * n_experts + e] = total;  // position inside the expert
            total += v;
        }
    }
    const int cnt = block_scan_1024(total, s_warp[0]);
    const int tiles = block_scan_1024((total + bm - 1) / bm, s_warp[1]);
    if (e < n_experts) {
        int start = cnt - total;
        offsets[e + 1] = cnt;
        tile_offsets[e + 1] = tiles;
        if (e == 0) { offsets[0] = 0; tile_offsets[0] = 0; }
        for (int c = 0; c < n_chunks; ++c) chunk_counts[(size_t)c * n_experts + e] += start;
    }
}

// One warp per chunk.
extern "C" __global__ void __launch_bounds__(32) expert_scatter(
    const int* __restrict__ experts, int n_pairs, int n_experts, const int* __restrict__ chunk_base,
    int* __restrict__ order, int* __restrict__ row_of_pair) {
    extern __shared__ int base[];
    const int lane = threadIdx.x;
    for (int e = lane; e < n_experts; e += 32) base[e] = chunk_base[(size_t)blockIdx.x * n_experts + e];
    __syncwarp();
    const unsigned lt = (1u << lane) - 1u;
    for (int i = 0; i < CHUNK; i += 32) {
        int p = blockIdx.x * CHUNK + i + lane;
        int e = p < n_pairs ? experts[p] : -1 - lane;  // invalid lanes match nobody
        unsigned peers = __match_any_sync(0xffffffffu, e);
        int pos = 0;
        if (p < n_pairs) pos = base[e] + __popc(peers & lt);
        __syncwarp();
        if (p < n_pairs) {
            order[pos] = p;
            row_of_pair[p] = pos;
            if (lane == 31 - __clz(peers)) base[e] += __popc(peers);
        }
        __syncwarp();
    }
}

// The three steps above for n_pairs <= CHUNK by one block of 1024 threads (n_experts <= 1024).
__device__ __forceinline__ void permute_block(const int* experts, int n_pairs, int n_experts, int bm,
                                              int* __restrict__ offsets, int* __restrict__ tile_offsets,
                                              int* __restrict__ order, int* __restrict__ row_of_pair) {
    __shared__ int s_cnt[1024];
    __shared__ int base[1024];
    __shared__ int s_warp[2][32];
    const int e = threadIdx.x;
    s_cnt[e] = 0;
    __syncthreads();
    if (e < n_pairs) atomicAdd(&s_cnt[experts[e]], 1);
    __syncthreads();
    const int total = s_cnt[e];  // 0 past n_experts
    const int cnt = block_scan_1024(total, s_warp[0]);
    const int tiles = block_scan_1024((total + bm - 1) / bm, s_warp[1]);
    if (e < n_experts) {
        offsets[e + 1] = cnt;
        tile_offsets[e + 1] = tiles;
        base[e] = cnt - total;
        if (e == 0) { offsets[0] = 0; tile_offsets[0] = 0; }
    }
    __syncthreads();
    if (e >= 32) return;
    const int lane = e;
    const unsigned lt = (1u << lane) - 1u;
    for (int i = 0; i < n_pairs; i += 32) {
        int p = i + lane;
        int ex = p < n_pairs ? experts[p] : -1 - lane;  // invalid lanes match nobody
        unsigned peers = __match_any_sync(0xffffffffu, ex);
        int pos = 0;
        if (p < n_pairs) pos = base[ex] + __popc(peers & lt);
        __syncwarp();
        if (p < n_pairs) {
            order[pos] = p;
            row_of_pair[p] = pos;
            if (lane == 31 - __clz(peers)) base[ex] += __popc(peers);
        }
        __syncwarp();
    }
}

extern "C" __global__ void __launch_bounds__(1024) expert_permute_one(
    const int* __restrict__ experts, int n_pairs, int n_experts, int bm, int* __restrict__ offsets,
    int* __restrict__ tile_offsets, int* __restrict__ order, int* __restrict__ row_of_pair) {
    permute_block(experts, n_pairs, n_experts, bm, offsets, tile_offsets, order, row_of_pair);
}

// Decode batches in one launch: warp w routes token w (n_tokens <= 32, n_experts <= 256,
// n_tokens * top_k <= CHUNK), the picks also go to shared memory, and the block sorts them.
extern "C" __global__ void __launch_bounds__(1024) route_permute_one(
    ROUTE_PARAMS, int bm, int* __restrict__ offsets, int* __restrict__ tile_offsets,
    int* __restrict__ order, int* __restrict__ row_of_pair) {
    __shared__ int s_picks[CHUNK];
    wait_for_previous_grid();  // the router logits
    allow_next_grid();         // gate/up's blocks may take the other SMs and wait there
    const int t = threadIdx.x >> 5;
    if (t < n_tokens)
        route_token<8>(logits + (size_t)t * a.n_experts, bias, a, experts_out + (size_t)t * a.top_k,
                       weights_out + (size_t)t * a.top_k, s_picks + t * a.top_k);
    __syncthreads();
    permute_block(s_picks, n_tokens * a.top_k, a.n_experts, bm, offsets, tile_offsets, order, row_of_pair);
}
