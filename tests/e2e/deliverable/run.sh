#!/usr/bin/env bash
# A job's artifact is a publishable deliverable: README.md model card,
# test_results.json, quantization_config.json and .gitattributes next to the
# checkpoint, all listed (with sizes) by `roundhouse get`; `roundhouse
# upload` prints the hub upload command and, with --execute, refuses an
# unreachable endpoint naming it.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

rh_tiny_model tiny 2
rh_start_coordinator coord
rh_start_worker w1
# Evaluation on (the default) with a threshold a random-init model passes:
# this suite is about the files, not the gate.
rh_write_spec "$RH_TMP/job.json" "$RH_TMP/models/tiny" 10 \
  '.evaluation = {enabled: true, min_token_cosine_similarity: 0.5, eval_samples: 4}'

rh_cli submit "$RH_TMP/job.json" --wait >"$RH_TMP/submit.out" 2>&1 \
  || { cat "$RH_TMP/submit.out" >&2; rh_fail "submit --wait did not exit 0"; }
job=$(head -1 "$RH_TMP/submit.out")
st=$(rh_job_state "$job")
[ "$st" = JOB_STATE_SUCCEEDED ] || rh_fail "state $st"
art=$(rh_job_field "$job" '.artifact.directory')
[ -d "$art" ] || rh_fail "artifact dir $art missing"
rh_verify_artifact "$art"
# The end of `submit --wait` lists the files and the upload command.
grep -qE '^  README\.md +[0-9.]+ (B|KiB)$' "$RH_TMP/submit.out" \
  || { cat "$RH_TMP/submit.out" >&2; rh_fail "submit --wait did not list README.md"; }
grep -q "roundhouse upload --job $job" "$RH_TMP/submit.out" \
  || rh_fail "submit --wait did not print the upload hint"

# The deliverable files, with the content the hub needs.
for f in README.md test_results.json quantization_config.json .gitattributes; do
  [ -s "$art/$f" ] || rh_fail "artifact lacks $f"
done
head -1 "$art/README.md" | grep -qx -- '---' || rh_fail "README.md has no YAML front matter"
grep -q '^library_name: transformers$' "$art/README.md" || rh_fail "README.md: no library_name"
grep -q '^## Evaluation against the original model' "$art/README.md" \
  || rh_fail "README.md: no evaluation section"
grep -q 'token cosine similarity' "$art/README.md" || rh_fail "README.md: no cosine row"
grep -q '^| bits | 4 |$' "$art/README.md" || rh_fail "README.md: no bits row"
grep -q '^| group size | 32 |$' "$art/README.md" || rh_fail "README.md: no group size row"
grep -q 'AutoModelForCausalLM.from_pretrained' "$art/README.md" \
  || rh_fail "README.md: no transformers snippet"
grep -q "content sha256 | \`$(jq -r '.inputs.calibration_sha256' "$art/manifest.json")\`" \
  "$art/README.md" || rh_fail "README.md: calibration hash differs from the manifest's"
jq -e . "$art/test_results.json" >/dev/null || rh_fail "test_results.json is not JSON"
diff <(jq -S . "$art/quantization_config.json") <(jq -S .quantization_config "$art/config.json") \
  || rh_fail "quantization_config.json differs from config.json's quantization_config"
grep -qx '\*.safetensors filter=lfs diff=lfs merge=lfs -text' "$art/.gitattributes" \
  || rh_fail ".gitattributes does not put *.safetensors in LFS"

# The job's result lists them with sizes (human and JSON).
rh_cli get "$job" >"$RH_TMP/get.out"
for f in README.md test_results.json quantization_config.json .gitattributes; do
  size=$(stat -c %s "$art/$f")
  grep -qE "^  ${f//./\\.} +[0-9.]+ (B|KiB)$" "$RH_TMP/get.out" \
    || { cat "$RH_TMP/get.out" >&2; rh_fail "get does not list $f with its size"; }
  got=$(rh_job_field "$job" ".artifact.files[] | select(.path == \"$f\") | .size_bytes")
  [ "$got" = "$size" ] || rh_fail "job result lists $f with size '$got', file has $size"
done

# upload: the command, for the job and for the directory.
real_art=$(realpath "$art")
want="huggingface-cli upload a/b $real_art . --repo-type model"
got=$(rh_cli upload --job "$job" --repo a/b 2>/dev/null) || rh_fail "upload --job exited $?"
[ "$got" = "$want" ] || rh_fail "upload printed '$got', wanted '$want'"
got=$(rh_cli upload --dir "$art" --repo a/b --endpoint http://127.0.0.1:1 2>/dev/null) \
  || rh_fail "upload --dir exited $?"
[ "$got" = "HF_ENDPOINT=http://127.0.0.1:1 $want" ] || rh_fail "upload --endpoint printed '$got'"

# --execute against an endpoint nobody listens on: exit 3 naming it.
set +e
rh_cli upload --job "$job" --repo a/b --execute --endpoint http://127.0.0.1:1 \
  >"$RH_TMP/exec.out" 2>"$RH_TMP/exec.err"
rc=$?
set -e
[ "$rc" = 3 ] || rh_fail "upload --execute to a dead endpoint exited $rc, wanted 3"
grep -q 'http://127.0.0.1:1' "$RH_TMP/exec.err" \
  || { cat "$RH_TMP/exec.err" >&2; rh_fail "upload --execute did not name the endpoint"; }

# An incomplete folder is refused naming the missing file.
cp -r "$art" "$RH_TMP/partial"
rm "$RH_TMP/partial/README.md"
set +e
rh_cli upload --dir "$RH_TMP/partial" --repo a/b >/dev/null 2>"$RH_TMP/partial.err"
rc=$?
set -e
[ "$rc" = 1 ] || rh_fail "upload of an incomplete folder exited $rc, wanted 1"
grep -q 'missing README.md' "$RH_TMP/partial.err" || rh_fail "missing README.md not named"
rh_log "PASS deliverable ($job -> $art)"
