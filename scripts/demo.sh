#!/usr/bin/env bash
# The main job on the embedded default: installs the Debian packages, builds,
# then runs a coordinator (SQLite) and one local worker on loopback, creates a
# demo model and demo calibration data, submits a quantization job, shows its
# progress and prints where the artifacts are.
#   scripts/demo.sh              everything under ./out/demo
#   RH_DEMO_DIR=/tmp/x scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
bash scripts/install-deps.sh
bash scripts/build.sh
export RH_BUILD_DIR=${RH_BUILD_DIR:-$ROOT/build}
DEMO_DIR=${RH_DEMO_DIR:-$ROOT/out/demo}
rm -rf "$DEMO_DIR/run"
mkdir -p "$DEMO_DIR/run"
export RH_TMP=$DEMO_DIR/run RH_KEEP=1
source tests/e2e/lib.sh

echo "== 1. demo model: a random-init Qwen3-style checkpoint (4 blocks)"
rh_generate_model demo-qwen3 qwen3 --layers 4 --hidden 128 --intermediate 384 \
  --heads 4 --kv-heads 2 --head-dim 32 --vocab 320 --seed 1
MODEL=$RH_TMP/models/demo-qwen3
"$WORKER_BIN" inspect --model "$MODEL" | head -40

echo "== 2. demo calibration data: the project's document-retrieval queries"
CALIB=$ROOT/worker/engine/tokenizer/demo/queries.jsonl
cp "$CALIB" "$MODEL/demo_queries.jsonl"

echo "== 3. coordinator (SQLite: $RH_TMP/coordinator.db) and one local worker"
rh_start_coordinator coordinator
rh_start_worker local-worker --metrics-listen "127.0.0.1:$(rh_free_port)"
echo "   coordinator $COORD_ADDR, metrics http://$METRICS_ADDR/metrics"

echo "== 4. submit: W4A16 group 32 AutoRound, 32 queries stratified by source"
jq -n --arg model "$MODEL" '{
  model: $model,
  scheme: {bits: 4, group_size: 32, sym: true, iters: 50, nsamples: 32,
           seqlen: 64, batch_size: 8, seed: 42},
  calibration: {path: "demo_queries.jsonl", field: "query",
                selection: "stratified", stratify_column: "source",
                template: "colqwen3_query"},
  export_formats: ["auto_round"],
  labels: {purpose: "demo"}
}' >"$RH_TMP/demo-job.json"
cat "$RH_TMP/demo-job.json"
rc=0
rh_cli submit "$RH_TMP/demo-job.json" --wait || rc=$?
JOB=$(rh_cli list --label purpose=demo --json | jq -r '(.jobs // .)[0] | (.job_id // .jobId)')
echo
rh_cli inspect "$JOB" || true
ART=$(rh_job_field "$JOB" '.artifact.directory')
echo
if [ "$rc" = 0 ]; then
  echo "Artifacts of job $JOB: $ART"
  ls -l "$ART"
else
  echo "The demo job did not succeed (exit $rc); logs are in $RH_TMP"
fi
exit "$rc"
