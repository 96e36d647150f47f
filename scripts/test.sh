#!/usr/bin/env bash
# Builds every crate, then runs every test and prints one summary line of all test binaries.
#
# `--no-fail-fast` runs every test binary even after one fails, so the summary covers the
# whole suite.
#
# The end-to-end tests run the built `envproxy`, `envproxy-agent` and `libenvproxy.so` in real
# programs, and `cargo test` alone does not build a cdylib, so the build comes first.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --all-targets

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

# cargo prints one "test result:" line per test binary. The last one often belongs to a
# doc-test binary with 0 tests, so the counts are added up into one line for the whole run.
awk '/^test result:/ { passed += $4; failed += $6 }
     END { printf "summary: %d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
