#!/usr/bin/env bash
# The whole test suite: installs dependencies, builds, checks formatting, runs the unit tier
# (also under AddressSanitizer + UndefinedBehaviorSanitizer), then the bpf and netns tiers.
# Privileged tiers need root; they skip loudly without it, and fail instead when
# SLUICE_REQUIRE_PRIVILEGED=1 (as in CI).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
scripts/check-format.sh

echo "== build (build/)"
scripts/build.sh
echo "== build with ASan+UBSan (build-asan/)"
SLUICE_BUILD_DIR=build-asan SLUICE_TARGETS=unit_tests CMAKE_BUILD_TYPE=Debug \
    scripts/build.sh -DSLUICE_SANITIZE=ON

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
CTEST=(ctest --output-on-failure --no-tests=error)

echo "== unit tier"
"${CTEST[@]}" --test-dir build -L unit -j "$(nproc)"
echo "== unit tier under ASan+UBSan"
"${CTEST[@]}" --test-dir build-asan -L unit -j "$(nproc)"
echo "== bpf tier"
"${CTEST[@]}" --test-dir build -L bpf
echo "== netns tier"
"${CTEST[@]}" --test-dir build -L netns
echo "== all tiers passed"
