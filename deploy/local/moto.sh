#!/usr/bin/env bash
# Starts or stops a local moto server (a DynamoDB + DynamoDB Streams compatible API) for tests.
#
#   deploy/local/moto.sh start   # prints KIROKU_TEST_DYNAMODB_ENDPOINT=http://127.0.0.1:PORT
#   deploy/local/moto.sh stop    # stops the server started by `start`
#   deploy/local/moto.sh env     # prints the endpoint of the running server
#
# The virtualenv lives outside the repository (${XDG_CACHE_HOME:-$HOME/.cache}/kiroku/moto-venv)
# and is created, and `moto[server]` installed, only when missing: later runs start in a second.
# State (pid, port, log) lives in ${KIROKU_MOTO_STATE:-$cache/kiroku/moto-<uid>}.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/kiroku"
venv="${KIROKU_MOTO_VENV:-$cache/moto-venv}"
state="${KIROKU_MOTO_STATE:-$cache/moto-$(id -u)}"
python="${PYTHON:-python3}"

log() { echo "moto.sh: $*" >&2; }

ensure_venv() {
    if [[ -x "$venv/bin/moto_server" ]]; then
        return
    fi
    log "creating $venv and installing moto[server] (once)"
    mkdir -p "$cache"
    [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'moto[server]'
}

free_port() {
    "$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

running_pid() {
    local pid
    pid="$(cat "$state/pid" 2>/dev/null || true)"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}

endpoint() { echo "http://127.0.0.1:$(cat "$state/port")"; }

start() {
    ensure_venv
    mkdir -p "$state"
    if [[ -n "$(running_pid)" ]]; then
        log "already running (pid $(running_pid))"
        echo "KIROKU_TEST_DYNAMODB_ENDPOINT=$(endpoint)"
        return
    fi
    local port
    port="$(free_port)"
    # setsid: the server gets its own process group, so `stop` ends it and its children only.
    # moto_serialized.py: moto's app with one request at a time (see that file for why).
    setsid "$venv/bin/python" "$here/moto_serialized.py" 127.0.0.1 "$port" >"$state/log" 2>&1 </dev/null &
    echo $! >"$state/pid"
    echo "$port" >"$state/port"
    for _ in $(seq 1 150); do
        if "$venv/bin/python" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/moto-api/', timeout=1)" 2>/dev/null; then
            log "listening on $(endpoint) (pid $(cat "$state/pid"))"
            echo "KIROKU_TEST_DYNAMODB_ENDPOINT=$(endpoint)"
            return
        fi
        if [[ -z "$(running_pid)" ]]; then
            log "moto_server exited; log follows"
            cat "$state/log" >&2
            exit 1
        fi
        sleep 0.2
    done
    log "moto_server did not answer within 30 s; log: $state/log"
    stop
    exit 1
}

stop() {
    local pid
    pid="$(running_pid)"
    if [[ -n "$pid" ]]; then
        kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        log "stopped (pid $pid)"
    fi
    rm -f "$state/pid" "$state/port"
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    env) [[ -n "$(running_pid)" ]] && echo "KIROKU_TEST_DYNAMODB_ENDPOINT=$(endpoint)" ;;
    install) ensure_venv ;;
    *) echo "usage: $0 start|stop|env|install" >&2; exit 2 ;;
esac
