#!/usr/bin/env bash
# Builds every crate, then runs every test.
#
# The end-to-end tests run the built `envproxy`, `envproxy-agent` and `libenvproxy.so` in real
# programs, and `cargo test` alone does not build a cdylib, so the build comes first.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --all-targets
cargo test --workspace "$@"
