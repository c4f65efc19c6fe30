#!/usr/bin/env bash
# THE test command: dependencies, format, lints, unit tests, release build, end-to-end suite.
#   scripts/test.sh              everything
#   scripts/test.sh -k find -x   extra arguments go to pytest
# Fails on the first failing step.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
start=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - start ))s] $*"; }

step "install test dependencies"
scripts/install-test-deps.sh

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test"
cargo test --workspace

step "cargo build --release -p pacsgrid"
cargo build --release -p pacsgrid

step "end-to-end suite (pytest)"
export PACSGRID_BIN="$ROOT/target/release/pacsgrid"
export PACSGRID_SHARED="${PACSGRID_SHARED:-$(cd "$ROOT/.." && pwd)/shared}"
python3 -m pytest tests/ -v "$@"

step "all passed"
