"""The official `openai` client against a real `switchyard serve`: completions (text, token ids,
batches), chat (the checkpoint's template), streaming of both, n, seeds, stop strings,
logprobs, cached prompt tokens, logit_bias, refused fields, errors and the API key. Greedy answers must equal `switchyard generate --json`.

    python3 tests/python/test_openai_api.py [--bin target/release/switchyard] [--model DIR]
"""

import json
import os
import sys

import openai
from openai import OpenAI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Server, check, eq, generate, get_json, parse_args, run_tests, tests_of  # noqa: E402

ARGS = parse_args(__doc__)
PROMPTS = ["The quick brown fox", "To be, or not to be", "My lord, the king"]
MAX = 16
SERVER = None
CLIENT = None
MODEL = None
_solo = {}


def solo(prompt=None, tokens=None, max_tokens=MAX):
    """`generate --json` for a prompt, cached."""
    key = (prompt, tuple(tokens) if tokens is not None else None, max_tokens)
    if key not in _solo:
        _solo[key] = generate(ARGS.bin, ARGS.model, prompt=prompt, tokens=tokens, max_tokens=max_tokens)
    return _solo[key]


def finish_of(gen, max_tokens=MAX):
    return "length" if len(gen["tokens"]) >= max_tokens else "stop"


def render_chat(messages):
    """The conversation rendered with tokenizer_config.json's template, as transformers does,
    minus the BOS the tokenizer's post-processor adds again when `generate` encodes it."""
    import jinja2.sandbox

    cfg = json.load(open(os.path.join(ARGS.model, "tokenizer_config.json")))
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    text = env.from_string(cfg["chat_template"]).render(
        messages=messages, add_generation_prompt=True, bos_token=cfg.get("bos_token", ""), eos_token=cfg.get("eos_token", "")
    )
    tok = json.load(open(os.path.join(ARGS.model, "tokenizer.json")))
    post = tok.get("post_processor") or {}
    single = post.get("single") or []
    if post.get("type") == "TemplateProcessing" and single and "SpecialToken" in single[0]:
        lead = post["special_tokens"][single[0]["SpecialToken"]["id"]]["tokens"][0]
        check(text.startswith(lead), f"template output {text!r} does not start with {lead!r}")
        text = text[len(lead):]
    return text


def test_models_lists_the_served_model():
    ids = [m.id for m in CLIENT.models.list().data]
    eq(ids, [MODEL], "model ids")


def test_completion_text_prompt_greedy_equals_generate():
    for p in PROMPTS:
        gen = solo(prompt=p)
        r = CLIENT.completions.create(model=MODEL, prompt=p, max_tokens=MAX, temperature=0)
        eq(r.object, "text_completion", "object")
        eq(len(r.choices), 1, "choices")
        eq(r.choices[0].text, gen["text"], f"greedy text of {p!r}")
        eq(r.choices[0].finish_reason, finish_of(gen), "finish_reason")
        eq(r.usage.completion_tokens, len(gen["tokens"]), "usage.completion_tokens")
        check(r.usage.prompt_tokens > 0, "usage.prompt_tokens > 0")
        eq(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens, "usage.total_tokens")


def test_completion_token_id_prompt_greedy_equals_generate():
    ids = [0] + solo(prompt=PROMPTS[0])["tokens"][:6]
    gen = solo(tokens=ids)
    r = CLIENT.completions.create(model=MODEL, prompt=ids, max_tokens=MAX, temperature=0)
    eq(r.choices[0].text, gen["text"], "greedy text of a token-id prompt")
    eq(r.usage.prompt_tokens, len(ids), "usage.prompt_tokens")
    eq(r.usage.completion_tokens, len(gen["tokens"]), "usage.completion_tokens")


def test_completion_batch_of_texts_and_of_token_ids():
    r = CLIENT.completions.create(model=MODEL, prompt=PROMPTS, max_tokens=MAX, temperature=0)
    eq(sorted(c.index for c in r.choices), list(range(len(PROMPTS))), "choice indices")
    completion = 0
    for c in r.choices:
        gen = solo(prompt=PROMPTS[c.index])
        eq(c.text, gen["text"], f"batch choice {c.index}")
        completion += len(gen["tokens"])
    eq(r.usage.completion_tokens, completion, "batch usage.completion_tokens")
    singles = sum(CLIENT.completions.create(model=MODEL, prompt=p, max_tokens=1).usage.prompt_tokens for p in PROMPTS)
    eq(r.usage.prompt_tokens, singles, "batch usage.prompt_tokens (sum of each prompt's)")

    id_prompts = [[0] + solo(prompt=p)["tokens"][:4] for p in PROMPTS]
    r = CLIENT.completions.create(model=MODEL, prompt=id_prompts, max_tokens=MAX, temperature=0)
    for c in r.choices:
        eq(c.text, solo(tokens=id_prompts[c.index])["text"], f"token-id batch choice {c.index}")
    eq(r.usage.prompt_tokens, sum(map(len, id_prompts)), "token-id batch usage.prompt_tokens")


