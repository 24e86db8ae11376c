#!/usr/bin/env bash
# On the GPU machine (device tool; carry .deps): builds the CUDA engine, runs
# the CUDA unit tests (fused QDQ kernels, fused attention, graph/fused vs
# plain tuning), then times block tuning for the two configurations of
# bench/gpu-tuning.md under several execution strategies, with the memory
# estimate next to the measured peaks. Results: $OUT/summary.txt and
# $OUT/logs.tgz.
#   RH_BENCH_LAYERS   blocks of the generated model (3)
#   RH_BENCH_CONFIGS  "a b" (default both)
#   RH_BENCH_VARIANTS "plain fused nograph" (default); RH_VARIANTS_a/_b per
#                     configuration. plain: libtorch ops and eager attention
#                     (the earlier baseline); sdpa: plain + fused attention;
#                     nograph: all fused kernels, no CUDA graph;
#                     noblockops: everything but the fused RMSNorm / RoPE /
#                     SwiGLU / loss kernels (fused_block_ops.h); fused /
#                     fused2: everything (twice, to compare artifact bytes)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/rh-out}; mkdir -p "$OUT"
FINAL_OUT=$OUT; OUT=/tmp/rh-logs; mkdir -p "$OUT"
trap 'tar czf "$FINAL_OUT/logs.tgz" -C /tmp rh-logs; cp "$OUT/summary.txt" "$FINAL_OUT/" 2>/dev/null' EXIT
S=$OUT/summary.txt
source scripts/gpu/env.sh
{ nvidia-smi -L; python3 -c 'import torch; print("torch", torch.__version__)'; echo "NCCL_ROOT=$NCCL_ROOT"; } 2>&1 | tee "$OUT/env.txt"
t0=$(date +%s)
rh_gpu_configure build-gpu -DROUNDHOUSE_BUILD_TESTS=ON >"$OUT/configure.log" 2>&1 \
  || { tail -40 "$OUT/configure.log"; exit 1; }
grep -E "NCCL" "$OUT/configure.log" | tee -a "$S"
cmake --build build-gpu --target roundhouse-worker ${RH_EXTRA_TARGETS:-} -j16 >"$OUT/build.log" 2>&1 \
  || { grep -m30 -E 'error' "$OUT/build.log"; tail -20 "$OUT/build.log"; exit 1; }
echo "build worker: $(( $(date +%s) - t0 )) s" | tee -a "$S"
cmake --build build-gpu --target engine_test -j16 >"$OUT/build-test.log" 2>&1 \
  || { grep -m30 -E 'error' "$OUT/build-test.log" | tee -a "$S"; }
echo "build: $(( $(date +%s) - t0 )) s" | tee -a "$S"
echo "== CUDA unit tests" | tee -a "$S"
timeout 240 build-gpu/worker/engine/engine_test --gtest_brief=1 \
  --gtest_filter='Fused*:*Cuda*:GradReducer*:SignRound*:Quantizer*:DecoderBlock*' >"$OUT/cuda_tests.log" 2>&1
