"""/metrics of a real `switchyard serve` after some traffic: every metric the design names is
there, `promtool check metrics` accepts the exposition, and one request moves the expert
counters by exactly (prompt tokens + generated tokens - 1) x top_k per MoE layer.

    python3 tests/python/test_metrics.py [--bin ...] [--model DIR] [--promtool promtool]
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Server, check, eq, get_json, get_text, metric, metric_lines, parse_args, post_json, run_tests, tests_of, wait_idle  # noqa: E402

ARGS = parse_args(__doc__, lambda p: p.add_argument("--promtool", default=shutil.which("promtool") or "promtool"))
SERVER = None

NAMES = [
    "switchyard_expert_tokens_total",
    "switchyard_expert_replicas",
    "switchyard_rank_tokens_total",
    "switchyard_expert_load_imbalance",
    "switchyard_alltoall_bytes_total",
    "switchyard_requests_total",
    "switchyard_prompt_tokens_total",
    "switchyard_generation_tokens_total",
    "switchyard_time_to_first_token_seconds_bucket",
    "switchyard_time_per_output_token_seconds_bucket",
    "switchyard_requests_running",
    "switchyard_requests_waiting",
    "switchyard_kv_blocks_used",
    "switchyard_kv_blocks_capacity",
    "switchyard_kv_blocks_cached",
    "switchyard_prefix_cache_queries_total",
    "switchyard_prefix_cache_hits_total",
    "switchyard_engine_steps_total",
    "switchyard_preemptions_total",
]


def traffic():
    v1 = SERVER.v1
    post_json(v1 + "/completions", {"prompt": "The quick brown fox", "max_tokens": 8, "temperature": 0})
    post_json(v1 + "/completions", {"prompt": ["To be", "or not"], "max_tokens": 8, "n": 2})
    post_json(v1 + "/chat/completions", {"messages": [{"role": "user", "content": "Hail!"}], "max_tokens": 8})
    raw = get_text_post(v1 + "/completions", {"prompt": "My lord", "max_tokens": 8, "stream": True})
    check(raw.rstrip().endswith("data: [DONE]"), "the stream ends with [DONE]")
    try:
        post_json(v1 + "/completions", {"prompt": "x", "temperature": -1})
    except urllib.error.HTTPError as e:
        eq(e.code, 400, "status of a bad request")
    wait_idle(SERVER.base)


def get_text_post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read().decode()


def test_every_metric_is_exported():
    traffic()
    m = get_text(SERVER.base + "/metrics")
    missing = [n for n in NAMES if not metric_lines(m, n)]
    eq(missing, [], "missing metrics")
    eq(metric(m, 'switchyard_requests_total{outcome="rejected"}'), 1.0, "rejected requests")
    check(metric(m, 'switchyard_requests_total{outcome="finished"}') >= 4, "finished requests")
    check(metric(m, "switchyard_time_to_first_token_seconds_count") >= 6, "a TTFT per sequence")
    eq(metric(m, "switchyard_kv_blocks_used"), 0.0, "KV blocks used when idle")
    check(metric(m, "switchyard_kv_blocks_capacity") > 0, "KV capacity")


def test_promtool_check_metrics_passes():
    traffic()
    m = get_text(SERVER.base + "/metrics")
    out = subprocess.run([ARGS.promtool, "check", "metrics"], input=m, capture_output=True, text=True, timeout=60)
    eq((out.returncode, out.stdout + out.stderr), (0, ""), "promtool check metrics (exit code, findings)")


def test_expert_counters_grow_by_routed_tokens_times_top_k():
    cfg = json.load(open(os.path.join(ARGS.model, "config.json")))
    top_k = cfg.get("num_experts_per_tok")
    check(top_k, "config.json names num_experts_per_tok (a MoE model)")
    wait_idle(SERVER.base)
    before = metric_lines(get_text(SERVER.base + "/metrics"), "switchyard_expert_tokens_total")
    prompt, new = [0, 45, 463, 329, 574, 263, 453], 9
    r = post_json(SERVER.v1 + "/completions", {"prompt": prompt, "max_tokens": new, "temperature": 0, "ignore_eos": True})
    eq(r["usage"]["completion_tokens"], new, "generated tokens")
    wait_idle(SERVER.base)
    after = metric_lines(get_text(SERVER.base + "/metrics"), "switchyard_expert_tokens_total")
    per_layer = {}
    for labels, v in after.items():
        layer = labels.split('layer="')[1].split('"')[0]
        per_layer[layer] = per_layer.get(layer, 0) + v - before.get(labels, 0)
    check(per_layer, "per-layer expert counters")
    want = (len(prompt) + new - 1) * top_k
    eq(per_layer, {layer: want for layer in per_layer}, f"expert tokens per MoE layer for one request ((prompt + generated - 1) x top_k = {want})")


def test_rank_counters_on_an_expert_parallel_layout():
    with Server(ARGS.bin, ARGS.model, "--ep", "2") as s:
        before = get_text(s.base + "/metrics")
        post_json(s.v1 + "/completions", {"prompt": [0, 45, 463, 329], "max_tokens": 6, "temperature": 0, "ignore_eos": True})
        wait_idle(s.base)
        after = get_text(s.base + "/metrics")
        ranks = metric_lines(after, "switchyard_rank_tokens_total")
        eq(sorted(ranks), ['{rank="0"}', '{rank="1"}'], "one rank counter per EP rank")
        moved = {k: v - metric_lines(before, "switchyard_rank_tokens_total").get(k, 0) for k, v in ranks.items()}
        experts = sum(metric_lines(after, "switchyard_expert_tokens_total").values()) - sum(metric_lines(before, "switchyard_expert_tokens_total").values())
        check(all(v > 0 for v in moved.values()), f"both ranks computed tokens: {moved}")
        eq(sum(moved.values()), experts, "rank (token, expert) pairs sum to the routed pairs")
        out = subprocess.run([ARGS.promtool, "check", "metrics"], input=after, capture_output=True, text=True, timeout=60)
        eq((out.returncode, out.stdout + out.stderr), (0, ""), "promtool check metrics on the EP layout")


def test_record_routing_writes_the_steps_routing():
    cfg = json.load(open(os.path.join(ARGS.model, "config.json")))
    top_k = cfg["num_experts_per_tok"]
    with tempfile.TemporaryDirectory(prefix="switchyard-trace-") as tmp:
        trace = os.path.join(tmp, "routing.jsonl")
        with Server(ARGS.bin, ARGS.model, "--record-routing", trace) as s:
            prompt, new = [0, 45, 463, 329, 574], 6
            post_json(s.v1 + "/completions", {"prompt": prompt, "max_tokens": new, "temperature": 0, "ignore_eos": True})
            wait_idle(s.base)
            counters = metric_lines(get_text(s.base + "/metrics"), "switchyard_expert_tokens_total")
            moe_layers = get_json(s.base + "/api/expert-load")["load"]["layers"]
        steps = [json.loads(line) for line in open(trace)]
    eq([st["step"] for st in steps], list(range(new)), "one trace line per forward step")
    eq([sum(layer) for layer in steps[0]["layers"]], [len(prompt) * top_k] * len(steps[0]["layers"]), "prefill step routes prompt x top_k per layer")
    check(all(sum(layer) == top_k for st in steps[1:] for layer in st["layers"]), "each decode step routes top_k per layer")
    # Trace lines list the MoE layers only; the counters are labelled with the model's layer index.
    totals = {
        f'{{layer="{layer}",expert="{e}"}}': float(sum(st["layers"][i][e] for st in steps))
        for i, layer in enumerate(moe_layers)
        for e in range(len(steps[0]["layers"][i]))
    }
    eq(totals, counters, "trace totals equal the expert counters")


def main():
    global SERVER
    if not shutil.which(ARGS.promtool) and not os.path.exists(ARGS.promtool):
        print(f"promtool not found ({ARGS.promtool})")
        return 1
    with Server(ARGS.bin, ARGS.model) as s:
        SERVER = s
        return run_tests(tests_of(globals()))


if __name__ == "__main__":
    sys.exit(main())
