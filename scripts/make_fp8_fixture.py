#!/usr/bin/env python3
"""Make tests/fixtures/deepseek_v3_fp8/: the deepseek_v3 golden fixture with its matrices stored
the way DeepSeek-V3's hub checkpoint stores them (block-scaled FP8), plus the reference the loader
must reproduce.

- `model.safetensors`: every projection of attention and of the MLPs / experts as F8_E4M3 with an
  F32 `<name>_scale_inv` per BLOCK (DeepSeek's recipe: scale = amax / 448 per block, values
  w / scale rounded to e4m3); embeddings, norms, the router and lm_head stay bf16, as in the hub
  checkpoint. An extra layer (the hub's multi-token-prediction layer) holds one more FP8 weight
  that the model never asks for.
- `config.json`: the source's, with DeepSeek-V3's `quantization_config` (block BLOCK instead of
  128 x 128, so that the fixture's small matrices have many blocks, partial ones at the edges).
- `dequantized/`: the same model with those weights dequantized by ml_dtypes (e4m3 -> f32, times
  the scale, in f32) and stored as F32, config without `quantization_config`.

Needs numpy and ml_dtypes (the independent e4m3 decoder); no torch. Deterministic.

    python3 scripts/make_fp8_fixture.py [--src tests/fixtures/deepseek_v3] [--out tests/fixtures/deepseek_v3_fp8]
"""

import argparse
import json
import os
import re
import struct

import ml_dtypes
import numpy as np

BLOCK = (16, 24)
QUANTIZED = re.compile(
    r"\.(q_proj|q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj|gate_proj|up_proj|down_proj)\.weight$"
)
E4M3_MAX = 448.0
NP = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32, "F8_E4M3": ml_dtypes.float8_e4m3fn}
NAME = {np.dtype(v): k for k, v in NP.items()}


def read(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        a, b = e["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=NP[e["dtype"]]).reshape(e["shape"])
    return out


def write(path, tensors):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        t = np.ascontiguousarray(tensors[name])
        b = t.tobytes()
        header[name] = {"dtype": NAME[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def blocks(shape):
    return [-(-shape[0] // BLOCK[0]), -(-shape[1] // BLOCK[1])]


def expand(scales, shape):
    """Each block's scale at every element of the block."""
    s = np.repeat(np.repeat(scales, BLOCK[0], axis=0), BLOCK[1], axis=1)
    return s[: shape[0], : shape[1]]


def quantize(w):
    w = w.astype(np.float32)
    br, bc = blocks(w.shape)
    scales = np.zeros((br, bc), np.float32)
    for i in range(br):
        for j in range(bc):
            blk = w[i * BLOCK[0] : (i + 1) * BLOCK[0], j * BLOCK[1] : (j + 1) * BLOCK[1]]
            amax = np.float32(np.abs(blk).max())
            scales[i, j] = amax / np.float32(E4M3_MAX) if amax > 0 else np.float32(1.0)
    q = (w / expand(scales, w.shape)).astype(ml_dtypes.float8_e4m3fn)
    return q, scales


def dequantize(q, scales):
    return q.astype(np.float32) * expand(scales, q.shape)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default="tests/fixtures/deepseek_v3")
    ap.add_argument("--out", default="tests/fixtures/deepseek_v3_fp8")
    args = ap.parse_args()
    src = read(os.path.join(args.src, "model.safetensors"))
    config = json.load(open(os.path.join(args.src, "config.json")))
    extra = f"model.layers.{config['num_hidden_layers']}.eh_proj.weight"
    src[extra] = np.linspace(-1, 1, 64 * 128, dtype=np.float32).reshape(64, 128).astype(ml_dtypes.bfloat16)

    fp8, ref, n = {}, {}, 0
    for name, t in src.items():
        if QUANTIZED.search(name) or name == extra:
            q, s = quantize(t)
            fp8[name], fp8[name + "_scale_inv"] = q, s
            ref[name] = dequantize(q, s)
            n += 1
        else:
            fp8[name] = ref[name] = t
    del ref[extra]

    os.makedirs(os.path.join(args.out, "dequantized"), exist_ok=True)
    write(os.path.join(args.out, "model.safetensors"), fp8)
    write(os.path.join(args.out, "dequantized", "model.safetensors"), ref)
    quant = dict(config)
    quant["quantization_config"] = {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": list(BLOCK),
    }
    json.dump(quant, open(os.path.join(args.out, "config.json"), "w"), indent=2)
    json.dump(config, open(os.path.join(args.out, "dequantized", "config.json"), "w"), indent=2)
    err = max(
        float(np.abs(ref[k] - src[k].astype(np.float32)).max() / np.abs(src[k].astype(np.float32)).max())
        for k in ref
        if QUANTIZED.search(k)
    )
    print(f"{n} FP8 weights (block {BLOCK[0]} x {BLOCK[1]}), ml_dtypes {ml_dtypes.__version__}, "
          f"largest error against the bf16 source {err:.3g} of the tensor's max")


if __name__ == "__main__":
    main()