def test_completion_stream_equals_generate_with_usage():
    for p in PROMPTS:
        gen = solo(prompt=p)
        whole = CLIENT.completions.create(model=MODEL, prompt=p, max_tokens=MAX, temperature=0)
        text, finish, usage, chunks = "", None, None, 0
        for chunk in CLIENT.completions.create(
            model=MODEL, prompt=p, max_tokens=MAX, temperature=0, stream=True, stream_options={"include_usage": True}
        ):
            chunks += 1
            for c in chunk.choices:
                text += c.text
                finish = c.finish_reason or finish
            if chunk.usage is not None:
                usage = chunk.usage
        check(chunks >= 2, f"a stream of {chunks} chunks")
        eq(text, gen["text"], f"streamed text of {p!r}")
        eq(finish, finish_of(gen), "streamed finish_reason")
        check(usage is not None, "the last chunk carries usage (include_usage)")
        eq(usage.model_dump(exclude_none=True), whole.usage.model_dump(exclude_none=True), "streamed usage")


def test_completion_stream_of_a_batch():
    texts = {}
    for chunk in CLIENT.completions.create(model=MODEL, prompt=PROMPTS, max_tokens=MAX, temperature=0, stream=True):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    eq(texts, {i: solo(prompt=p)["text"] for i, p in enumerate(PROMPTS)}, "streamed batch texts")


CHATS = [
    [{"role": "user", "content": "Who art thou?"}],
    [{"role": "system", "content": "Speak as a king."}, {"role": "user", "content": "What news from France?"}],
]


def test_chat_greedy_equals_generate_on_the_template():
    for messages in CHATS:
        gen = solo(prompt=render_chat(messages))
        r = CLIENT.chat.completions.create(model=MODEL, messages=messages, max_tokens=MAX, temperature=0)
        eq(r.object, "chat.completion", "object")
        eq(r.choices[0].message.role, "assistant", "role")
        eq(r.choices[0].message.content, gen["text"], f"chat answer to {messages[-1]['content']!r}")
        eq(r.choices[0].finish_reason, finish_of(gen), "finish_reason")
        eq(r.usage.completion_tokens, len(gen["tokens"]), "usage.completion_tokens")
        eq(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens, "usage.total_tokens")


def test_chat_stream_equals_generate():
    for messages in CHATS:
        gen = solo(prompt=render_chat(messages))
        whole = CLIENT.chat.completions.create(model=MODEL, messages=messages, max_tokens=MAX, temperature=0)
        content, roles, finish, usage = "", [], None, None
        for chunk in CLIENT.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=MAX, temperature=0, stream=True, stream_options={"include_usage": True}
        ):
            eq(chunk.object, "chat.completion.chunk", "chunk object")
            for c in chunk.choices:
                if c.delta.role:
                    roles.append(c.delta.role)
                content += c.delta.content or ""
                finish = c.finish_reason or finish
            if chunk.usage is not None:
                usage = chunk.usage
        eq(roles, ["assistant"], "roles in the stream (the first delta only)")
        eq(content, gen["text"], "streamed chat answer")
        eq(finish, finish_of(gen), "streamed finish_reason")
        eq(usage.model_dump(exclude_none=True), whole.usage.model_dump(exclude_none=True), "streamed chat usage")


def test_n_greedy_choices_are_identical():
    r = CLIENT.completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=MAX, temperature=0, n=3)
    eq([c.index for c in sorted(r.choices, key=lambda c: c.index)], [0, 1, 2], "indices")
    eq({c.text for c in r.choices}, {solo(prompt=PROMPTS[1])["text"]}, "greedy texts of n=3")
    eq(r.usage.completion_tokens, 3 * len(solo(prompt=PROMPTS[1])["tokens"]), "usage counts every choice")


def test_a_repeated_prompt_reports_its_cached_tokens():
    ids = [(t * 37 + 5) % 400 + 3 for t in range(40)]  # 40 token ids: two whole 16-token blocks
    first = CLIENT.completions.create(model=MODEL, prompt=ids, max_tokens=4, temperature=0)
    again = CLIENT.completions.create(model=MODEL, prompt=ids, max_tokens=4, temperature=0)
    eq(again.choices[0].text, first.choices[0].text, "the same answer from cached blocks")
    eq(again.usage.prompt_tokens_details.cached_tokens, 32, "usage.prompt_tokens_details.cached_tokens")


def test_seeded_sampling_is_reproducible():
    def once():
        return CLIENT.completions.create(model=MODEL, prompt=PROMPTS[2], max_tokens=MAX, temperature=1.0, top_p=0.9, seed=1234).choices[0].text

    a, b = once(), once()
    eq(a, b, "two answers with the same seed")


