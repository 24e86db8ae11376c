#!/usr/bin/env bash
# On the GPU machine (device tool; carry .deps): builds the engine with the
# machine's CUDA libtorch, checks decoder-block parity against Python
# transformers, and times block tuning on full-width ColQwen3 shapes for the
# two benchmark configurations of bench/gpu-tuning.md. Results go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/rh-out}; mkdir -p "$OUT"
FINAL_OUT=$OUT; OUT=/tmp/rh-logs; mkdir -p "$OUT"
trap 'tar czf "$FINAL_OUT/logs.tgz" -C /tmp rh-logs' EXIT
source scripts/gpu/env.sh
{ nvidia-smi -L; python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'; } 2>&1 | tee "$OUT/env.txt"
rh_gpu_configure build-gpu -DROUNDHOUSE_BUILD_TESTS=ON >"$OUT/configure.log" 2>&1 \
  || { tail -40 "$OUT/configure.log"; exit 1; }
cmake --build build-gpu --target engine_test roundhouse-worker -j16 >"$OUT/build.log" 2>&1 \
  || { grep -m20 -E 'error|Error' "$OUT/build.log"; tail -20 "$OUT/build.log"; exit 1; }
echo "== parity against transformers"
python3 worker/engine/tools/block_parity.py /tmp/parity.safetensors >"$OUT/parity_py.log" 2>&1 || tail -20 "$OUT/parity_py.log"
RH_PARITY_FILE=/tmp/parity.safetensors build-gpu/worker/engine/engine_test \
  --gtest_filter='DecoderBlock*' 2>&1 | tee "$OUT/parity.log" | tail -15
echo "== engine unit tests (CUDA libtorch build)"
timeout 300 build-gpu/worker/engine/engine_test --gtest_brief=1 >"$OUT/engine_test.log" 2>&1
echo "engine_test rc=$?"; grep -E "^\[  (FAILED|PASSED) |tests ran" "$OUT/engine_test.log" | head -20
if ! grep -q "PASSED" "$OUT/engine_test.log"; then
  echo "== backtrace of the first crashing test"
  first=$(grep -m1 -oE '^\[ RUN      \] [A-Za-z0-9_./]+' "$OUT/engine_test.log" | tail -1 | awk '{print $4}')
  timeout 200 cuda-gdb -batch -ex run -ex bt --args build-gpu/worker/engine/engine_test \
    --gtest_filter="*Pipeline*" 2>&1 | tail -40 | tee "$OUT/gdb.log"
fi
W=build-gpu/worker/roundhouse-worker
bench() {  # name samples seqlen batch sym
  local name=$1 n=$2 L=$3 bs=$4 sym=$5
  $W generate --family colqwen3 --preset colqwen3-4b --layers "${RH_BENCH_LAYERS:-3}" \
    --dtype bfloat16 --seed 1 --calib-samples "$n" --calib-seqlen "$L" --out "/tmp/cq3-$name" \
    >"$OUT/gen-$name.log" 2>&1 || { tail -5 "$OUT/gen-$name.log"; return; }
  cat >"/tmp/spec-$name.json" <<JSON
{"scheme": {"bits": 4, "group_size": 128, "sym": $sym, "iters": 200, "nsamples": $n,
 "seqlen": $L, "batch_size": $bs, "seed": 42},
 "calibration": {"path": "calib.jsonl", "field": "input_ids"},
 "evaluation": {"enabled": false}, "export_formats": ["auto_round"]}
JSON
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$OUT/mem-$name.csv" &
  local smi=$!
  local t0=$(date +%s.%N)
  timeout "${RH_BENCH_TIMEOUT:-200}" $W quantize --model "/tmp/cq3-$name" --spec "/tmp/spec-$name.json" \
    --out "/tmp/out-$name" --device cuda >"$OUT/events-$name.jsonl" 2>"$OUT/quantize-$name.log"
  local rc=$?
  local t1=$(date +%s.%N)
  kill $smi 2>/dev/null
  echo "== $name: rc=$rc wall=$(echo "$t1 - $t0" | bc) s peak_nvidia_smi_MiB=$(sort -n "$OUT/mem-$name.csv" | tail -1)"
  grep '"block"' "$OUT/events-$name.jsonl" | cut -c1-200
  tail -3 "$OUT/quantize-$name.log"
}
bench a 256 512 1 false
bench b 128 2048 8 true
