#!/usr/bin/env bash
# Scrapes of the coordinator's and the worker's /metrics pass
# `promtool check metrics`, carry the documented names, and count a job.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
command -v promtool >/dev/null || rh_fail "promtool missing (Debian package prometheus)"

rh_tiny_model tiny 2
rh_start_coordinator coord
wport=$(rh_free_port)
rh_start_worker w1 --metrics-listen "127.0.0.1:$wport"
rh_write_spec "$RH_TMP/job.json" "$RH_TMP/models/tiny" 5
job=$(rh_submit "$RH_TMP/job.json")
rh_wait_state "$job" 'SUCCEEDED' 120 >/dev/null
sleep 1
curl -sf "http://$METRICS_ADDR/metrics" >"$RH_TMP/coord.prom"
curl -sf "http://127.0.0.1:$wport/metrics" >"$RH_TMP/worker.prom"
for f in coord worker; do
  promtool check metrics <"$RH_TMP/$f.prom" || rh_fail "promtool rejects the $f scrape"
done
for m in roundhouse_jobs_submitted_total roundhouse_jobs_completed_total roundhouse_jobs_queued \
         roundhouse_job_queue_wait_seconds_bucket roundhouse_job_duration_seconds_bucket \
         roundhouse_lease_expirations_total roundhouse_workers roundhouse_build_info \
         roundhouse_job_retries_total; do
  grep -q "^$m" "$RH_TMP/coord.prom" || rh_fail "coordinator lacks $m"
done
grep -E '^roundhouse_jobs_completed_total\{.*outcome="succeeded".*\} 1' "$RH_TMP/coord.prom" >/dev/null \
  || rh_fail "succeeded completion not counted"
grep -qE '^roundhouse_blocks_completed_total [1-9]' "$RH_TMP/worker.prom" || rh_fail "worker blocks not counted"
grep -qE "$job" "$RH_TMP/coord.prom" "$RH_TMP/worker.prom" && rh_fail "a job id leaked into metric labels"
rh_log "PASS metrics"
