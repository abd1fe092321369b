#!/usr/bin/env bash
# A local FHIR R4 server for the integration tests: sekmet-fhir, in-memory, on 127.0.0.1.
#
#   tools/fhir-server/server.sh start    start it (if not running); print its base URL on stdout
#   tools/fhir-server/server.sh stop     stop it (the whole process group) and wait until it is gone
#   tools/fhir-server/server.sh status   print the base URL and exit 0 if it answers, else exit 1
#
# The server runs from its own venv (.venv-fhir, rebuilt when requirements.txt is newer), detached
# in its own session so that it outlives this script. State (settings, PID, log) is kept in
# .fhir-server/. Environment: FHIR_PORT (default 8765; when unset and 8765 is taken, any free
# port), FHIR_START_TIMEOUT (seconds, default 60), PYTHON (default python3).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
REQUIREMENTS="$HERE/requirements.txt"
VENV="$ROOT/.venv-fhir"
STAMP="$VENV/.installed"
STATE="$ROOT/.fhir-server"
PID_FILE="$STATE/server.pid"
URL_FILE="$STATE/base_url"
LOG_FILE="$STATE/server.log"
SETTINGS="$STATE/settings.yaml"
PYTHON="${PYTHON:-python3}"
DEFAULT_PORT=8765
START_TIMEOUT="${FHIR_START_TIMEOUT:-60}"
STOP_TIMEOUT=15

say() { echo "fhir-server: $*" >&2; }
die() { say "$*"; exit 1; }

ensure_venv() {
    if [[ -x "$VENV/bin/sekmet" && -f "$STAMP" && "$STAMP" -nt "$REQUIREMENTS" ]]; then
        return
    fi
    say "building $VENV from $REQUIREMENTS"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    local pip_log="$STATE/pip.log"
    if ! "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input \
        -r "$REQUIREMENTS" >"$pip_log" 2>&1; then
        tail -n 30 "$pip_log" >&2
        die "pip install failed (full log: $pip_log)"
    fi
    touch "$STAMP"
}

# The PID in the PID file, when that process is alive and is our server (PIDs get reused).
running_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    is_sekmet "$pid" || return 1
    echo "$pid"
}

# Whether process $1 runs sekmet: /proc where there is one, else ps (slim images lack ps).
is_sekmet() {
    "$PYTHON" - "$1" <<'EOF'
import pathlib, subprocess, sys
proc = pathlib.Path("/proc", sys.argv[1], "cmdline")
if proc.exists():
    command = proc.read_bytes().replace(b"\0", b" ").decode(errors="replace")
else:
    ps = ["ps", "-p", sys.argv[1], "-o", "command="]
    command = subprocess.run(ps, capture_output=True, text=True, check=False).stdout
sys.exit(0 if "sekmet" in command else 1)
EOF
}

port_is_free() {
    "$PYTHON" - "$1" <<'EOF'
import socket, sys
with socket.socket() as s:
    # As uvicorn binds: SO_REUSEADDR, so a port left in TIME_WAIT by a stopped server counts as free.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", int(sys.argv[1])))
    except OSError:
        sys.exit(1)
EOF
}

any_free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

choose_port() {
    if [[ -n "${FHIR_PORT:-}" ]]; then
        port_is_free "$FHIR_PORT" || die "port $FHIR_PORT (FHIR_PORT) is already in use"
        echo "$FHIR_PORT"
    elif port_is_free "$DEFAULT_PORT"; then
        echo "$DEFAULT_PORT"
    else
        any_free_port
    fi
}

# Whether GET <base>/metadata answers 200 with an R4 CapabilityStatement.
answers() {
    "$PYTHON" - "$1" <<'EOF' 2>/dev/null
import json, sys, urllib.request
request = urllib.request.Request(sys.argv[1] + "/metadata", headers={"Accept": "application/fhir+json"})
with urllib.request.urlopen(request, timeout=2) as response:
    body = json.load(response)
ok = body.get("resourceType") == "CapabilityStatement" and body.get("fhirVersion") == "4.0.1"
sys.exit(0 if ok else 1)
EOF
}

write_settings() {
    # sekmet reads its settings from the YAML file named by SEKMET_CONFIG. base_url must carry the
    # port: the server builds every link (Bundle.link[next], Location, fullUrl) from it, not from
    # the port it listens on.
    cat >"$SETTINGS" <<EOF
base_url: $1
host: 127.0.0.1
port: $2
db_path: ":memory:"
data_dir: $STATE/data
log_inbound: false
simulator:
  enabled: false
EOF
}

start() {
    mkdir -p "$STATE"
    local pid
    if pid="$(running_pid)"; then
        local url
        url="$(cat "$URL_FILE")"
        answers "$url" || die "PID $pid is running but $url does not answer; run: $0 stop"
        say "already running (PID $pid)"
        [[ -z "${FHIR_PORT:-}" || "$url" == *":$FHIR_PORT/"* ]] ||
            say "warning: it listens at $url, not on FHIR_PORT=$FHIR_PORT"
        echo "$url"
        return
    fi
    rm -f "$PID_FILE" "$URL_FILE"
    ensure_venv
    local port url
    port="$(choose_port)"
    url="http://127.0.0.1:$port/fhir"
    write_settings "$url" "$port"
    # A new session (setsid) so the server is its own process group: stop can end it and its
    # workers together, and a Ctrl-C in the terminal that started it does not reach it.
    (
        cd "$STATE"
        exec env -u SEKMET_BASE_URL -u SEKMET_DB -u SEKMET_PORT -u SEKMET_PUBLIC_URL \
            SEKMET_CONFIG="$SETTINGS" nohup "$VENV/bin/python" -c \
            'import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])' \
            "$VENV/bin/sekmet" serve --host 127.0.0.1 --port "$port" \
            </dev/null >"$LOG_FILE" 2>&1
    ) &
    pid=$!
    echo "$pid" >"$PID_FILE"
    local deadline=$((SECONDS + START_TIMEOUT))
    until answers "$url"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 40 "$LOG_FILE" >&2 || true
            rm -f "$PID_FILE"
            die "the server exited during start (log: $LOG_FILE)"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 40 "$LOG_FILE" >&2 || true
            stop >/dev/null 2>&1 || true
            die "no answer from $url/metadata after ${START_TIMEOUT}s (log: $LOG_FILE)"
        fi
        sleep 0.25
    done
    echo "$url" >"$URL_FILE"
    say "sekmet-fhir running at $url (PID $pid, log $LOG_FILE)"
    echo "$url"
}

stop() {
    local pid
    if ! pid="$(running_pid)"; then
        rm -f "$PID_FILE" "$URL_FILE"
        say "not running"
        return
    fi
    # The server is the leader of its own process group (setsid): signal the group.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            say "PID $pid did not stop after ${STOP_TIMEOUT}s: sending SIGKILL"
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    rm -f "$PID_FILE" "$URL_FILE"
    say "stopped (PID $pid)"
}

status() {
    local pid url
    pid="$(running_pid)" || die "not running"
    url="$(cat "$URL_FILE" 2>/dev/null)" || die "PID $pid is running but has no base URL yet"
    answers "$url" || die "PID $pid is running but $url does not answer"
    echo "$url"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
