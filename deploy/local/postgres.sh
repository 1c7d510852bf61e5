#!/usr/bin/env bash
# Makes sure a local PostgreSQL serves 127.0.0.1:5432 and has the test database; prints
#   KIROKU_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/kiroku_test
# (eval-able). Idempotent and quick when PostgreSQL is already up.
set -euo pipefail

host=127.0.0.1
port=${KIROKU_PG_PORT:-5432}
db=${KIROKU_PG_DATABASE:-kiroku_test}
user=${KIROKU_PG_USER:-postgres}

ready() { pg_isready -q -h "$host" -p "$port" 2>/dev/null; }

if ! command -v pg_isready >/dev/null || ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "postgres.sh: installing PostgreSQL from Debian's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    sudo_=""; [[ $(id -u) -ne 0 ]] && sudo_=sudo
    $sudo_ apt-get update -qq >&2
    $sudo_ apt-get install -y -qq postgresql >&2
fi

if ! ready; then
    version=$(ls /etc/postgresql | sort -V | tail -1)
    echo "postgres.sh: starting PostgreSQL $version" >&2
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
    for _ in $(seq 1 60); do ready && break; sleep 0.5; done
    ready || { echo "postgres.sh: PostgreSQL did not come up on $host:$port" >&2; exit 1; }
fi

psql_() { psql -h "$host" -p "$port" -U "$user" -v ON_ERROR_STOP=1 -qtA "$@"; }
if ! psql_ -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
    psql_ -d postgres -c "CREATE DATABASE $db" >&2
fi
echo "KIROKU_TEST_POSTGRES_URL=postgres://$user@$host:$port/$db"
