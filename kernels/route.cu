// Fused top-k routing, one launch per layer: router logits (f32) -> the chosen experts and their
// combine weights, for every variant of switchyard_experts::route:
//   score   0 = softmax, 1 = sigmoid
//   method  0 = greedy top-k, 1 = group-limited greedy (group score = max), 2 = noaux_tc
//           (selection = score + correction bias, group score = sum of the two best)
//   mask    0 = dropped groups' experts compete with 0.0 (transformers), 1 = excluded
//   normalize: divide by (sum + eps); then multiply by `scale` (1 when no scaling applies).
// One warp per token; experts of a token in descending selection score, ties to the lower index
// (the reference's order), so results compare exactly. A lane holds the scores of experts lane,
// lane + 32, ... in registers (VPL of them: 8 for up to 256 experts, 32 for up to 1024), so each
// of the top_k (<= 32) rounds is a register scan and one warp argmax, with no shared memory.

#define INFINITY __int_as_float(0x7f800000)
#define ROUTE_WARPS 4

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

// Argmax over the warp, ties to the lower index, carrying the winner's weight along.
__device__ __forceinline__ void warp_argmax(float& v, int& i, float& w) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, off);
        const int oi = __shfl_xor_sync(0xffffffffu, i, off);
        const float ow = __shfl_xor_sync(0xffffffffu, w, off);
        if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; w = ow; }
    }
}

// The routing variant, as the kernels take it.
struct RouteArgs {
    int n_experts, top_k, score_fn, method, n_group, topk_group, group_mask, normalize;
    float eps, scale;
};

// Routes one token with the calling warp: `x` its n_experts logits; writes top_k experts to
// `eo` (and `picks`, when not null) and their weights to `wo`.
template <int VPL>
__device__ __forceinline__ void route_token(const float* __restrict__ x, const float* __restrict__ bias,
                                            const RouteArgs& a, int* __restrict__ eo,
                                            float* __restrict__ wo, int* picks) {
    const int lane = threadIdx.x & 31, n = a.n_experts;
    float score[VPL], sel[VPL];
    unsigned used = 0;  // bit i: expert 32 i + lane chosen, excluded or absent
#pragma unroll
    for (int i = 0; i < VPL; ++i) {
        const int e = 32 * i + lane;
        score[i] = e < n ? x[e] : -INFINITY;
        if (e >= n) used |= 1u << i;
    }
    if (a.score_fn == 0) {
        float m = -INFINITY, s = 0.0f;
#pragma unroll
        for (int i = 0; i < VPL; ++i) m = fmaxf(m, score[i]);
        m = warp_max(m);
#pragma unroll
        for (int i = 0; i < VPL; ++i) {
            if (32 * i + lane < n) {
                score[i] = expf(score[i] - m);
                s += score[i];
            }
        }
        s = warp_sum(s);
#pragma unroll
        for (int i = 0; i < VPL; ++i) score[i] = score[i] / s;
    } else {
#pragma unroll
        for (int i = 0; i < VPL; ++i) score[i] = 1.0f / (1.0f + expf(-score[i]));
    }
#pragma unroll
    for (int i = 0; i < VPL; ++i) {
        const int e = 32 * i + lane;
        sel[i] = score[i];
        if (a.method == 2 && bias && e < n) sel[i] += bias[e];
    }

    if (a.method != 0) {
        // Group scores (lane g holds group g's), the topk_group best groups kept, the rest masked.
        const int per = n / a.n_group;
        float gscore = -INFINITY;
        for (int g = 0; g < a.n_group; ++g) {
            float best = -INFINITY, second = -INFINITY;
#pragma unroll
            for (int i = 0; i < VPL; ++i) {
                const int e = 32 * i + lane;
                if (e < n && e / per == g) {
                    const float v = sel[i];
                    if (v > best) { second = best; best = v; }
                    else if (v > second) { second = v; }
                }
            }
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) {
                const float ob = __shfl_xor_sync(0xffffffffu, best, off);
                const float os = __shfl_xor_sync(0xffffffffu, second, off);
                second = fmaxf(fminf(best, ob), fmaxf(second, os));
                best = fmaxf(best, ob);
            }
            if (lane == g) gscore = a.method == 1 ? best : best + second;
        }
        unsigned keep = 0;
        for (int r = 0; r < a.topk_group; ++r) {
            float v = -INFINITY, unused = 0.0f;
            int g = 0x7fffffff;
            if (lane < a.n_group && !((keep >> lane) & 1u)) { v = gscore; g = lane; }
            warp_argmax(v, g, unused);
            if (g < 32) keep |= 1u << g;
        }
#pragma unroll
        for (int i = 0; i < VPL; ++i) {
            const int e = 32 * i + lane;
            if (e < n && !((keep >> (e / per)) & 1u)) {
                if (a.group_mask == 0) sel[i] = 0.0f; else used |= 1u << i;
            }
        }
    }

    // Top-k by repeated warp argmax; lane j keeps pick j.
    float w_sum = 0.0f, my_w = 0.0f;
    int my_e = 0;
    for (int j = 0; j < a.top_k; ++j) {
        float v = -INFINITY, w = 0.0f;
        int idx = 0x7fffffff;
#pragma unroll
        for (int i = 0; i < VPL; ++i) {
            const int e = 32 * i + lane;
            if (!((used >> i) & 1u) && (sel[i] > v || (sel[i] == v && e < idx))) {
                v = sel[i];
                idx = e;
                w = a.method == 1 ? sel[i] : score[i];
            }
        }
        warp_argmax(v, idx, w);
        if (lane == (idx & 31)) used |= 1u << ((idx >> 5) & 31);
        if (lane == j) { my_e = idx; my_w = w; }
        w_sum += w;
    }
    if (lane < a.top_k) {
        float w = my_w;
        if (a.normalize) w = w / (w_sum + a.eps);
        eo[lane] = my_e;
        wo[lane] = w * a.scale;
        if (picks) picks[lane] = my_e;
    }
}

#define ROUTE_PARAMS                                                                               \
    const float *__restrict__ logits, const float *__restrict__ bias, int *__restrict__ experts_out, \
        float *__restrict__ weights_out, int n_tokens, RouteArgs a

template <int VPL>
__device__ __forceinline__ void route_rows(ROUTE_PARAMS) {
    wait_for_previous_grid();  // the router logits
    allow_next_grid();
    const int t = blockIdx.x * ROUTE_WARPS + (threadIdx.x >> 5);
    if (t >= n_tokens) return;
    route_token<VPL>(logits + (size_t)t * a.n_experts, bias, a, experts_out + (size_t)t * a.top_k,
                     weights_out + (size_t)t * a.top_k, nullptr);
}

// ROUTE_WARPS tokens a block; up to 256 experts, or up to 1024.
extern "C" __global__ void __launch_bounds__(ROUTE_WARPS * 32) topk_route_256(ROUTE_PARAMS) {
    route_rows<8>(logits, bias, experts_out, weights_out, n_tokens, a);
}
extern "C" __global__ void __launch_bounds__(ROUTE_WARPS * 32) topk_route_1024(ROUTE_PARAMS) {
    route_rows<32>(logits, bias, experts_out, weights_out, n_tokens, a);
}
