"""Load test on loopback: 200 concurrent streaming clients (openai's AsyncOpenAI) against a real
`switchyard serve`, a fifth of them hanging up mid-stream. Asserts: no 5xx and no error at all
for the clients that stay, every finished greedy answer equals the same request served alone,
the hung-up requests are counted as cancelled, and once idle /metrics shows no KV block used
and nothing running or waiting. Bounded: one wave of --clients requests, --timeout seconds.

    python3 tests/python/test_load.py [--bin ...] [--model DIR] [--clients 200] [--max-tokens 16]
"""

import asyncio
import os
import shlex
import sys
import time

import openai
from openai import AsyncOpenAI, OpenAI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Server, check, eq, get_text, metric, parse_args, run_tests, wait_idle  # noqa: E402


def extra(p):
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--timeout", type=float, default=240.0, help="seconds the whole wave may take")
    p.add_argument("--expect-preemption", action="store_true", help="assert that the wave preempted requests")
    p.add_argument("--serve-flags", default="", help="extra `switchyard serve` flags, e.g. \"--kv-blocks 48 --ep 2\"")


ARGS = parse_args(__doc__, extra)
WORDS = ["king", "lord", "love", "night", "sword", "crown", "heart", "death", "friend", "honour", "gold", "France", "Rome"]
# Distinct requests, each asked by several clients: completions and chats, text and token ids.
REQUESTS = (
    [("completion", {"prompt": f"The {w} of"}) for w in WORDS]
    + [("completion", {"prompt": [0, 45 + i, 263, 453]}) for i in range(4)]
    + [("chat", {"messages": [{"role": "user", "content": f"Where is the {w}?"}]}) for w in WORDS[:8]]
)


def create(client, kind, body, **kw):
    if kind == "chat":
        return client.chat.completions.create(model=MODEL, messages=body["messages"], **kw)
    return client.completions.create(model=MODEL, prompt=body["prompt"], **kw)


def text_of(kind, choice):
    return choice.message.content if kind == "chat" else choice.text


def delta_of(kind, choice):
    return (choice.delta.content or "") if kind == "chat" else choice.text


async def client_task(client, i, stats):
    """Client i: streams request i % len(REQUESTS); every fifth one hangs up after 3 chunks."""
    kind, body = REQUESTS[i % len(REQUESTS)]
    leaver = i % 5 == 4
    kw = dict(temperature=0, stream=True, max_tokens=ARGS.max_tokens)
    if leaver:
        # Long enough that it is surely still generating when the client goes away.
        kw.update(max_tokens=400, extra_body={"ignore_eos": True})
    start = time.perf_counter()
    try:
        stream = await create(client, kind, body, **kw)
        text, chunks, finish = "", 0, None
        async for chunk in stream:
            chunks += 1
            for c in chunk.choices:
                text += delta_of(kind, c)
                finish = c.finish_reason or finish
            if leaver and chunks == 3:
                await stream.close()
                stats["left"] += 1
                return
        stats["latency"].append(time.perf_counter() - start)
        if finish is None:
            stats["errors"].append(f"client {i}: stream ended without a finish_reason")
        stats["answers"].append((i, text))
    except openai.APIStatusError as e:
        (stats["5xx"] if e.status_code >= 500 else stats["errors"]).append(f"client {i}: HTTP {e.status_code}: {e.message}")
    except Exception as e:  # noqa: BLE001 - a failed client is a test failure, reported below
        stats["errors"].append(f"client {i}: {type(e).__name__}: {e}")


async def wave(base):
    client = AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=ARGS.timeout)
    stats = {"answers": [], "errors": [], "5xx": [], "left": 0, "latency": []}
    try:
        await asyncio.wait_for(asyncio.gather(*(client_task(client, i, stats) for i in range(ARGS.clients))), ARGS.timeout)
    finally:
        await client.close()
    return stats


def test_200_streaming_clients_with_a_fifth_hanging_up():
    sync = OpenAI(base_url=SERVER.v1, api_key="unused", max_retries=0, timeout=120)
    alone = {}
    for j, (kind, body) in enumerate(REQUESTS):
        r = create(sync, kind, body, temperature=0, max_tokens=ARGS.max_tokens)
        alone[j] = text_of(kind, r.choices[0])
    before = get_text(SERVER.base + "/metrics")
    start = time.perf_counter()
    stats = asyncio.run(wave(SERVER.base))
    elapsed = time.perf_counter() - start
    lat = sorted(stats["latency"]) or [0]
    print(f"  {ARGS.clients} clients in {elapsed:.1f}s: {len(stats['answers'])} finished, {stats['left']} hung up, "
          f"{len(stats['errors'])} errors, {len(stats['5xx'])} 5xx; latency p50 {lat[len(lat) // 2]:.2f}s max {lat[-1]:.2f}s")
    eq(stats["5xx"], [], "5xx answers")
    eq(stats["errors"], [], "client errors")
    leavers = sum(1 for i in range(ARGS.clients) if i % 5 == 4)
    eq(stats["left"], leavers, "clients that hung up mid-stream")
    eq(len(stats["answers"]), ARGS.clients - leavers, "finished answers")
    wrong = [(i, t, alone[i % len(REQUESTS)]) for i, t in stats["answers"] if t != alone[i % len(REQUESTS)]]
    eq(wrong[:3], [], f"answers under load that differ from the request served alone ({len(wrong)} in all; (client, got, alone))")
    after = wait_idle(SERVER.base, timeout=60)
    eq(metric(after, "switchyard_kv_blocks_used"), 0.0, "KV blocks used when idle")
    eq(metric(after, "switchyard_requests_running") + metric(after, "switchyard_requests_waiting"), 0.0, "requests running or waiting when idle")

    def delta(outcome):
        key = f'switchyard_requests_total{{outcome="{outcome}"}}'
        return metric(after, key) - metric(before, key)

    eq(delta("failed"), 0.0, "failed requests")
    preempted = metric(after, "switchyard_preemptions_total") - metric(before, "switchyard_preemptions_total")
    print(f"  preemptions: {preempted:.0f}")
    if ARGS.expect_preemption:
        check(preempted > 0, "the wave preempted requests (the cache is meant to be too small)")
    eq(delta("finished"), float(ARGS.clients - leavers), "finished requests")
    eq(delta("cancelled"), float(leavers), "cancelled requests")
    generated = metric(after, "switchyard_generation_tokens_total") - metric(before, "switchyard_generation_tokens_total")
    check(generated < leavers * 400, f"hung-up requests stopped generating ({generated:.0f} tokens in all)")
    # The server still answers after the wave.
    r = create(sync, *REQUESTS[0], temperature=0, max_tokens=ARGS.max_tokens)
    eq(text_of(REQUESTS[0][0], r.choices[0]), alone[0], "an answer after the wave")


def main():
    global SERVER, MODEL
    with Server(ARGS.bin, ARGS.model, *shlex.split(ARGS.serve_flags)) as s:
        SERVER = s
        MODEL = OpenAI(base_url=s.v1, api_key="unused").models.list().data[0].id
        return run_tests([("test_200_streaming_clients_with_a_fifth_hanging_up", test_200_streaming_clients_with_a_fifth_hanging_up)])


if __name__ == "__main__":
    sys.exit(main())
