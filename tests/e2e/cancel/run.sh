#!/usr/bin/env bash
# Cancel mid-job -> CANCELLED (not FAILED); the engine process is gone within
# the grace period and the worker takes the next job; --wait exits 11.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

rh_tiny_model tiny 6
rh_start_coordinator coord --heartbeat-interval-seconds 0.5
rh_start_worker w1 --cancel-grace-seconds 3
rh_write_spec "$RH_TMP/slow.json" "$RH_TMP/models/tiny" 400
rh_write_spec "$RH_TMP/fast.json" "$RH_TMP/models/tiny" 5
job=$(rh_submit "$RH_TMP/slow.json")
rh_wait_state "$job" 'RUNNING' 60 >/dev/null
sleep 1
set +e
( rh_cli watch "$job" >/dev/null 2>&1; echo $? >"$RH_TMP/watch.rc" ) &
set -e
t0=$(date +%s)
rh_cli cancel "$job" >/dev/null
rh_wait_state "$job" 'CANCELLED' 30 >/dev/null || rh_fail "job not cancelled"
# No engine child of the worker left.
for _ in $(seq 1 50); do pgrep -P "$WORKER_PID" >/dev/null || break; sleep 0.1; done
pgrep -P "$WORKER_PID" >/dev/null && rh_fail "engine still running after cancel"
t1=$(date +%s)
[ $((t1 - t0)) -le 10 ] || rh_fail "cancel took $((t1 - t0)) s"
# The worker is free: the next job runs.
next=$(rh_submit "$RH_TMP/fast.json")
rh_wait_state "$next" 'SUCCEEDED' 120 >/dev/null || rh_fail "worker not free after cancel"
for _ in $(seq 1 50); do [ -f "$RH_TMP/watch.rc" ] && break; sleep 0.1; done
[ "$(cat "$RH_TMP/watch.rc")" = 11 ] || rh_fail "watch exit code $(cat "$RH_TMP/watch.rc"), want 11"
rh_log "PASS cancel ($((t1 - t0)) s)"
