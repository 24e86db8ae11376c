#!/usr/bin/env bash
# The same idempotency key submitted by 16 concurrent clients -> one job.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

rh_tiny_model tiny 2
rh_start_coordinator coord
rh_write_spec "$RH_TMP/job.json" "$RH_TMP/models/tiny" 5
pids=()
for i in $(seq 1 16); do
  rh_submit "$RH_TMP/job.json" --idempotency-key same-key-1 >"$RH_TMP/id.$i" &
  pids+=($!)
done
wait "${pids[@]}"  # not a bare `wait`: the coordinator is a child too
ids=$(cat "$RH_TMP"/id.* | sort -u)
[ "$(echo "$ids" | wc -l)" = 1 ] || rh_fail "got several jobs: $ids"
[ -n "$ids" ] && [ "$ids" != null ] || rh_fail "no job id returned"
total=$(rh_cli list --json | jq '(.jobs // .) | length')
[ "$total" = 1 ] || rh_fail "store holds $total jobs"
# A different key makes a new job.
other=$(rh_submit "$RH_TMP/job.json" --idempotency-key other-key)
[ "$other" != "$ids" ] || rh_fail "different key returned the same job"
rh_log "PASS idempotent_submit ($ids)"
