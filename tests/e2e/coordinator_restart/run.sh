#!/usr/bin/env bash
# kill -9 the coordinator (a) between accept and dispatch and (b) during a
# run. After each restart on the same SQLite file no accepted job is lost,
# none runs twice, and terminal jobs keep their manifests.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

rh_tiny_model tiny 4
rh_write_spec "$RH_TMP/job.json" "$RH_TMP/models/tiny" 100

# (a) accepted, not yet dispatched (no worker yet).
rh_start_coordinator coord --lease-timeout-seconds 4 --heartbeat-interval-seconds 0.5
jobs=()
for i in 1 2 3; do jobs+=("$(rh_submit "$RH_TMP/job.json" --label batch=a)"); done
kill -KILL "$COORD_PID"; wait "$COORD_PID" 2>/dev/null || true
rh_start_coordinator coord
for j in "${jobs[@]}"; do
  [ "$(rh_job_state "$j")" = JOB_STATE_QUEUED ] || rh_fail "job $j lost or changed after kill -9"
done
rh_log "(a) 3 accepted jobs survived kill -9"

# (b) during a run.
rh_start_worker w1
rh_wait_state "${jobs[0]}" 'RUNNING' 60 >/dev/null
sleep 1
kill -KILL "$COORD_PID"; wait "$COORD_PID" 2>/dev/null || true
sleep 1
rh_start_coordinator coord --lease-timeout-seconds 4 --heartbeat-interval-seconds 0.5
for j in "${jobs[@]}"; do
  rh_wait_state "$j" 'SUCCEEDED' 300 >/dev/null || rh_fail "job $j did not finish after restart"
done
# Nobody ran twice: every job was leased exactly once (one attempt).
for j in "${jobs[@]}"; do
  a=$(rh_job_field "$j" '.attempt')
  [ "$a" = 1 ] || rh_fail "job $j has attempt $a: it was run twice"
done
# Terminal jobs and manifests survive another restart.
art=$(rh_job_field "${jobs[0]}" '.artifact.directory')
kill -KILL "$COORD_PID"; wait "$COORD_PID" 2>/dev/null || true
rh_start_coordinator coord
[ "$(rh_job_state "${jobs[0]}")" = JOB_STATE_SUCCEEDED ] || rh_fail "terminal state lost"
[ "$(rh_job_field "${jobs[0]}" '.artifact.directory')" = "$art" ] || rh_fail "manifest lost"
[ "$(rh_job_field "${jobs[0]}" '.artifact.files | length')" -gt 0 ] || rh_fail "manifest files lost"
rh_log "PASS coordinator_restart"
