#!/usr/bin/env python3
"""Generate switchyard's golden test fixtures (tests/fixtures/<name>/).

Each fixture is a tiny random-weight Hugging Face checkpoint written with
transformers' `save_pretrained` (hub tensor names, safetensors), plus
`golden.json` holding logits and greedy continuations computed by transformers
itself (float32 math on CPU, eager attention) from the *saved* (rounded) weights.

Requirements: Python 3.10+, torch (2.11 used), transformers (5.17 used),
tokenizers, numpy, safetensors. No GPU is needed: everything runs on CPU in
float32. In this project only the device machine (the `run` tool) has
transformers, so it is run there:

    set -o pipefail; PYTHONUNBUFFERED=1 python3 scripts/make_fixtures.py --out /tmp/fx 2>&1 | tee $OUT/log.txt
    tar czf $OUT/fixtures.tgz -C /tmp/fx .
    # then, on the development machine: tar xzf fixtures.tgz -C tests/fixtures/

`--only name1,name2` regenerates a subset. Output is deterministic for a given
torch/transformers version (seeded per fixture).

Config forms: fixtures listed in HUB_FORM get their config.json rewritten after
the goldens are computed into the older hub form (top-level rope_theta /
rope_scaling, no rope_parameters, `torch_dtype`; DeepSeek also gets
scoring_func/topk_method and loses rope_interleave/head_dim/qk_head_dim).
The script reloads every rewritten checkpoint with transformers and checks the
logits are unchanged.
"""

import argparse
import copy
import json
import math
import os
import re
import shutil
import sys
import time
import traceback

import numpy as np
import torch

import transformers
from transformers import AutoConfig, AutoModelForCausalLM

VOCAB = 512
MAX_POS = 256
PROMPT_LENS = [1, 5, 17, 30]
GREEDY_STEPS = 12
MAX_TRIALS = 16
DEADLINE = time.time() + 240  # stop seed searches after this (device-time budget)
HUB_FORM = {"llama_tied", "mixtral", "qwen2_moe", "deepseek_v2", "deepseek_v3_yarn"}

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

# ----------------------------------------------------------------------------
# fixture specs: (config class kwargs, rope spec for the hub form, extras)
# ----------------------------------------------------------------------------


