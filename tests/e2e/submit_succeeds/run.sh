#!/usr/bin/env bash
# Submit -> SUCCEEDED with a valid artifact; --wait exits 0; the job's
# manifest matches the files on disk; watch from a late watcher starts with
# the current state.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

rh_tiny_model tiny 3
rh_start_coordinator coord
rh_start_worker w1
rh_write_spec "$RH_TMP/job.json" "$RH_TMP/models/tiny" 20

rh_cli submit "$RH_TMP/job.json" --label suite=submit --wait >"$RH_TMP/submit.out" 2>&1 \
  || { cat "$RH_TMP/submit.out"; rh_fail "submit --wait did not exit 0"; }
job=$(rh_cli list --label suite=submit --json | jq -r '(.jobs // .)[0] | (.job_id // .jobId)')
[ -n "$job" ] && [ "$job" != null ] || rh_fail "job not listed"
st=$(rh_job_state "$job")
[ "$st" = JOB_STATE_SUCCEEDED ] || rh_fail "state $st"

art=$(rh_job_field "$job" '.artifact.directory')
[ -d "$art" ] || rh_fail "artifact dir $art missing"
rh_verify_artifact "$art"
jq -e '.quantization_config.packing_format == "auto_round:auto_gptq"' "$art/config.json" >/dev/null \
  || rh_fail "config.json lacks the auto_round:auto_gptq quantization_config"
grep -q "$art" "$RH_TMP/submit.out" || rh_fail "submit --wait did not print the artifact directory"

# Per-block losses reached the job record.
nblocks=$(rh_job_field "$job" '.progress.blocks | length')
[ "$nblocks" = 3 ] || rh_fail "expected 3 block reports, got $nblocks"

# A late watcher first gets the current (terminal) state, then the stream ends.
timeout 10 "$CLI_BIN" --coordinator "$COORD_ADDR" watch "$job" --json >"$RH_TMP/watch.out"
head -1 "$RH_TMP/watch.out" | jq -e '(.job.state // .state) == "JOB_STATE_SUCCEEDED"' >/dev/null \
  || rh_fail "late watcher did not start with the current state"
rh_log "PASS submit_succeeds ($job -> $art)"
