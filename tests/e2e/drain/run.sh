#!/usr/bin/env bash
# SIGTERM on a worker drains: the engine stops at the next block boundary
# after its checkpoint, the job goes back to the queue without using the
# retry budget, and another worker resumes it to the same bytes.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

rh_tiny_model tiny 6
rh_start_coordinator coord --heartbeat-interval-seconds 0.5
rh_write_spec "$RH_TMP/job.json" "$RH_TMP/models/tiny" 150 '.max_retries = 0'
rh_start_worker first
first=$WORKER_PID
job=$(rh_submit "$RH_TMP/job.json")
for _ in $(seq 1 600); do
  [ "$(rh_job_field "$job" '.progress.blocks_done // 0')" -ge 1 ] && break; sleep 0.1
done
kill -TERM "$first"
for _ in $(seq 1 300); do kill -0 "$first" 2>/dev/null || break; sleep 0.1; done
kill -0 "$first" 2>/dev/null && rh_fail "worker did not exit after draining"
st=$(rh_job_state "$job")
[ "$st" = JOB_STATE_QUEUED ] || rh_fail "drained job is $st, want QUEUED"
[ "$(rh_job_field "$job" '.retries_counted // .retriesCounted // 0')" = 0 ] || rh_fail "drain counted as a retry"
rh_start_worker second
rh_wait_state "$job" 'SUCCEEDED' 300 >/dev/null || rh_fail "job not finished after drain"
grep -qiE 'resum' "$RH_TMP/second.log" || rh_fail "second worker did not resume"
rh_verify_artifact "$(rh_job_field "$job" '.artifact.directory')"
rh_log "PASS drain"