def fixture_specs():
    specs = []

    llama3_rope = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    specs.append(dict(
        name="llama_tied", seed=101, dtype="bfloat16",
        what="llama, GQA 4q/2kv heads, tied embeddings, llama3 rope scaling (orig 64), bf16, hub config form",
        model_type="llama", rope_theta=10000.0, rope=llama3_rope, out_gain=3.0,
        hub_rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        cfg=dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POS,
                 rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                 attention_bias=False, mlp_bias=False),
    ))
    specs.append(dict(
        name="llama_bias_sharded", seed=102, dtype="float16",
        what="llama, attention_bias + mlp_bias, head_dim 32 != hidden/heads (24), linear rope x2, untied, fp16, "
             "sharded safetensors with index",
        model_type="llama", rope_theta=10000.0, rope={"rope_type": "linear", "factor": 2.0},
        shard="200KB",
        cfg=dict(vocab_size=VOCAB, hidden_size=96, intermediate_size=192, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=MAX_POS,
                 rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                 attention_bias=True, mlp_bias=True),
    ))
    specs.append(dict(
        name="mistral_window", seed=103, dtype="float32",
        what="mistral, GQA, sliding_window 8 (prompts of 17/30 tokens exceed it), f32 weights",
        model_type="mistral", rope_theta=10000.0, rope={"rope_type": "default"},
        cfg=dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=MAX_POS,
                 rms_norm_eps=1e-5, tie_word_embeddings=False, sliding_window=8, bos_token_id=1, eos_token_id=2),
    ))
    specs.append(dict(
        name="mixtral", seed=104, dtype="bfloat16", tokenizer=True,
        what="mixtral, 8 experts top-2, GQA, bf16, rope_theta 1e6, byte-level BPE tokenizer.json (vocab 512) + "
             "chat template, hub config form",
        model_type="mixtral", rope_theta=1000000.0, rope={"rope_type": "default"}, hub_rope_scaling=None,
        cfg=dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POS,
                 rms_norm_eps=1e-5, tie_word_embeddings=False, num_local_experts=8, num_experts_per_tok=2,
                 sliding_window=None, bos_token_id=0, eos_token_id=1),
    ))
    specs.append(dict(
        name="qwen2_moe", seed=105, dtype="bfloat16",
        what="qwen2_moe, 8 experts top-2 (norm_topk_prob false), shared expert + sigmoid shared_expert_gate, "
             "qkv bias, decoder_sparse_step 2 (layers 0,2 dense MLP, 1,3 MoE), bf16, hub config form",
        model_type="qwen2_moe", rope_theta=10000.0, rope={"rope_type": "default"}, hub_rope_scaling=None,
        cfg=dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POS,
                 rms_norm_eps=1e-6, tie_word_embeddings=False, num_experts=8, num_experts_per_tok=2,
                 moe_intermediate_size=32, shared_expert_intermediate_size=64, norm_topk_prob=False,
                 decoder_sparse_step=2, mlp_only_layers=[], use_sliding_window=False,
                 bos_token_id=1, eos_token_id=2),
    ))
    specs.append(dict(
        name="qwen3_moe", seed=106, dtype="bfloat16",
        what="qwen3_moe, q_norm/k_norm, head_dim 32 != hidden/heads (16), 8 experts top-2, norm_topk_prob true, "
             "mlp_only_layers [0], bf16",
        model_type="qwen3_moe", rope_theta=10000.0, rope={"rope_type": "default"},
        cfg=dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=MAX_POS,
                 rms_norm_eps=1e-6, tie_word_embeddings=False, num_experts=8, num_experts_per_tok=2,
                 moe_intermediate_size=32, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[0],
                 use_sliding_window=False, bos_token_id=1, eos_token_id=2),
    ))
    specs.append(dict(
        name="deepseek_v2", seed=107, dtype="bfloat16",
        what="deepseek_v2 MLA without q_lora (kv_lora 32, nope 16, rope 8, v 16), softmax routing, "
             "group_limited_greedy (4 groups, top 2), 16 experts top-4, 1 shared expert, first_k_dense_replace 1, "
             "routed_scaling_factor 2.0, no renorm, bf16, hub config form",
        model_type="deepseek_v2", rope_theta=10000.0, rope={"rope_type": "default"}, hub_rope_scaling=None,
        hub_extra={"scoring_func": "softmax", "topk_method": "group_limited_greedy"},
        cfg=dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=MAX_POS,
                 rms_norm_eps=1e-6, tie_word_embeddings=False, q_lora_rank=None, kv_lora_rank=32,
                 qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=16,
                 num_experts_per_tok=4, n_shared_experts=1, moe_intermediate_size=32, first_k_dense_replace=1,
                 topk_method="group_limited_greedy", n_group=4, topk_group=2, routed_scaling_factor=2.0,
                 norm_topk_prob=False, bos_token_id=1, eos_token_id=2),
    ))
    v3_cfg = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=MAX_POS,
                  rms_norm_eps=1e-6, tie_word_embeddings=False, q_lora_rank=48, kv_lora_rank=32,
                  qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=16,
                  num_experts_per_tok=4, n_shared_experts=1, moe_intermediate_size=32, first_k_dense_replace=1,
                  n_group=4, topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True,
                  bos_token_id=1, eos_token_id=2)
    specs.append(dict(
        name="deepseek_v3", seed=108, dtype="bfloat16",
        what="deepseek_v3 MLA with q_lora 48, sigmoid + noaux_tc (4 groups, top 2, random e_score_correction_bias), "
             "16 experts top-4, renorm, routed_scaling_factor 2.5, 1 shared expert, first_k_dense_replace 1, "
             "interleaved rope, no rope scaling, bf16",
        model_type="deepseek_v3", rope_theta=10000.0, rope={"rope_type": "default"},
        cfg=dict(v3_cfg),
    ))
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "mscale": 1.0,
            "mscale_all_dim": 1.0, "beta_fast": 32.0, "beta_slow": 1.0}
    y_cfg = dict(v3_cfg)
    # max_position_embeddings = factor * original (as in DeepSeek-V3: 163840 = 40 * 4096), so that an engine
    # using either `factor` or max/original for the yarn ratio gets the same answer.
    y_cfg["max_position_embeddings"] = 128
    specs.append(dict(
        name="deepseek_v3_yarn", seed=109, dtype="bfloat16",
        what="as deepseek_v3 but yarn rope (factor 4, original 32, mscale 1, mscale_all_dim 1, beta 32/1, "
             "max_position_embeddings 128), other seed, hub config form",
        model_type="deepseek_v3", rope_theta=10000.0, rope=yarn,
        hub_rope_scaling={"type": "yarn", "factor": 4, "original_max_position_embeddings": 32, "mscale": 1.0,
                          "mscale_all_dim": 1.0, "beta_fast": 32, "beta_slow": 1},
        hub_extra={"scoring_func": "sigmoid", "topk_method": "noaux_tc"},
        cfg=y_cfg,
    ))
    return specs


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------


