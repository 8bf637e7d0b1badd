// Fused top-k routing, one launch per layer: router logits (f32) -> the chosen experts and their
// combine weights, for every variant of switchyard_experts::route:
//   score   0 = softmax, 1 = sigmoid
//   method  0 = greedy top-k, 1 = group-limited greedy (group score = max), 2 = noaux_tc
//           (selection = score + correction bias, group score = sum of the two best)
//   mask    0 = dropped groups' experts compete with 0.0 (transformers), 1 = excluded
//   normalize: divide by (sum + eps); then multiply by `scale` (1 when no scaling applies).
// One warp per token, up to 1024 experts; experts of a token in descending selection score, ties
// to the lower index (the reference's order), so results compare exactly.

#define MAX_EXPERTS 1024
#define INFINITY __int_as_float(0x7f800000)
#define WARPS 4

__device__ __forceinline__ void warp_argmax(float& v, int& i) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, v, off);
        int oi = __shfl_xor_sync(0xffffffffu, i, off);
        if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
    }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

extern "C" __global__ void __launch_bounds__(WARPS * 32) topk_route(
    const float* __restrict__ logits, const float* __restrict__ bias, int* __restrict__ experts_out,
    float* __restrict__ weights_out, int n_tokens, int n_experts, int top_k, int score_fn, int method,
    int n_group, int topk_group, int group_mask, int normalize, float eps, float scale) {
    __shared__ float s_score[WARPS][MAX_EXPERTS];  // unbiased scores
    __shared__ float s_sel[WARPS][MAX_EXPERTS];    // selection values
    __shared__ unsigned char s_used[WARPS][MAX_EXPERTS];
    __shared__ float s_group[WARPS][32];
    __shared__ unsigned char s_keep[WARPS][32];

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int t = blockIdx.x * WARPS + warp;
    if (t >= n_tokens) return;
    const float* x = logits + (size_t)t * n_experts;
    float* score = s_score[warp];
    float* sel = s_sel[warp];
    unsigned char* used = s_used[warp];

    if (score_fn == 0) {
        float m = -INFINITY;
        for (int e = lane; e < n_experts; e += 32) m = fmaxf(m, x[e]);
        m = warp_max(m);
        float s = 0.0f;
        for (int e = lane; e < n_experts; e += 32) {
            float v = expf(x[e] - m);
            score[e] = v;
            s += v;
        }
        s = warp_sum(s);
        for (int e = lane; e < n_experts; e += 32) score[e] = score[e] / s;
    } else {
        for (int e = lane; e < n_experts; e += 32) score[e] = 1.0f / (1.0f + expf(-x[e]));
    }
    for (int e = lane; e < n_experts; e += 32) {
        float v = score[e];
        if (method == 2 && bias) v += bias[e];
        sel[e] = v;
        used[e] = 0;
    }
    __syncwarp();

    if (method != 0) {
        const int per = n_experts / n_group;
        if (lane < n_group) {
            const float* g = sel + lane * per;
            float best = -INFINITY, second = -INFINITY;
            for (int i = 0; i < per; ++i) {
                float v = g[i];
                if (v > best) { second = best; best = v; }
                else if (v > second) { second = v; }
            }
            s_group[warp][lane] = method == 1 ? best : best + second;
            s_keep[warp][lane] = 0;
        }
        __syncwarp();
        for (int r = 0; r < topk_group; ++r) {
            float v = -INFINITY;
            int i = 0x7fffffff;
            if (lane < n_group && !s_keep[warp][lane]) { v = s_group[warp][lane]; i = lane; }
            warp_argmax(v, i);
            if (lane == 0) s_keep[warp][i] = 1;
            __syncwarp();
        }
        for (int e = lane; e < n_experts; e += 32) {
            if (!s_keep[warp][e / per]) {
                if (group_mask == 0) sel[e] = 0.0f; else used[e] = 1;
            }
        }
        __syncwarp();
    }

    // Top-k by repeated warp argmax; lane 0 keeps the chosen list in registers of its own.
    float w_sum = 0.0f;
    int* eo = experts_out + (size_t)t * top_k;
    float* wo = weights_out + (size_t)t * top_k;
    for (int j = 0; j < top_k; ++j) {
        float v = -INFINITY;
        int i = 0x7fffffff;
        for (int e = lane; e < n_experts; e += 32) {
            if (!used[e] && (sel[e] > v || (sel[e] == v && e < i))) { v = sel[e]; i = e; }
        }
        warp_argmax(v, i);
        if (lane == 0) {
            used[i] = 1;
            float w = method == 1 ? sel[i] : score[i];
            eo[j] = i;
            wo[j] = w;
            w_sum += w;
        }
        __syncwarp();
    }
    if (lane == 0) {
        float denom = w_sum + eps;
        for (int j = 0; j < top_k; ++j) {
            float w = wo[j];
            if (normalize) w = w / denom;
            wo[j] = w * scale;
        }
    }
}
