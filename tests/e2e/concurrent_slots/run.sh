#!/usr/bin/env bash
# One CPU worker with --max-concurrent-jobs 2 runs two jobs at the same time:
# both succeed, on the same worker, and their running intervals (lease grant
# to completion, from the coordinator's job records) overlap. A cuda job
# submitted alongside gets an admission memory estimate and stays QUEUED
# (no worker fits it) instead of failing.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

rh_tiny_model tiny 3
rh_start_coordinator coord
rh_write_spec "$RH_TMP/job.json" "$RH_TMP/models/tiny" 50
# Both jobs are queued before the worker starts, so it can take them at once.
a=$(rh_submit "$RH_TMP/job.json" --label suite=slots)
b=$(rh_submit "$RH_TMP/job.json" --label suite=slots)
[ -n "$a" ] && [ -n "$b" ] && [ "$a" != "$b" ] || rh_fail "submit failed ($a, $b)"

# A cuda job: estimated from the model's config.json at submit.
rh_write_spec "$RH_TMP/cuda.json" "$RH_TMP/models/tiny" 50 '.resources = {device: "cuda"}'
c=$(rh_submit "$RH_TMP/cuda.json" --label suite=slots-cuda)
est=$(rh_job_field "$c" '(.estimated_memory_bytes // .estimatedMemoryBytes // 0) | tonumber')
[ "$est" -gt 0 ] || rh_fail "cuda job has no memory estimate: $(rh_job_json "$c")"

rh_start_worker w1 --max-concurrent-jobs 2 --threads 1
rh_wait_for_line "$RH_TMP/w1.log" "running up to 2 jobs at once" 10 \
  || rh_fail "worker did not announce 2 slots"
rh_wait_state "$a" '^JOB_STATE_SUCCEEDED$' 300 >/dev/null || rh_fail "job $a did not succeed"
rh_wait_state "$b" '^JOB_STATE_SUCCEEDED$' 300 >/dev/null || rh_fail "job $b did not succeed"

field() {
  rh_job_field "$1" "(.$2 // .$3 // 0) | tostring"
}
sa=$(field "$a" started_unix_seconds startedUnixSeconds)
fa=$(field "$a" finished_unix_seconds finishedUnixSeconds)
sb=$(field "$b" started_unix_seconds startedUnixSeconds)
fb=$(field "$b" finished_unix_seconds finishedUnixSeconds)
rh_log "job $a ran $sa..$fa, job $b ran $sb..$fb"
# Overlap: each started before the other finished.
awk -v sa="$sa" -v fa="$fa" -v sb="$sb" -v fb="$fb" \
  'BEGIN { exit !(sa > 0 && sb > 0 && sa < fb && sb < fa) }' \
  || rh_fail "the two jobs did not run at the same time"
for j in "$a" "$b"; do
  [ "$(rh_job_field "$j" '.worker_id // .workerId')" = w1 ] || rh_fail "job $j not run by w1"
  rh_verify_artifact "$(rh_job_field "$j" '.artifact.directory')"
done

# The cuda job never fit the cpu worker: still queued, not failed.
st=$(rh_job_state "$c")
[ "$st" = JOB_STATE_QUEUED ] || rh_fail "cuda job is $st, expected JOB_STATE_QUEUED"
rh_log "PASS concurrent_slots ($a and $b overlapped; cuda job estimate $est bytes, queued)"
