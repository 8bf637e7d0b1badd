#!/bin/bash
# gpu_run.sh DIR [PARTS]: on the GPU machine, from the repository root, runs what scripts/gpu_pack.sh put
# in DIR/bin.tgz: every GPU test (each with a timeout), then the benches — Mixtral-8x7B decode
# (16 layers where the GPU has under 120 GB), DeepSeek-V2-Lite decode, MLA attention and, on a GPU
# of 120 GB or more, the MoE layer with the PyTorch peer. Writes at most eight files to $OUT
# (default gpu-logs/) and prints the summary; the rows of benches/RESULTS.md come from them.
# PARTS (default all) is a comma list of tests, decode (Mixtral, DeepSeek-V2-Lite, MLA) and moe
# (the MoE table with the peer), or benches for decode,moe: one call of the device tool may run
# 600 s, and on an H200 the whole run can take longer.
set -u
D=${1:?usage: scripts/gpu_run.sh DIR [tests,decode,moe|benches|all]}
PART=${2:-all}
[ "$PART" = all ] && PART=tests,decode,moe
[ "$PART" = benches ] && PART=decode,moe
for p in ${PART//,/ }; do
  case $p in tests | decode | moe) ;; *) echo "unknown part: $p (tests, decode, moe)" >&2; exit 2 ;; esac
done
has() { [[ ",$PART," == *",$1,"* ]]; }
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
B=$(mktemp -d)
tar xzf "$D/bin.tgz" -C "$B"
built=$(cat "$B/build_dir")
[ "$PWD" = "$built" ] || { mkdir -p "$(dirname "$built")"; ln -sfn "$PWD" "$built"; }
mkdir -p target/release && cp "$B/switchyard" target/release/
S=$OUT/summary.txt
say() { echo "$*" | tee -a "$S"; }
gpu=$(nvidia-smi -L 2>/dev/null | head -1)
say "${gpu:-no GPU}; $(date -u); $(git rev-parse --short HEAD 2>/dev/null)"
L=$(mktemp -d)
has tests && for t in "$B"/tests/*; do
  n=$(basename "$t")
  timeout 180 "$t" --nocapture > "$L/$n.log" 2>&1
  rc=$?
  say "$n rc=$rc $(grep 'test result' "$L/$n.log" | tail -1)"
  [ $rc = 0 ] || grep -A12 "^---- \|panicked" "$L/$n.log" | head -40 >> "$S"
done
has tests && grep -h "logits relative L2 by prompt" "$L/cuda_golden.log" >> "$S"
mem=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
mem=${mem:-0}
layers=""; [ "$mem" -gt 120000 ] || layers="--layers 16"
if has decode; then
  # shellcheck disable=SC2086
  timeout 200 "$B/benches/decode_gpu" $layers > "$OUT/decode.log" 2>&1; say "decode_gpu $layers rc=$?"
  timeout 150 "$B/benches/decode_gpu" --model configs/models/DeepSeek-V2-Lite > "$OUT/v2lite.log" 2>&1
  say "decode_gpu DeepSeek-V2-Lite rc=$?"
  timeout 90 "$B/benches/mla_gpu" > "$OUT/mla.log" 2>&1; say "mla_gpu rc=$?"
fi
if has moe && [ "$mem" -gt 120000 ]; then
  (for _ in $(seq 40); do
     nvidia-smi --query-gpu=power.draw,clocks.sm,clocks_throttle_reasons.active --format=csv,noheader >> "$OUT/smi.txt"
     sleep 2
   done) &
  timeout 120 "$B/benches/moe_gpu" --json "$OUT/ours.json" > /dev/null 2>&1; say "moe_gpu rc=$?"
  timeout 120 python3 benches/moe_peer.py --json "$OUT/peer.json" --ours "$OUT/ours.json" > "$OUT/moe_peer.log" 2>&1
  say "moe_peer rc=$?"
fi
say "done $(date -u)"
rm -rf "$B" "$L"
