#!/usr/bin/env bash
# Runs a command against a fresh local moto server (DynamoDB-compatible) and stops it afterwards.
#
#   deploy/local/with-moto.sh cargo test -p kiroku-journal-dynamodb
#
# Exports KIROKU_TEST_DYNAMODB_ENDPOINT for the command and returns the command's exit code.
# Each invocation has its own server and state directory, so parallel runs do not collide.
set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: $0 COMMAND [ARGS...]" >&2
    exit 2
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KIROKU_MOTO_STATE="$(mktemp -d "${TMPDIR:-/tmp}/kiroku-moto.XXXXXX")"
export KIROKU_MOTO_STATE

cleanup() {
    "$here/moto.sh" stop || true
    rm -rf "$KIROKU_MOTO_STATE"
}
trap cleanup EXIT

line="$("$here/moto.sh" start)"
export "${line?}"
echo "with-moto.sh: $line" >&2

set +e
"$@"
status=$?
set -e
exit "$status"
