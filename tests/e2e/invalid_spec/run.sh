#!/usr/bin/env bash
# Malformed specs are refused with INVALID_ARGUMENT naming the field, and
# nothing is stored: unknown field, bad regex, negative bits, model outside
# the roots, missing model, bad export format.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

rh_tiny_model tiny 2
mkdir -p "$RH_TMP/elsewhere"
cp -r "$RH_TMP/models/tiny" "$RH_TMP/elsewhere/tiny"
rh_start_coordinator coord
good="$RH_TMP/models/tiny"
check() {  # name, jq filter, expected text (regex) in the error
  local name=$1 filter=$2 want=$3 rc=0
  rh_write_spec "$RH_TMP/$name.json" "$good" 5 "$filter"
  rh_cli submit "$RH_TMP/$name.json" >"$RH_TMP/$name.out" 2>&1 || rc=$?
  [ "$rc" = 3 ] || { cat "$RH_TMP/$name.out"; rh_fail "$name: exit $rc, want 3"; }
  grep -q "INVALID_ARGUMENT" "$RH_TMP/$name.out" || { cat "$RH_TMP/$name.out"; rh_fail "$name: not INVALID_ARGUMENT"; }
  grep -qE "$want" "$RH_TMP/$name.out" || { cat "$RH_TMP/$name.out"; rh_fail "$name: message does not name /$want/"; }
  rh_log "ok $name: $(grep -m1 -o 'INVALID_ARGUMENT.*' "$RH_TMP/$name.out" | cut -c1-160)"
}
check unknown_field '.scheme.bitz = 4' 'bitz'
check bad_regex '.layer_config = [{"name": "mlp.(down", "bits": 8}]' 'layer_config\[0\]\.name'
check negative_bits '.scheme.bits = -4' 'scheme\.bits'
check outside_roots ".model = \"$RH_TMP/elsewhere/tiny\"" 'model'
check missing_model ".model = \"$RH_TMP/models/nope\"" 'model'
check bad_format '.export_formats = ["onnx"]' 'export_formats'
check bad_group '.scheme.group_size = 48' 'scheme\.group_size'
total=$(rh_cli list --json | jq '(.jobs // .) | length')
[ "$total" = 0 ] || rh_fail "$total invalid jobs were stored"
rh_log "PASS invalid_spec"
