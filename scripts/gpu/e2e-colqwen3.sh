#!/usr/bin/env bash
# On the GPU machine, after scripts/gpu/bench-tuning.sh built build-gpu:
# coordinator (SQLite) + CUDA worker + CLI on loopback quantize a full-size
# random-init ColQwen3-shaped checkpoint (36 blocks, hidden 2560, vision tower
# and projection included) with the plan's configuration and evaluation on.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/rh-out}; mkdir -p "$OUT"
source scripts/gpu/env.sh
[ -f build-gpu/build.ninja ] || rh_gpu_configure build-gpu >"$OUT/configure.log" 2>&1
cmake --build build-gpu --target roundhouse-worker roundhouse-coordinator roundhouse -j16 >"$OUT/build-e2e.log" 2>&1 \
  || { grep -m20 error "$OUT/build-e2e.log"; exit 1; }
export RH_BUILD_DIR=$PWD/build-gpu RH_TMP=/tmp/rh-e2e RH_KEEP=1
mkdir -p $RH_TMP/models
source tests/e2e/lib.sh
W=build-gpu/worker/roundhouse-worker
t0=$(date +%s)
rm -rf $RH_TMP/models/cq3 $RH_TMP/artifacts; $W generate --family colqwen3 --preset colqwen3-4b --layers ${RH_E2E_LAYERS:-36} --dtype bfloat16 \
  --seed 1 --calib-samples $(( ${RH_E2E_SAMPLES:-256} + 32 )) --calib-seqlen 512 --out $RH_TMP/models/cq3 >$OUT/gen.log 2>&1 \
  || { tail -5 $OUT/gen.log; exit 1; }
echo "generated in $(( $(date +%s) - t0 )) s: $(du -sh $RH_TMP/models/cq3 | cut -f1)"
cat >$RH_TMP/job.json <<JSON
{"model": "$RH_TMP/models/cq3",
 "scheme": {"bits": 4, "group_size": 128, "sym": false, "iters": ${RH_E2E_ITERS:-200},
            "nsamples": ${RH_E2E_SAMPLES:-256}, "seqlen": 512, "batch_size": 1, "seed": 42},
 "calibration": {"path": "calib.jsonl", "field": "input_ids"},
 "evaluation": {"enabled": true, "eval_samples": 16},
 "resources": {"device": "cuda", "gpu_count": 1},
 "export_formats": ["auto_round"]}
JSON
rm -f $RH_TMP/coordinator.db*; rh_start_coordinator coord
rh_start_worker w1 --device cuda
t1=$(date +%s)
rh_cli submit $RH_TMP/job.json --wait >$OUT/submit.out 2>&1; rc=$?
echo "submit --wait rc=$rc in $(( $(date +%s) - t1 )) s"
tail -25 $OUT/submit.out
art=$(ls -d $RH_TMP/artifacts/*/ 2>/dev/null | head -1)
echo "artifact: $art"; ls -la "$art" | head -20; du -sh "$art"
cp "$art/test_results.json" "$art/manifest.json" "$art/README.md" $OUT/ 2>/dev/null
agent_jobs=$RH_TMP/work; grep -h '"block"' $agent_jobs/*/*.log 2>/dev/null | tail -3
cp $RH_TMP/w1.log $OUT/worker.log; cp $RH_TMP/coord.log $OUT/coord.log
