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

step "cargo test (with an S3 server and a PostgreSQL server for the conformance suites)"
# moto's S3 server on a free loopback port, and a throwaway PostgreSQL cluster
# (scripts/pg-test-server.sh), both stopped when this script exits however it exits; with
# PACSGRID_S3_TEST_REQUIRED=1 / PACSGRID_PG_TEST_REQUIRED=1 their suites fail rather than skip
# if they are not reachable. PostgreSQL stays up for the end-to-end suite too.
MOTO_PID=""
PG_DIR=""
stop_moto() { if [ -n "$MOTO_PID" ]; then kill "$MOTO_PID" 2>/dev/null || true; wait "$MOTO_PID" 2>/dev/null || true; MOTO_PID=""; fi; }
stop_pg() { if [ -n "$PG_DIR" ]; then scripts/pg-test-server.sh stop "$PG_DIR" || true; PG_DIR=""; fi; }
cleanup() { stop_moto; stop_pg; }
trap cleanup EXIT
# a signal ends the script through `exit`, so that the EXIT trap runs
trap 'exit 130' INT
trap 'exit 143' TERM
MOTO_PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
python3 -m moto.server -H 127.0.0.1 -p "$MOTO_PORT" >"${TMPDIR:-/tmp}/pacsgrid-moto-$$.log" 2>&1 &
MOTO_PID=$!
export PACSGRID_S3_TEST_ENDPOINT="http://127.0.0.1:$MOTO_PORT"
export PACSGRID_S3_TEST_BUCKET="pacsgrid-test"
export PACSGRID_S3_TEST_REQUIRED=1
python3 - <<'PYEOF'
import os, time
import boto3
endpoint = os.environ["PACSGRID_S3_TEST_ENDPOINT"]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                  aws_secret_access_key="test", region_name="us-east-1")
deadline = time.monotonic() + 60
while True:
    try:
        s3.create_bucket(Bucket=os.environ["PACSGRID_S3_TEST_BUCKET"])
        break
    except Exception as e:  # not listening yet
        if time.monotonic() > deadline:
            raise SystemExit(f"moto S3 server at {endpoint} did not come up: {e}")
        time.sleep(0.2)
print(f"S3 test server: {endpoint}")
PYEOF
# the output is read first, so that a failed start stops the script (set -e) before any eval
pg_env="$(scripts/pg-test-server.sh start)"
eval "$pg_env"
PG_DIR="$PACSGRID_PG_TEST_DIR"
export PACSGRID_PG_TEST_REQUIRED=1
echo "PostgreSQL test server: $PACSGRID_PG_TEST_URL"
AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test cargo test --workspace
stop_moto

step "cargo build --release -p pacsgrid"
cargo build --release -p pacsgrid

step "end-to-end suite (pytest)"
export PACSGRID_BIN="$ROOT/target/release/pacsgrid"
export PACSGRID_SHARED="${PACSGRID_SHARED:-$(cd "$ROOT/.." && pwd)/shared}"
python3 -m pytest tests/ -v "$@"

step "all passed"