echo "cuda tests rc=$?" | tee -a "$S"
grep -E "^\[  (FAILED|PASSED|SKIPPED) |Failure|error:|Expected|Which is|actual" "$OUT/cuda_tests.log" | head -40 | tee -a "$S"
W=build-gpu/worker/roundhouse-worker
gen() {  # name samples seqlen
  [ -d "/tmp/cq3-$1" ] && return 0
  $W generate --family colqwen3 --preset colqwen3-4b --layers "${RH_BENCH_LAYERS:-3}" \
    --dtype bfloat16 --seed 1 --calib-samples "$2" --calib-seqlen "$3" --out "/tmp/cq3-$1" \
    >"$OUT/gen-$1.log" 2>&1 || { tail -5 "$OUT/gen-$1.log"; return 1; }
}
spec() {  # file samples seqlen batch sym
  cat >"$1" <<JSON
{"scheme": {"bits": 4, "group_size": 128, "sym": $5, "iters": 200, "nsamples": $2,
 "seqlen": $3, "batch_size": $4, "seed": 42},
 "calibration": {"path": "calib.jsonl", "field": "input_ids"},
 "evaluation": {"enabled": false}, "export_formats": ["auto_round"]}
JSON
}
run() {  # config variant
  local c=$1 v=$2 env=()
  case $v in
    plain) env=(RH_DISABLE_FUSED_QDQ=1 RH_DISABLE_FUSED_STEP=1 RH_DISABLE_CUDA_GRAPHS=1 RH_DISABLE_FUSED_ATTENTION=1 RH_DISABLE_FUSED_BLOCK_OPS=1) ;;
    sdpa) env=(RH_DISABLE_FUSED_QDQ=1 RH_DISABLE_FUSED_STEP=1 RH_DISABLE_CUDA_GRAPHS=1 RH_DISABLE_FUSED_BLOCK_OPS=1) ;;
    noblockops) env=(RH_DISABLE_FUSED_BLOCK_OPS=1) ;;
    nograph) env=(RH_DISABLE_CUDA_GRAPHS=1) ;;
    fused|fused2) env=() ;;
  esac
  local tag=$c-$v
  local t0=$(date +%s.%N)
  env "${env[@]}" timeout "${RH_BENCH_TIMEOUT:-200}" $W quantize --model "/tmp/cq3-$c" \
    --spec "/tmp/spec-$c.json" --out "/tmp/out-$tag" --device cuda \
    >"$OUT/events-$tag.jsonl" 2>"$OUT/quantize-$tag.log"
  local rc=$? t1=$(date +%s.%N)
  python3 - "$OUT/events-$tag.jsonl" "$tag" "$rc" "$(python3 -c "print($t1 - $t0)")" <<'PY' | tee -a "$S"
import json, sys
path, tag, rc, wall = sys.argv[1:]
blocks = [json.loads(l) for l in open(path) if '"block"' in l and l.startswith('{')]
blocks = [b for b in blocks if b.get("event") == "block"]
secs = [b["seconds"] for b in blocks]
mean_rest = sum(secs[1:]) / max(1, len(secs) - 1) if len(secs) > 1 else (secs[0] if secs else 0)
print(f"{tag:14s} rc={rc} wall={float(wall):6.1f}s blocks=" +
      " ".join(f"{s:.2f}" for s in secs) + f" mean(1..)={mean_rest:.2f}s peak=" +
      " ".join(f"{b.get('peak_device_bytes',0)/2**30:.2f}" for b in blocks) + "GiB graph=" +
      ",".join(str(b.get("cuda_graph")) for b in blocks[:1]) + " loss_after=" +
      " ".join(f"{b['loss_after']:.4e}" for b in blocks))
rest = blocks[1:] or blocks
phases = {}
for b in rest:
    for k, v in (b.get("phase_seconds") or {}).items():
        phases[k] = phases.get(k, 0) + v / len(rest)
if phases:
    print(f"{'':14s} phases(mean 1..): " + " ".join(f"{k}={v:.3f}" for k, v in sorted(phases.items())))
PY
  [ "$rc" = 0 ] || tail -3 "$OUT/quantize-$tag.log" | tee -a "$S"
}
for c in ${RH_BENCH_CONFIGS:-a b}; do
  case $c in
    a) gen a 256 512 && spec /tmp/spec-a.json 256 512 1 false ;;
    b) gen b 128 2048 && spec /tmp/spec-b.json 128 2048 8 true ;;
  esac
  if [ -x "$W" ] && $W estimate --help >/dev/null 2>&1; then
    for lm in "" "--low-memory"; do
      echo "estimate $c $lm: $($W estimate --model /tmp/cq3-$c --spec /tmp/spec-$c.json --device cuda $lm 2>&1 | tr -d '\n' | cut -c1-400)" | tee -a "$S"
    done
  fi
  vv=RH_VARIANTS_$c
  for v in ${!vv:-${RH_BENCH_VARIANTS:-plain fused nograph}}; do run "$c" "$v"; done
  if [ -d /tmp/out-$c-fused ] && [ -d /tmp/out-$c-fused2 ]; then
    if diff -r -q /tmp/out-$c-fused /tmp/out-$c-fused2 >/dev/null; then
      echo "$c: fused and fused2 artifacts byte-identical" | tee -a "$S"
    else
      echo "$c: fused and fused2 artifacts DIFFER" | tee -a "$S"
      diff -r -q /tmp/out-$c-fused /tmp/out-$c-fused2 | head -5 | tee -a "$S"
    fi
  fi
done
echo "total: $(( $(date +%s) - t0 )) s" | tee -a "$S"
