#!/usr/bin/env bash
# Here (Debian 12): download the Debian packages the GPU machine lacks into
# .deps/debs (git-ignored; pass `carry: [".deps"]` to the device tool).
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .deps/debs && cd .deps/debs
apt-get download libgrpc++1.51 libgrpc29 libgrpc++-dev libgrpc-dev libprotobuf32 \
  libprotobuf-dev libprotoc32 protobuf-compiler protobuf-compiler-grpc libabsl20220623 \
  libabsl-dev libre2-9 libre2-dev libc-ares2 libc-ares-dev libupb-dev \
  libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libprometheus-cpp-push1.0 \
  prometheus-cpp-dev libcivetweb1 libcivetweb-dev civetweb nlohmann-json3-dev \
  libsqlite3-dev libsqlite3-0 libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 \
  libpcre2-posix3 libutf8proc-dev libutf8proc2 libgtest-dev libgmock-dev googletest
