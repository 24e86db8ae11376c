# Shared helpers for the black-box suites (and scripts/demo.sh): start the real
# binaries on loopback, wait for them, clean up. Source it; it sets
#   RH_BUILD_DIR  build folder holding the binaries (default ./build)
#   RH_TMP        a fresh scratch folder removed on exit (unless RH_KEEP=1)
set -u
RH_BUILD_DIR=${RH_BUILD_DIR:-$PWD/build}
RH_SOURCE_DIR=${RH_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
COORD_BIN=${COORD_BIN:-$RH_BUILD_DIR/server/roundhouse-coordinator}
WORKER_BIN=${WORKER_BIN:-$RH_BUILD_DIR/worker/roundhouse-worker}
CLI_BIN=${CLI_BIN:-$RH_BUILD_DIR/client/roundhouse}
RH_TMP=${RH_TMP:-$(mktemp -d /tmp/roundhouse-e2e.XXXXXX)}
RH_PIDS=()

rh_log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
rh_fail() { rh_log "FAIL: $*"; exit 1; }

rh_cleanup() {
  local pid
  for pid in "${RH_PIDS[@]+"${RH_PIDS[@]}"}"; do
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
  done
  sleep 0.3
  for pid in "${RH_PIDS[@]+"${RH_PIDS[@]}"}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ "${RH_KEEP:-0}" != 1 ]; then rm -rf "$RH_TMP"; fi
}
trap rh_cleanup EXIT

# A TCP port nobody listens on (best effort; the kernel picks it).
rh_free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$(( (RANDOM % 20000) + 30000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"; return 0
    fi
  done
  return 1
}

# rh_wait_for_line FILE REGEX [TIMEOUT_S]
rh_wait_for_line() {
  local file=$1 re=$2 timeout=${3:-30} i=0
  while [ $i -lt $((timeout * 10)) ]; do
    if [ -f "$file" ] && grep -qE "$re" "$file"; then return 0; fi
    sleep 0.1; i=$((i + 1))
  done
  rh_log "timed out waiting for /$re/ in $file:"; tail -20 "$file" >&2 || true
  return 1
}

# rh_start_coordinator NAME [extra flags...]; sets COORD_ADDR, COORD_PID,
# METRICS_ADDR. The SQLite file is $RH_TMP/coordinator.db unless --db given.
rh_start_coordinator() {
  local name=$1; shift
  local port mport
  port=${RH_COORD_PORT:-$(rh_free_port)}; RH_COORD_PORT=$port
  mport=${RH_METRICS_PORT:-$(rh_free_port)}; RH_METRICS_PORT=$mport
  COORD_ADDR=127.0.0.1:$port
  METRICS_ADDR=127.0.0.1:$mport
  # A restart must wait for its own "listening" line, not the last run's.
  [ -f "$RH_TMP/$name.log" ] && mv "$RH_TMP/$name.log" "$RH_TMP/$name.log.$(date +%s%N)"
  "$COORD_BIN" --listen "$COORD_ADDR" --metrics-listen "$METRICS_ADDR" \
    --db "${RH_DB:-$RH_TMP/coordinator.db}" --model-root "$RH_TMP/models" "$@" \
    >>"$RH_TMP/$name.log" 2>&1 &
  COORD_PID=$!
  RH_PIDS+=("$COORD_PID")
  rh_wait_for_line "$RH_TMP/$name.log" "listening on" 30 || rh_fail "coordinator did not start"
}

# rh_start_worker NAME [extra flags...]; sets WORKER_PID.
rh_start_worker() {
  local name=$1; shift
  "$WORKER_BIN" agent --coordinator "$COORD_ADDR" --worker-id "$name" \
    --work-dir "$RH_TMP/work" --artifact-root "$RH_TMP/artifacts" "$@" \
    >>"$RH_TMP/$name.log" 2>&1 &
  WORKER_PID=$!
  RH_PIDS+=("$WORKER_PID")
  rh_wait_for_line "$RH_TMP/$name.log" "registered" 30 || rh_fail "worker $name did not register"
}

rh_cli() { "$CLI_BIN" --coordinator "$COORD_ADDR" "$@"; }

# rh_generate_model NAME FAMILY [extra generator flags]: a random-init
# checkpoint under $RH_TMP/models/NAME.
rh_generate_model() {
  local name=$1 family=$2; shift 2
  mkdir -p "$RH_TMP/models"
  "$WORKER_BIN" generate --family "$family" --out "$RH_TMP/models/$name" "$@" \
    >"$RH_TMP/generate-$name.log" 2>&1 || { cat "$RH_TMP/generate-$name.log" >&2; rh_fail "generate $name"; }
}

# The job as JSON (`roundhouse get --json`), and fields of it.
rh_job_json() { rh_cli get "$1" --json; }
rh_job_state() { rh_cli get "$1" --json | jq -r '.state // "JOB_STATE_UNSPECIFIED"'; }
rh_job_field() { rh_cli get "$1" --json | jq -r "$2"; }
# Submits a spec file and prints the new job id.
rh_submit() { rh_cli submit "$@" --json | jq -r '.job_id // .jobId // .job.job_id // .job.jobId'; }

# rh_wait_state JOB_ID REGEX [TIMEOUT_S]
rh_wait_state() {
  local job=$1 re=$2 timeout=${3:-120} i=0 st=""
  while [ $i -lt $((timeout * 5)) ]; do
    st=$(rh_job_state "$job" || true)
    if [[ "$st" =~ $re ]]; then echo "$st"; return 0; fi
    sleep 0.2; i=$((i + 1))
  done
  rh_log "job $job stayed in state '$st' (wanted /$re/)"
  return 1
}

# A small Llama checkpoint (random init, with calib.jsonl) at
# $RH_TMP/models/$1; $2 = number of blocks (default 4).
rh_tiny_model() {
  rh_generate_model "$1" llama --layers "${2:-4}" --hidden 64 --intermediate 128 \
    --heads 4 --kv-heads 2 --head-dim 16 --vocab 320 --seed 7 \
    --calib-samples 32 --calib-seqlen 32
}

# rh_write_spec FILE MODEL ITERS [extra jq filter]: a job spec using the
# model's calib.jsonl (pre-tokenized ids).
rh_write_spec() {
  local file=$1 model=$2 iters=$3 extra=${4:-.}
  jq -n --arg model "$model" --argjson iters "$iters" '{
      model: $model,
      scheme: {bits: 4, group_size: 32, sym: true, iters: $iters, nsamples: 16,
               seqlen: 32, batch_size: 4, seed: 42},
      calibration: {path: "calib.jsonl", field: "input_ids"},
      evaluation: {enabled: false},
      export_formats: ["auto_round"]
    }' | jq "$extra" >"$file"
}

# Every file listed in an artifact's manifest.json exists with that size and
# sha256, and nothing else but manifest.json is there.
rh_verify_artifact() {
  local dir=$1
  [ -f "$dir/manifest.json" ] || rh_fail "no manifest.json in $dir"
  local n=0 path size sha
  while IFS=$'\t' read -r path size sha; do
    [ -f "$dir/$path" ] || rh_fail "manifest lists missing file $path"
    [ "$(stat -c %s "$dir/$path")" = "$size" ] || rh_fail "size mismatch for $path"
    [ "$(sha256sum "$dir/$path" | cut -d' ' -f1)" = "$sha" ] || rh_fail "sha256 mismatch for $path"
    n=$((n + 1))
  done < <(jq -r '.files[] | [.path, (.size // .size_bytes), .sha256] | @tsv' "$dir/manifest.json")
  [ "$n" -gt 0 ] || rh_fail "manifest lists no files"
  local on_disk
  on_disk=$(cd "$dir" && find . -type f ! -name manifest.json | wc -l)
  [ "$on_disk" = "$n" ] || rh_fail "artifact has $on_disk files, manifest lists $n"
  ls "$dir"/*.staging* >/dev/null 2>&1 && rh_fail "staging leftovers in $dir"
  return 0
}

# Hashes of an artifact's model files (everything but manifest.json), sorted.
rh_artifact_digest() {
  (cd "$1" && find . -type f ! -name manifest.json -print0 | sort -z | xargs -0 sha256sum)
}