def make_config(spec):
    kw = dict(spec["cfg"])
    rope = dict(spec["rope"])
    rope["rope_theta"] = spec["rope_theta"]
    kw["rope_parameters"] = rope
    cfg = AutoConfig.for_model(spec["model_type"], **kw)
    return cfg


@torch.no_grad()
def init_weights(model, hidden, out_gain=1.0, head_gain=4.0):
    """Deterministic, 'loud' init: decisive routing, O(1) activations.

    Linear weights ~ N(0, 1/fan_in), embeddings ~ N(0, 1), router ~ N(0, 9/hidden), norms 1 + 0.1 N, biases
    0.1 N. An untied lm_head gets std head_gain/sqrt(hidden) so logits have std ~4 and greedy margins are
    not tiny; out_gain scales o_proj/down_proj (used by the tied fixture so that the layers can outweigh the
    std-1 input embedding and greedy does not just repeat the last token).
    """
    emb_ids = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    for name, p in model.named_parameters():
        if id(p) in emb_ids:
            p.normal_(0.0, 1.0)
        elif p.ndim >= 2:
            std = 1.0 / math.sqrt(p.shape[-1])
            if re.search(r"(mlp|block_sparse_moe)\.gate\.weight$", name):  # router
                std = 3.0 / math.sqrt(hidden)
            elif name == "lm_head.weight":
                std *= head_gain
            elif re.search(r"(o_proj|down_proj)(\.weight)?$", name):
                std *= out_gain
            p.normal_(0.0, std)
        elif name.endswith("bias"):
            p.normal_(0.0, 0.1)
        else:  # 1-D weight: a norm
            p.copy_(1.0 + 0.1 * torch.randn_like(p))
    for name, b in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            b.normal_(0.0, 0.1)


def f32_list(t):
    """float32 tensor -> nested lists of Python floats that round-trip exactly to the same float32."""
    a = t.detach().to(torch.float32).cpu().numpy()
    flat = [float(str(v)) for v in a.reshape(-1)]
    arr = np.array(flat, dtype=object).reshape(a.shape)
    return arr.tolist()


def load_f32(path):
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    except TypeError:
        return AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32,
                                                    attn_implementation="eager").eval()


@torch.no_grad()
def full_logits(model, ids):
    out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].to(torch.float32)


@torch.no_grad()
def greedy(model, ids):
    ids = list(ids)
    toks, margins = [], []
    for _ in range(GREEDY_STEPS):
        last = full_logits(model, ids)[-1]
        top2 = torch.topk(last, 2)
        t = int(top2.indices[0])
        toks.append(t)
        margins.append(float(str(np.float32(float(top2.values[0] - top2.values[1])))))
        ids.append(t)
    return {"tokens": toks, "margins": margins}


def safetensors_summary(d):
    from safetensors import safe_open
    files = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
    names = {}
    for f in files:
        with safe_open(os.path.join(d, f), "pt") as fh:
            for k in fh.keys():
                sl = fh.get_slice(k)
                names[k] = (f, tuple(sl.get_shape()), sl.get_dtype())
    return files, names


