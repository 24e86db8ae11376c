#!/usr/bin/env bash
# SIGSTOP a worker mid-job: its lease expires, the job is requeued (attempt+1,
# new epoch) and finished by another worker; after SIGCONT the stalled
# worker's commit is refused (stale epoch) and the job keeps the second
# worker's result. roundhouse_lease_expirations_total counts the expiry.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

rh_tiny_model tiny 5
rh_start_coordinator coord --lease-timeout-seconds 2 --heartbeat-interval-seconds 0.5
rh_write_spec "$RH_TMP/job.json" "$RH_TMP/models/tiny" 120
rh_start_worker stalled
stalled_pid=$WORKER_PID
job=$(rh_submit "$RH_TMP/job.json")
rh_wait_state "$job" 'RUNNING' 60 >/dev/null
for _ in $(seq 1 300); do
  [ "$(rh_job_field "$job" '.progress.blocks_done // 0')" -ge 1 ] && break; sleep 0.1
done
epoch1=$(rh_job_field "$job" '.lease_epoch // .leaseEpoch')
kill -STOP "$stalled_pid"
child=$(pgrep -P "$stalled_pid" || true)
[ -n "$child" ] && kill -STOP $child
rh_log "stopped worker (epoch $epoch1)"

rh_wait_state "$job" 'QUEUED' 30 >/dev/null || rh_fail "lease did not expire"
curl -sf "http://$METRICS_ADDR/metrics" | grep -E '^roundhouse_lease_expirations_total [1-9]' >/dev/null \
  || rh_fail "lease expiry not counted"
rh_start_worker second
rh_wait_state "$job" 'SUCCEEDED' 300 >/dev/null || rh_fail "second worker did not finish"
epoch2=$(rh_job_field "$job" '.lease_epoch // .leaseEpoch')
[ "$epoch2" -gt "$epoch1" ] || rh_fail "epoch did not advance ($epoch1 -> $epoch2)"
[ "$(rh_job_field "$job" '.worker_id // .workerId')" = second ] || rh_fail "job not owned by the second worker"
art=$(rh_job_field "$job" '.artifact.directory')
before=$(rh_artifact_digest "$art")

[ -n "$child" ] && kill -CONT $child
kill -CONT "$stalled_pid"
# The resumed worker must be told its lease is gone, or have its commit refused.
rh_wait_for_line "$RH_TMP/stalled.log" '(stale|abandon|fenced|FAILED_PRECONDITION)' 60 \
  || rh_fail "stalled worker was not fenced"
sleep 1
[ "$(rh_job_state "$job")" = JOB_STATE_SUCCEEDED ] || rh_fail "job state changed after the stale worker resumed"
[ "$(rh_job_field "$job" '.lease_epoch // .leaseEpoch')" = "$epoch2" ] || rh_fail "epoch changed"
[ "$(rh_artifact_digest "$art")" = "$before" ] || rh_fail "artifact changed by the stale worker"
rh_log "PASS worker_stalled_fenced (epoch $epoch1 -> $epoch2)"
