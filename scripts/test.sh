#!/usr/bin/env bash
# The whole test suite: installs the Debian packages, builds, fetches the npm
# test references, runs every unit and end-to-end test with CTest.
#   scripts/test.sh                 all tests
#   scripts/test.sh -L unit         only unit tests (any ctest arguments)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
BUILD_DIR=${RH_BUILD_DIR:-build}
if [ -x tests/tokenizer/setup.sh ] || [ -f tests/tokenizer/setup.sh ]; then
  bash tests/tokenizer/setup.sh
fi
ctest --test-dir "$BUILD_DIR" --output-on-failure --timeout 900 -j2 "$@"