def unfuse_experts_if_needed(d, spec):
    """Fallback: if save_pretrained wrote fused expert tensors, rewrite them with hub names."""
    from safetensors.torch import load_file, save_file
    files, names = safetensors_summary(d)
    if not any(re.search(r"experts\.(gate_up_proj|down_proj|gate_proj|up_proj)$", k) for k in names):
        return False
    assert files == ["model.safetensors"], files
    sd = load_file(os.path.join(d, "model.safetensors"))
    out = {}
    mixtral = spec["model_type"] == "mixtral"
    for k, v in sd.items():
        m = re.match(r"(.*)\.experts\.(gate_up_proj|down_proj)$", k)
        if not m:
            if mixtral:
                k = k.replace(".mlp.gate.", ".block_sparse_moe.gate.")
            out[k] = v
            continue
        pre, kind = m.groups()
        if mixtral:
            pre = pre.replace(".mlp", ".block_sparse_moe")
        n = {"gate": "w1", "up": "w3", "down": "w2"} if mixtral else {"gate": "gate_proj", "up": "up_proj",
                                                                       "down": "down_proj"}
        for e in range(v.shape[0]):
            if kind == "gate_up_proj":
                half = v.shape[1] // 2
                out[f"{pre}.experts.{e}.{n['gate']}.weight"] = v[e, :half].contiguous()
                out[f"{pre}.experts.{e}.{n['up']}.weight"] = v[e, half:].contiguous()
            else:
                out[f"{pre}.experts.{e}.{n['down']}.weight"] = v[e].contiguous()
    save_file(out, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    print("  NOTE: save_pretrained wrote fused experts; rewrote them to hub per-expert names")
    return True


class RouterWatch:
    """Records the smallest routing decision gap seen by any MoE gate during forwards.

    Gap = (k-th best - (k+1)-th best) expert score, and for group-limited routing also the group-selection
    gap, computed with transformers' semantics, divided by a per-scoring threshold (softmax routers: logits,
    threshold 1e-3; sigmoid/noaux_tc: sigmoid+bias scores, threshold 2.5e-4). >= 1 means decisive.
    """

    def __init__(self, model, spec):
        self.cfg = model.config
        self.mt = spec["model_type"]
        self.best = float("inf")
        self.hooks = []
        for name, mod in model.named_modules():
            if re.search(r"(mlp|block_sparse_moe)\.gate$", name) and hasattr(mod, "weight"):
                self.hooks.append(mod.register_forward_hook(self._hook))

    @torch.no_grad()
    def _hook(self, mod, inp, out):
        x = inp[0].detach().reshape(-1, inp[0].shape[-1]).float()
        logits = (x @ mod.weight.detach().float().t()).double()
        c, k = self.cfg, self.cfg.num_experts_per_tok
        E = logits.shape[-1]
        gap = float("inf")
        if self.mt == "deepseek_v3":
            s, thr = logits.sigmoid() + mod.e_score_correction_bias.double(), 2.5e-4
            gs = s.view(-1, c.n_group, E // c.n_group).topk(2, dim=-1)[0].sum(-1)
            fill = 0.0
        elif self.mt == "deepseek_v2" and c.topk_method == "group_limited_greedy":
            s, thr = logits, 1e-3
            gs = s.view(-1, c.n_group, E // c.n_group).max(-1).values
            fill = float("-inf")
        else:
            s, thr, gs = logits, 1e-3, None
        if gs is not None:
            tg = c.topk_group
            gsort = gs.sort(-1, descending=True).values
            gap = min(gap, float((gsort[:, tg - 1] - gsort[:, tg]).min()))
            gmask = torch.zeros_like(gs).scatter_(1, gs.topk(tg, -1).indices, 1.0).bool()
            emask = gmask.unsqueeze(-1).expand(-1, c.n_group, E // c.n_group).reshape(-1, E)
            s = s.masked_fill(~emask, fill)
        ssort = s.sort(-1, descending=True).values
        gap = min(gap, float((ssort[:, k - 1] - ssort[:, k]).min()))
        self.best = min(self.best, gap / thr)

    def close(self):
        for h in self.hooks:
            h.remove()
        return None if not self.hooks else self.best


# ----------------------------------------------------------------------------
# tokenizer (mixtral fixture)
# ----------------------------------------------------------------------------

CORPUS = """
The river ran down from the hills in the spring, swollen with snow water, and the people of the valley
watched it rise each morning from the old stone bridge. The miller said that it would not reach the
doors this year, but the miller said that every year, and every third year he was wrong.
In the town there was a school with a green door and a bell that rang at eight o'clock. The children
came from the farms on foot, carrying their lunches in cloth bags, and they learned their letters and
their numbers and the names of the rivers of the world, which they recited in a long singing chant.
A traveller came one evening in autumn, when the leaves were turning red and gold. He asked for bread
and a bed, and he paid with a silver coin from a country nobody had heard of. He told stories by the
fire: of ships that sailed beyond the edge of the maps, of cities built on water, of mountains so high
that snow lay on them in the middle of summer. The children listened with open mouths.
Winter came early. The roads filled with snow, the bridge was white, and the river froze at its edges.
The baker kept his ovens burning all night, and the smell of warm bread drifted through the streets.
Neighbours helped each other carry wood and water; nobody went hungry, and nobody was left alone.
When the thaw came at last, the whole valley turned green within a week. Farmers ploughed their fields,
the swallows returned to the barns, and the river once again rose towards the old stone bridge.
Numbers and symbols appear too: 1, 2, 3, 10, 42, 100, 2024; a + b = c; (x, y) -> z; "quoted words";
questions? answers! lists: apples, pears, plums, cherries; e-mail@example.org; https://example.com/path.
Some words from elsewhere: café, naïve, façade, über, señor, 東京, Москва, and a smile :-) for good luck.
Human: what is the capital of France? Assistant: The capital of France is Paris.
User: please write a short poem about the sea. Assistant: The sea is wide, the sea is deep, it sings
the sailors all to sleep; it keeps its secrets, old and cold, of sunken ships and gleaming gold.
System: you are a helpful assistant who answers briefly and politely, and who never makes things up.
"""

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def build_tokenizer(d):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([CORPUS] * 3, trainer=trainer)
    assert tok.token_to_id("<s>") == 0 and tok.token_to_id("</s>") == 1
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 0)])
    n = tok.get_vocab_size()
    assert n == VOCAB, f"tokenizer vocab {n} != {VOCAB}"
    tok.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
                   "model_max_length": MAX_POS, "clean_up_tokenization_spaces": False,
                   "chat_template": CHAT_TEMPLATE}, f, indent=2)
    return tok


