#!/bin/bash
# gpu_pack.sh DIR: builds (release) every GPU test executable, the GPU benches and the binary on
# this machine (no GPU needed: kernels compile at run time with NVRTC) and strips them into
# DIR/bin.tgz as tests/NAME, benches/NAME and switchyard; scripts/gpu_run.sh runs them on the GPU
# machine. DIR should be git-ignored (e.g. .device/NAME) and carried there.
set -euo pipefail
D=${1:?usage: scripts/gpu_pack.sh DIR}
cd "$(dirname "$0")/.."
TESTS="--lib --test cuda_ops --test cuda_attention --test cuda_golden --test cuda_moe --test cuda_moe_model
  --test cuda_serve --test cuda_sampling --test gpu_ranks --test gpu_flags --test cuda_load_memory
  --test fp8_checkpoint"
BENCHES="--bench moe_gpu --bench decode_gpu --bench sample_gpu --bench mla_gpu"
J=$(mktemp -d)
# shellcheck disable=SC2086
cargo test --release --no-run --message-format=json $TESTS > "$J/tests.json"
# shellcheck disable=SC2086
cargo bench --no-run --message-format=json $BENCHES > "$J/benches.json"
cargo build --release --message-format=json > "$J/bin.json"
S=$(mktemp -d)
mkdir -p "$S/tests" "$S/benches" "$D"
python3 - "$S" "$J" <<'PY'
import json, shutil, sys
s, j = sys.argv[1], sys.argv[2]
for f in ("tests.json", "benches.json", "bin.json"):
    for line in open(f"{j}/{f}"):
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if m.get("reason") == "compiler-artifact" and m.get("executable"):
            kind, name = m["target"]["kind"][0], m["target"]["name"]
            dst = {"lib": f"{s}/tests/lib", "test": f"{s}/tests/{name}",
                   "bench": f"{s}/benches/{name}", "bin": f"{s}/switchyard"}[kind]
            shutil.copy(m["executable"], dst)
PY
strip "$S"/tests/* "$S"/benches/* "$S/switchyard"
# The test executables find tests/fixtures through the checkout they were built in.
pwd > "$S/build_dir"
tar czf "$D/bin.tgz" -C "$S" .
rm -rf "$S" "$J"
ls -la "$D/bin.tgz"
