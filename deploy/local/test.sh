#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script).
#
# Formatting, lints, then every test of the workspace against real components: SQLite files,
# PostgreSQL, a DynamoDB-compatible server (moto), the real binaries on random ports. Services a test needs are started by the scripts beside
# this one; a missing service is a failing test, never a skipped one.
set -euo pipefail
cd "$(dirname "$0")/../.."

step() { printf '\n== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "services"
# PostgreSQL for the PostgreSQL read store's tests (started here if it is down).
export "$(bash deploy/local/postgres.sh)"

step "cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# A DynamoDB-compatible server (moto) for the DynamoDB journal's tests, started and stopped here.
bash deploy/local/with-moto.sh cargo test --workspace --all-targets 2>&1 | tee "$log"
# One closing line for the whole run (each test binary prints its own `test result:` line).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "\nworkspace: %d passed, %d failed\n", p, f }' "$log"