def tokenizer_goldens(d, tok):
    from transformers import AutoTokenizer
    prompt = "The quick brown fox jumps over the lazy dog. Café, naïve, 東京! 42 + 58 = 100."
    raw = tok.encode(prompt, add_special_tokens=True).ids
    at = AutoTokenizer.from_pretrained(d)
    auto = at(prompt)["input_ids"]
    print(f"  tokenizer: class {type(at).__name__}; tokenizers ids {raw}")
    if raw != auto:
        print(f"  WARNING: AutoTokenizer ids differ: {auto}; recording AutoTokenizer's")
    assert at.decode(auto, skip_special_tokens=True) == prompt, at.decode(auto, skip_special_tokens=True)
    text = {"prompt": prompt, "ids": list(auto)}
    chat = None
    try:
        msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello there!"}]
        rendered = at.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        ids = at.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        chat = {"messages": msgs, "add_generation_prompt": True, "rendered": rendered, "ids": list(ids)}
        print(f"  chat rendered {rendered!r} -> {list(ids)}")
    except Exception as e:  # noqa: BLE001
        print(f"  WARNING: chat template golden failed: {e!r}")
    return text, chat


# ----------------------------------------------------------------------------
# hub-form config rewrite
# ----------------------------------------------------------------------------


def to_hub_form(d, spec):
    p = os.path.join(d, "config.json")
    with open(p) as f:
        cfg = json.load(f)
    cfg.pop("rope_parameters", None)
    cfg["rope_theta"] = spec["rope_theta"]
    cfg["rope_scaling"] = copy.deepcopy(spec.get("hub_rope_scaling"))
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    if spec["model_type"].startswith("deepseek"):
        cfg.pop("rope_interleave", None)
        cfg.pop("head_dim", None)
        cfg.pop("qk_head_dim", None)
        cfg.update(spec.get("hub_extra", {}))
    with open(p, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    return cfg


# ----------------------------------------------------------------------------
# main per-fixture routine
# ----------------------------------------------------------------------------


def make_fixture(spec, out_root):
    name = spec["name"]
    d = os.path.join(out_root, name)
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    print(f"\n=== {name} ({spec['model_type']}, {spec['dtype']}) ===")
    g = torch.Generator().manual_seed(spec["seed"] * 7919)
    prompts = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in PROMPT_LENS]
    dtype = DTYPES[spec["dtype"]]

    def build(seed):
        torch.manual_seed(seed)
        cfg = make_config(spec)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
        init_weights(model, cfg.hidden_size, out_gain=spec.get("out_gain", 1.0))
        if cfg.tie_word_embeddings:
            assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
        return cfg, model

    # Seed search: pick weights whose greedy margins and routing gaps are decisive (see RouterWatch).
    best = None
    for trial in range(MAX_TRIALS):
        seed = spec["seed"] + 1000 * trial
        cfg, model = build(seed)
        with torch.no_grad():  # evaluate on the stored-dtype-rounded weights
            for p in model.parameters():
                p.copy_(p.to(dtype).float())
            for bn, b in model.named_buffers():
                if bn.endswith("e_score_correction_bias"):
                    b.copy_(b.to(dtype).float())
        rw = RouterWatch(model, spec)
        grs = [greedy(model, p) for p in prompts]
        rgap = rw.close()
        gm = min(min(x["margins"]) for x in grs)
        score = min(gm / 0.02, float("inf") if rgap is None else rgap)
        if len(set(grs[-1]["tokens"])) < 4:
            score = min(score, 0.5)
        print(f"  trial seed {seed}: min greedy margin {gm:.4f}, router gap/thr {rgap}, score {score:.3f}")
        if best is None or score > best[0]:
            best = (score, seed)
        if score >= 1.0 or time.time() > DEADLINE:
            break
    seed = best[1]
    cfg, model = build(seed)
    model = model.to(dtype)
    kw = {"safe_serialization": True}
    if spec.get("shard"):
        kw["max_shard_size"] = spec["shard"]
    model.save_pretrained(d, **kw)
    del model
    unfuse_experts_if_needed(d, spec)

    tok = build_tokenizer(d) if spec.get("tokenizer") else None

    m = load_f32(d)
    nparams = sum(p.numel() for p in m.parameters())
    # structural sanity checks
    if spec["cfg"].get("head_dim") and spec["model_type"] in ("llama", "mistral", "qwen3_moe"):
        q = m.model.layers[0].self_attn.q_proj.weight
        assert q.shape[0] == cfg.num_attention_heads * spec["cfg"]["head_dim"], q.shape
    if cfg.tie_word_embeddings:
        assert torch.equal(m.lm_head.weight, m.model.embed_tokens.weight)

    rw = RouterWatch(m, spec)
    logits = [full_logits(m, p) for p in prompts]
    greedies = [greedy(m, p) for p in prompts]
    rm = rw.close()
    golden = {
        "model_type": spec["model_type"],
        "dtype": spec["dtype"],
        "config_form": "hub" if name in HUB_FORM else "transformers5",
        "generator": {"transformers": transformers.__version__, "torch": torch.__version__,
                      "math": "float32 cpu eager", "weight_seed": seed,
                      "prompt_seed": spec["seed"] * 7919},
        "prompts": prompts,
        "logits": [f32_list(l) for l in logits],
        "greedy": greedies,
    }
    if tok is not None:
        text, chat = tokenizer_goldens(d, tok)
        golden["text"] = text
        if chat is not None:
            golden["chat"] = chat
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump(golden, f, separators=(",", ":"))

    min_margin = min(min(gr["margins"]) for gr in greedies)
    print(f"  FINAL seed {seed}: params {nparams}  min greedy margin {min_margin:.4f}  min routing gap/threshold "
          f"{'n/a' if rm is None else f'{rm:.4g}'}")
    print(f"  logits absmax {max(float(l.abs().max()) for l in logits):.3f}; greedy {[gr['tokens'] for gr in greedies]}")
    rot = getattr(m.model, "rotary_emb", None)
    if rot is not None:
        print(f"  rotary: type {getattr(rot, 'rope_type', '?')} attention_scaling {getattr(rot, 'attention_scaling', '?')} "
              f"inv_freq {[round(float(x), 6) for x in rot.inv_freq]}")
    if spec["model_type"].startswith("deepseek"):
        att = m.model.layers[0].self_attn
        print(f"  deepseek attn scaling {getattr(att, 'scaling', '?')} (1/sqrt(qk_head_dim) = "
              f"{(spec['cfg']['qk_nope_head_dim'] + spec['cfg']['qk_rope_head_dim']) ** -0.5}); "
              f"rope_interleave attr {getattr(m.config, 'rope_interleave', 'absent')}")

    if spec["model_type"] == "mistral":
        c2 = copy.deepcopy(m.config)
        c2.sliding_window = None
        m2 = AutoModelForCausalLM.from_config(c2, attn_implementation="eager").eval()
        m2.load_state_dict(m.state_dict())
        l2 = full_logits(m2, prompts[3])
        diff = (l2 - logits[3]).abs().amax(-1)
        differs = [i for i, v in enumerate(diff.tolist()) if v > 1e-4]
        print(f"  sliding window check (30-token prompt): positions differing from no-window model: "
              f"{differs[:3]}...(count {len(differs)}); first = {differs[0] if differs else None} "
              f"(8 => window counts the query itself: keys q-7..q)")

    # print saved config and tensor names
    files, names = safetensors_summary(d)
    with open(os.path.join(d, "config.json")) as f:
        saved = json.load(f)
    print(f"  saved config.json (transformers form): {json.dumps(saved, sort_keys=True)}")
    compact = {}
    for k, (fname, shape, dt) in names.items():
        ck = re.sub(r"experts\.\d+\.", "experts.N.", k)
        ck = re.sub(r"layers\.\d+\.", "layers.L.", ck)
        compact.setdefault(ck, (shape, dt))
    print(f"  safetensors files {files}; {len(names)} tensors; patterns:")
    for ck in sorted(compact):
        print(f"    {ck} {list(compact[ck][0])} {compact[ck][1]}")

    if name in HUB_FORM:
        hub = to_hub_form(d, spec)
        print(f"  hub-form config.json: {json.dumps(hub, sort_keys=True)}")
        try:
            m3 = load_f32(d)
            worst = 0.0
            for p, l in zip(prompts, logits):
                worst = max(worst, float((full_logits(m3, p) - l).abs().max()))
            print(f"  hub-form reload: max |logit diff| = {worst:.3g}; rope_parameters {m3.config.rope_parameters}")
            if worst > 1e-5:
                print("  ERROR: hub-form config does not reproduce the goldens")
                return False
        except Exception:  # noqa: BLE001
            print("  ERROR: transformers failed to load the hub-form config:")
            traceback.print_exc()
            return False
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    torch.set_num_threads(4)
    print(f"transformers {transformers.__version__} torch {torch.__version__}")
    specs = fixture_specs()
    if args.only:
        keep = set(args.only.split(","))
        specs = [s for s in specs if s["name"] in keep]
    os.makedirs(args.out, exist_ok=True)
    ok = True
    for spec in specs:
        try:
            ok &= bool(make_fixture(spec, args.out))
        except Exception:  # noqa: BLE001
            ok = False
            print(f"FAILED {spec['name']}:")
            traceback.print_exc()
    with open(os.path.join(args.out, "fixtures.json"), "w") as f:
        json.dump({s["name"]: {"model_type": s["model_type"], "dtype": s["dtype"],
                               "config_form": "hub" if s["name"] in HUB_FORM else "transformers5",
                               "exercises": s["what"]} for s in fixture_specs()}, f, indent=2)
    print("\nALL OK" if ok else "\nSOME FIXTURES FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
