#!/usr/bin/env bash
# Configures and builds roundhouse into ${RH_BUILD_DIR:-build}. Extra
# arguments go to the CMake configure step (e.g. -DROUNDHOUSE_ENABLE_CUDA=ON).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${RH_BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
