"""PyTorch peer of benches/moe_gpu.rs: the same MoE layer in plain PyTorch on the same GPU.

Router GEMM, softmax + top-k (renormalised), stable sort of the (token, expert) pairs by expert,
torch._grouped_mm for gate/up and for down, SiLU*up, router-weight scaling and an index_add_
(scatter-add) combine; bf16 weights and activations. Timed like the Rust bench: 3 warm-ups, median
of 20 runs, each between its own pair of CUDA events, at the Mixtral-8x7B and DeepSeek-V3 shapes
for T in {1, 8, 64, 256, 1024, 4096, 16384}.

    python3 benches/moe_peer.py [--quick] [--json peer.json] [--ours ours.json]

With --ours (the JSON lines of `moe_gpu --json`) it prints the merged markdown table with the
ratio column (peer ms / switchyard ms: above 1 means switchyard is faster).
"""
import argparse
import json

import torch

TOKENS = [1, 8, 64, 256, 1024, 4096, 16384]
SHAPES = [("Mixtral-8x7B", 4096, 14336, 8, 2), ("DeepSeek-V3", 7168, 2048, 256, 8)]


def moe_layer(x, wr, w_gu_t, w_d_t, top_k, inter):
    logits = (x @ wr.t()).float()
    probs = torch.softmax(logits, dim=-1)
    topw, topi = torch.topk(probs, top_k, dim=-1)
    topw = topw / topw.sum(dim=-1, keepdim=True)
    flat = topi.flatten()
    order = torch.argsort(flat, stable=True)
    tok = order // top_k
    counts = torch.bincount(flat, minlength=w_gu_t.shape[0])
    offs = torch.cumsum(counts, 0).to(torch.int32)
    xs = x[tok]
    gu = torch._grouped_mm(xs, w_gu_t, offs=offs)
    act = torch.nn.functional.silu(gu[:, :inter]) * gu[:, inter:]
    y = torch._grouped_mm(act, w_d_t, offs=offs)
    y = y * topw.flatten()[order].unsqueeze(1).to(y.dtype)
    out = torch.zeros_like(x)
    out.index_add_(0, tok, y)
    return out


def time_ms(fn, warmup=3, reps=20):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--ours")
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    rows = []
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print("| shape | T | peer ms | peer TFLOP/s |")
    print("|---|---|---|---|")
    for name, h, inter, e, k in SHAPES:
        t_max = 1024 if args.quick else TOKENS[-1]
        w_gu = (torch.rand(e, 2 * inter, h, device=dev, dtype=torch.bfloat16) * 2 - 1) / h ** 0.5
        w_d = (torch.rand(e, h, inter, device=dev, dtype=torch.bfloat16) * 2 - 1) / inter ** 0.5
        wr = (torch.rand(e, h, device=dev, dtype=torch.bfloat16) * 2 - 1) / h ** 0.5
        x_all = torch.rand(t_max, h, device=dev, dtype=torch.bfloat16) * 2 - 1
        w_gu_t, w_d_t = w_gu.transpose(-2, -1), w_d.transpose(-2, -1)
        for t in [t for t in TOKENS if t <= t_max]:
            x = x_all[:t].contiguous()
            ms = time_ms(lambda: moe_layer(x, wr, w_gu_t, w_d_t, k, inter))
            flops = 2.0 * (t * k * 3 * h * inter + t * h * e)
            rows.append({"shape": name, "tokens": t, "ms": ms, "tflops": flops / (ms * 1e-3) / 1e12})
            print(f"| {name} | {t} | {ms:.3f} | {rows[-1]['tflops']:.1f} |", flush=True)
        del w_gu, w_d, wr, x_all, w_gu_t, w_d_t
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    if args.ours:
        ours = {(r["shape"], r["tokens"]): r for r in map(json.loads, open(args.ours))}
        print()
        first = next(iter(ours.values()), None)
        if first:
            print(f"ceilings (sustained, burst): copy {first['copy_tbps']:.2f}, {first['burst_copy_tbps']:.2f} TB/s; "
                  f"cuBLAS bf16 GEMM {first['gemm_tflops']:.0f}, {first['burst_gemm_tflops']:.0f} TFLOP/s")
        print("| shape | T | path | switchyard ms | TFLOP/s | % of floor | % of burst floor | peer ms | peer % of floor | peer / switchyard |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            o = ours.get((r["shape"], r["tokens"]))
            if not o:
                continue
            print(f"| {r['shape']} | {r['tokens']} | {o.get('path', '')} | {o['ms']:.3f} | {o['tflops']:.1f} | {100 * o['floor_ms'] / o['ms']:.0f} | "
                  f"{100 * o['burst_floor_ms'] / o['ms']:.0f} | {r['ms']:.3f} | {100 * o['floor_ms'] / r['ms']:.0f} | {r['ms'] / o['ms']:.2f} |")


if __name__ == "__main__":
    main()
