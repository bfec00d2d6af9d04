#!/usr/bin/env bash
# Configures and builds sluice into build/ (binaries in build/bin/). Extra args go to cmake.
#   SLUICE_BUILD_DIR   build directory (default: build)
#   SLUICE_JOBS        parallel jobs (default: number of cores)
#   SLUICE_TARGETS     ninja targets (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${SLUICE_BUILD_DIR:-build}
cmake -G Ninja -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-RelWithDebInfo}" "$@" >/dev/null
# shellcheck disable=SC2086
ninja -C "$BUILD_DIR" -j "${SLUICE_JOBS:-$(nproc)}" ${SLUICE_TARGETS:-}
