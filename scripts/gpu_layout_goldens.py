"""Every golden fixture under --ep 2 / --tp 2 / --pp 2 with `--device cuda`: on a machine with two
GPUs one rank runs on each and the collectives go over NCCL. Greedy tokens of the first two golden
prompts must equal the transformers golden up to the first step whose margin is under SMALL (as
tests/common decisive_prefix). Run from the repository root:

    python3 scripts/gpu_layout_goldens.py 0.05 target/release/switchyard
"""
import json, subprocess, sys, time
SMALL = float(sys.argv[1]); B = sys.argv[2]
fixtures = ["llama_tied", "llama_bias_sharded", "mistral_window", "mixtral", "qwen2_moe", "qwen3_moe",
            "deepseek_v2", "deepseek_v3", "deepseek_v3_yarn"]
layouts = [["--ep", "2"], ["--tp", "2"], ["--pp", "2"]]
bad = 0; runs = 0
for f in fixtures:
    g = json.load(open(f"tests/fixtures/{f}/golden.json"))
    for lay in layouts:
        for i, (p, want) in enumerate(zip(g["prompts"][:2], g["greedy"][:2])):
            n = next((k for k, m in enumerate(want["margins"]) if m < SMALL), len(want["tokens"]))
            args = [B, "generate", "--model", f"tests/fixtures/{f}", "--tokens", ",".join(map(str, p)),
                    "--max-tokens", str(len(want["tokens"])), "--temperature", "0", "--ignore-eos", "--json",
                    "--device", "cuda"] + lay
            t0 = time.time()
            r = subprocess.run(args, capture_output=True, text=True, timeout=120)
            runs += 1
            if r.returncode != 0:
                bad += 1; print(f"FAIL {f} {' '.join(lay)} prompt {i}: exit {r.returncode}: {r.stderr.strip()[-300:]}"); continue
            got = json.loads(r.stdout)["tokens"]
            ok = got[:n] == want["tokens"][:n]
            bad += not ok
            print(f"{'ok  ' if ok else 'DIFF'} {f:18} {' '.join(lay):24} prompt {i}: {n} decisive tokens equal the golden ({time.time()-t0:.1f} s)" if ok else
                  f"DIFF {f} {' '.join(lay)} prompt {i}: got {got[:n]} want {want['tokens'][:n]}")
print(f"{runs - bad}/{runs} runs equal the golden up to the first small-margin step")
sys.exit(1 if bad else 0)
