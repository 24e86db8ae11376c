#!/usr/bin/env bash
# A per-job deadline: a job that cannot finish in time ends
# DEADLINE_EXCEEDED (queued or running), the worker is released, and
# `submit --wait` exits 12.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

rh_tiny_model tiny 6
rh_start_coordinator coord --heartbeat-interval-seconds 0.5
rh_write_spec "$RH_TMP/slow.json" "$RH_TMP/models/tiny" 400 '.deadline_seconds = 3'
rh_write_spec "$RH_TMP/fast.json" "$RH_TMP/models/tiny" 5
# Queued past its deadline (no worker yet).
queued=$(rh_submit "$RH_TMP/slow.json")
sleep 4
rh_wait_state "$queued" 'DEADLINE_EXCEEDED' 10 >/dev/null || rh_fail "queued job kept past its deadline"
# Running past its deadline.
rh_start_worker w1 --cancel-grace-seconds 2
rc=0
rh_cli submit "$RH_TMP/slow.json" --wait >"$RH_TMP/wait.out" 2>&1 || rc=$?
[ "$rc" = 12 ] || { cat "$RH_TMP/wait.out"; rh_fail "--wait exit $rc, want 12"; }
for _ in $(seq 1 50); do pgrep -P "$WORKER_PID" >/dev/null || break; sleep 0.2; done
pgrep -P "$WORKER_PID" >/dev/null && rh_fail "engine still running past the deadline"
next=$(rh_submit "$RH_TMP/fast.json")
rh_wait_state "$next" 'SUCCEEDED' 120 >/dev/null || rh_fail "worker not released"
rh_log "PASS deadline"