def test_stop_string_cuts_the_answer():
    gen = solo(prompt=PROMPTS[0])["text"]
    words = [w for w in gen.split() if len(w) >= 3]
    check(words, f"the greedy answer {gen!r} has a word to stop at")
    stop = words[len(words) // 2]
    want = gen[: gen.index(stop)]
    r = CLIENT.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=MAX, temperature=0, stop=[stop])
    eq(r.choices[0].text, want, f"answer cut at {stop!r}")
    eq(r.choices[0].finish_reason, "stop", "finish_reason")
    text = "".join(
        c.text for ch in CLIENT.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=MAX, temperature=0, stop=stop, stream=True) for c in ch.choices
    )
    eq(text, want, "streamed answer cut at the stop string")


def test_logprobs_come_back_per_token():
    r = CLIENT.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=8, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    eq(len(lp.tokens), r.usage.completion_tokens, "one logprob per generated token")
    eq("".join(lp.tokens), r.choices[0].text, "logprob tokens spell the text")
    check(all(v <= 0 for v in lp.token_logprobs), "log-probabilities are <= 0")
    check(all(len(t) >= 1 for t in lp.top_logprobs), "top alternatives present")
    r = CLIENT.chat.completions.create(model=MODEL, messages=CHATS[0], max_tokens=8, temperature=0, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    eq(len(content), r.usage.completion_tokens, "chat: one logprob per generated token")
    check(all(len(c.top_logprobs) == 2 for c in content), "chat: two alternatives per token")


def test_logit_bias_bans_the_greedy_token_and_json_mode_is_refused():
    plain = CLIENT.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=1, temperature=0)
    first = solo(prompt=PROMPTS[0])["tokens"][0]
    banned = CLIENT.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=1, temperature=0, logit_bias={str(first): -100})
    check(banned.choices[0].text != plain.choices[0].text, f"token {first} banned: {banned.choices[0].text!r}")
    try:
        CLIENT.chat.completions.create(model=MODEL, messages=CHATS[0], max_tokens=4, response_format={"type": "json_object"})
        raise AssertionError("JSON mode was accepted although not implemented")
    except openai.BadRequestError as e:
        check("response_format" in str(e), f"the error names the field: {e}")


def test_bad_requests_raise_openai_errors_and_the_server_keeps_serving():
    cases = [
        (openai.BadRequestError, dict(prompt="hi", temperature=-1)),
        (openai.BadRequestError, dict(prompt="hi", max_tokens=0)),
        (openai.BadRequestError, dict(prompt="hi", top_p=1.5)),
        (openai.BadRequestError, dict(prompt="", max_tokens=4)),
        (openai.BadRequestError, dict(prompt=[10**7], max_tokens=4)),
        (openai.BadRequestError, dict(prompt="hi", max_tokens=10**6)),
        (openai.BadRequestError, dict(prompt="hi", stop=["a", "b", "c", "d", "e"])),
        (openai.BadRequestError, dict(prompt="hi", logit_bias={"5": 1000})),
        (openai.BadRequestError, dict(prompt="hi", best_of=4)),
        (openai.NotFoundError, dict(prompt="hi", model="no-such-model")),
    ]
    for err, kw in cases:
        kw = {"model": MODEL, **kw}
        try:
            CLIENT.completions.create(**kw)
        except err as e:
            check(e.status_code < 500, f"{kw}: status {e.status_code}")
            body = e.body if isinstance(e.body, dict) else {}
            check("message" in body, f"{kw}: an OpenAI-shaped error body, got {e.body!r}")
        else:
            raise AssertionError(f"{kw} was accepted")
    try:
        CLIENT.chat.completions.create(model=MODEL, messages=[], max_tokens=4)
        raise AssertionError("an empty conversation was accepted")
    except openai.BadRequestError:
        pass
    eq(CLIENT.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=MAX, temperature=0).choices[0].text, solo(prompt=PROMPTS[0])["text"], "answer after the errors")


def test_api_key_is_required_when_set():
    with Server(ARGS.bin, ARGS.model, "--api-key", "sesame", "--served-model-name", "keyed") as s:
        try:
            OpenAI(base_url=s.v1, api_key="wrong", max_retries=0).completions.create(model="keyed", prompt="hi", max_tokens=2)
            raise AssertionError("a wrong key was accepted")
        except openai.AuthenticationError as e:
            eq(e.status_code, 401, "status")
        r = OpenAI(base_url=s.v1, api_key="sesame", max_retries=0).completions.create(model="keyed", prompt=PROMPTS[0], max_tokens=MAX, temperature=0)
        eq(r.choices[0].text, solo(prompt=PROMPTS[0])["text"], "answer with the right key")
        eq(get_json(s.base + "/health")["status"], "ok", "/health needs no key")


def main():
    global SERVER, CLIENT, MODEL
    with Server(ARGS.bin, ARGS.model) as s:
        SERVER = s
        CLIENT = OpenAI(base_url=s.v1, api_key="unused", max_retries=0, timeout=120)
        MODEL = CLIENT.models.list().data[0].id
        code = run_tests(tests_of(globals()))
    return code


if __name__ == "__main__":
    sys.exit(main())
