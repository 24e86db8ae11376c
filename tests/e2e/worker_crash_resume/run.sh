#!/usr/bin/env bash
# kill -9 the worker agent and its engine mid-job: the lease expires, another
# worker resumes from the last block checkpoint, and the artifact equals the
# one of an uninterrupted run with the same spec and seed, byte for byte.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

rh_tiny_model tiny 6
rh_start_coordinator coord --lease-timeout-seconds 3 --heartbeat-interval-seconds 0.5
rh_write_spec "$RH_TMP/job.json" "$RH_TMP/models/tiny" 150

# Reference: an uninterrupted run on its own worker.
rh_start_worker ref
ref_job=$(rh_submit "$RH_TMP/job.json")
rh_wait_state "$ref_job" 'SUCCEEDED' 300 >/dev/null || rh_fail "reference run"
ref_art=$(rh_job_field "$ref_job" '.artifact.directory')
kill -TERM "$WORKER_PID"; wait "$WORKER_PID" 2>/dev/null || true

rh_start_worker victim
job=$(rh_submit "$RH_TMP/job.json")
# Wait until at least two blocks are done, then kill -9 the agent and engine.
for _ in $(seq 1 600); do
  done_blocks=$(rh_job_field "$job" '.progress.blocks_done // 0')
  [ "$done_blocks" -ge 2 ] && break
  sleep 0.1
done
[ "$done_blocks" -ge 2 ] || rh_fail "job never reached block 2"
[ "$done_blocks" -lt 6 ] || rh_fail "job finished before the kill; make it slower"
pkill -KILL -P "$WORKER_PID" || true
kill -KILL "$WORKER_PID"
rh_log "killed worker at $done_blocks blocks"

rh_start_worker rescuer
rh_wait_state "$job" 'SUCCEEDED' 300 >/dev/null || rh_fail "job did not finish after the crash"
attempt=$(rh_job_field "$job" '.attempt')
[ "$attempt" -ge 2 ] || rh_fail "attempt is $attempt, expected a second attempt"
grep -qiE 'resum' "$RH_TMP/rescuer.log" || rh_fail "rescuer did not resume from a checkpoint"
art=$(rh_job_field "$job" '.artifact.directory')
rh_verify_artifact "$art"
diff <(rh_artifact_digest "$ref_art") <(rh_artifact_digest "$art") \
  || rh_fail "resumed artifact differs from the uninterrupted run"
rh_log "PASS worker_crash_resume (attempt $attempt, identical artifact)"
