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
# port), FHIR_START_TIMEOUT (seconds, default 60), PYTHON (default python3), FHIR_STATE_DIR (the
# state folder, default .fhir-server/).
#
# A second instance with SMART Backend Services enforced (every /fhir request but /metadata needs
# an access token from <root>/auth/token):
#
#   tools/fhir-server/server.sh start --smart     (or FHIR_SMART=1 tools/fhir-server/server.sh start)
#   tools/fhir-server/server.sh stop --smart
#   tools/fhir-server/server.sh status --smart
#
# Its state is in .fhir-server-smart/ (FHIR_STATE_DIR overrides), its port FHIR_SMART_PORT (default
# 8766, else any free port). FHIR_SMART_AUTH names a YAML file holding sekmet's `server_auth`
# settings: `smart_clients` (client_id, jwks with the public keys, scopes), `token_lifetime`
# (seconds), `types` (default [smart]). Without it, a client `trial-adapter` with an ES384 key
# made once in the state folder is registered (scopes system/*.cruds, token lifetime
# FHIR_SMART_TOKEN_LIFETIME, default 300 s), and `site-config.yaml` there is a site configuration
# that sweeps the server with it: trial-adapter sweep --config .fhir-server-smart/site-config.yaml
# A running instance keeps its clients: stop it to change them.
#
# Search parameters sekmet lacks (it has none for ResearchStudy or ResearchSubject, for one) can be
# added to either instance at start:
#
#   FHIR_SEARCH_PARAMS=params.json tools/fhir-server/server.sh start
#   tools/fhir-server/server.sh start --search-params=params.json
#
# The file holds FHIR R4 SearchParameter resources (one, a JSON list, or a Bundle of them): `code`,
# `base`, `type` (string, token, reference, date, number or uri) and `expression`, which must be
# plain element paths (`ResearchSubject.individual`, unions with `|`); a single `target` type
# restricts a reference parameter to it. sekmet keeps its parameters in a table compiled into the
# package and ignores SearchParameter resources POSTed to it, so the server is then started through
# a launcher (in the state folder) that adds them to that table before it serves: they are indexed,
# searchable (conditional create included) and listed in the CapabilityStatement. A running
# instance keeps its parameters: stop it to change them. Use FHIR_STATE_DIR (and FHIR_PORT) for an
# instance beside the default one.
set -euo pipefail

usage() {
    echo "usage: $0 start|stop|status [--smart] [--search-params=FILE]" >&2
    exit 2
}

COMMAND="${1:-}"
[[ $# -gt 0 ]] && shift
SMART="${FHIR_SMART:-0}"
SEARCH_PARAMS="${FHIR_SEARCH_PARAMS:-}"
for arg in "$@"; do
    case "$arg" in
        --smart) SMART=1 ;;
        --search-params=?*) SEARCH_PARAMS="${arg#--search-params=}" ;;
        *) usage ;;
    esac
done
[[ "$SMART" == 0 || "$SMART" == 1 ]] || { echo "FHIR_SMART must be 0 or 1" >&2; exit 2; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
REQUIREMENTS="$HERE/requirements.txt"
VENV="$ROOT/.venv-fhir"
STAMP="$VENV/.installed"
if [[ "$SMART" == 1 ]]; then
    STATE="${FHIR_STATE_DIR:-$ROOT/.fhir-server-smart}"
    DEFAULT_PORT=8766
    PORT_VAR=FHIR_SMART_PORT
    NAME="sekmet-fhir (SMART Backend Services)"
else
    STATE="${FHIR_STATE_DIR:-$ROOT/.fhir-server}"
    DEFAULT_PORT=8765
    PORT_VAR=FHIR_PORT
    NAME="sekmet-fhir"
fi
REQUESTED_PORT="${!PORT_VAR:-}"
PID_FILE="$STATE/server.pid"
URL_FILE="$STATE/base_url"
LOG_FILE="$STATE/server.log"
SETTINGS="$STATE/settings.yaml"
AUTH_COPY="$STATE/server_auth.yaml"
PARAMS_COPY="$STATE/search_params.source.json"
PARAMS_TABLE="$STATE/search_params.json"
LAUNCHER="$STATE/sekmet_with_search_params.py"
PYTHON="${PYTHON:-python3}"
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
    if [[ -n "$REQUESTED_PORT" ]]; then
        port_is_free "$REQUESTED_PORT" || die "port $REQUESTED_PORT ($PORT_VAR) is already in use"
        echo "$REQUESTED_PORT"
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

# The server_auth settings for the SMART instance: FHIR_SMART_AUTH, else a default client whose
# key is made once in the state folder. Prints the file's path.
smart_auth_file() {
    if [[ -n "${FHIR_SMART_AUTH:-}" ]]; then
        [[ -f "$FHIR_SMART_AUTH" ]] || die "FHIR_SMART_AUTH: $FHIR_SMART_AUTH is not a file"
        echo "$FHIR_SMART_AUTH"
        return
    fi
    local lifetime="${FHIR_SMART_TOKEN_LIFETIME:-300}"
    [[ "$lifetime" =~ ^[1-9][0-9]*$ ]] || die "FHIR_SMART_TOKEN_LIFETIME must be whole seconds"
    "$VENV/bin/python" - "$STATE" "$lifetime" <<'EOF' || die "cannot make the default SMART client"
import os, pathlib, sys

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sekmet.auth.keys import public_jwk

state, lifetime = pathlib.Path(sys.argv[1]), int(sys.argv[2])
key_file = state / "client-es384.pem"
if not key_file.exists():
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
kid = "trial-adapter-es384"
client = {"client_id": "trial-adapter", "scopes": "system/*.cruds",
          "jwks": {"keys": [public_jwk(key, "ES384", kid)]}}
auth = {"types": ["smart"], "token_lifetime": lifetime, "smart_clients": [client]}
(state / "default-server-auth.yaml").write_text(yaml.safe_dump(auth, sort_keys=False))
site = {"source": {"auth": {"type": "smart-backend", "client_id": "trial-adapter",
                            "private_key_file": key_file.name, "algorithm": "ES384", "kid": kid}}}
(state / "site-config.yaml").write_text(yaml.safe_dump(site, sort_keys=False))
EOF
    echo "$STATE/default-server-auth.yaml"
}

# Adds `server_auth` from file $1 to the settings, checked against sekmet's own settings model.
add_server_auth() {
    "$VENV/bin/python" - "$SETTINGS" "$1" <<'EOF'
import sys

import yaml
from pydantic import ValidationError
from sekmet.config import ServerAuth

settings_file, auth_file = sys.argv[1:]
try:
    auth = yaml.safe_load(open(auth_file, encoding="utf-8"))
except (OSError, yaml.YAMLError) as exc:
    sys.exit(f"{auth_file}: {exc}")
if not isinstance(auth, dict):
    sys.exit(f"{auth_file}: not a mapping of sekmet server_auth settings")
auth.setdefault("types", ["smart"])
if "smart" not in auth["types"] or "none" in auth["types"]:
    sys.exit(f"{auth_file}: types must include smart and not none")
try:
    ServerAuth.model_validate(auth)
except ValidationError as exc:
    sys.exit(f"{auth_file}: {exc}")
if not auth.get("smart_clients"):
    sys.exit(f"{auth_file}: no smart_clients registered")
with open(settings_file, encoding="utf-8") as f:
    settings = yaml.safe_load(f)
settings["server_auth"] = auth
with open(settings_file, "w", encoding="utf-8") as f:
    yaml.safe_dump(settings, f, sort_keys=False)
EOF
}

# Checks the SearchParameter resources of file $1 and writes them to $PARAMS_TABLE as sekmet's
# table rows (base, code, kind, element paths, target), then writes the launcher that adds them.
prepare_search_params() {
    "$VENV/bin/python" - "$1" "$PARAMS_TABLE" <<'EOF' || return 1
import json, re, sys

from sekmet.fhir.common import R4_RESOURCE_TYPES

source, table = sys.argv[1:]
KINDS = {"string", "token", "reference", "date", "number", "uri"}
PATH = re.compile(r"^[A-Za-z][A-Za-z0-9]*(\.[A-Za-z][A-Za-z0-9]*)+$")


def fail(message):
    sys.exit(f"{source}: {message}")


try:
    with open(source, encoding="utf-8") as f:
        data = json.load(f)
except (OSError, ValueError) as exc:
    fail(f"not a JSON file: {exc}")
if isinstance(data, dict) and data.get("resourceType") == "Bundle":
    data = [e.get("resource") for e in data.get("entry") or [] if isinstance(e, dict)]
elif isinstance(data, dict):
    data = [data]
if not isinstance(data, list) or not data:
    fail("holds no SearchParameter resources")
rows = []
for n, sp in enumerate(data, 1):
    if not isinstance(sp, dict) or sp.get("resourceType") != "SearchParameter":
        fail(f"item {n} is not a SearchParameter")
    code, kind, bases = sp.get("code"), sp.get("type"), sp.get("base")
    expression, targets = sp.get("expression"), sp.get("target") or []
    where = f"SearchParameter {code or n}"
    if not isinstance(code, str) or not re.fullmatch(r"[a-z][a-z0-9-]*", code):
        fail(f"{where}: code must be a search parameter name")
    if kind not in KINDS:
        fail(f"{where}: type {kind!r} is not one of {sorted(KINDS)}")
    if not isinstance(bases, list) or not bases or any(b not in R4_RESOURCE_TYPES for b in bases):
        fail(f"{where}: base must list R4 resource types")
    if not isinstance(expression, str):
        fail(f"{where}: no expression")
    parts = [p.strip() for p in expression.split("|")]
    if any(not PATH.match(p) for p in parts):
        fail(f"{where}: expression {expression!r} is not plain element paths joined by |")
    if not isinstance(targets, list) or any(t not in R4_RESOURCE_TYPES for t in targets):
        fail(f"{where}: target must list R4 resource types")
    target = targets[0] if kind == "reference" and len(targets) == 1 else None
    for base in bases:
        paths = [p.split(".", 1)[1] for p in parts if p.split(".", 1)[0] == base]
        if not paths:
            fail(f"{where}: expression {expression!r} names no path of base {base}")
        rows.append({"base": base, "code": code, "kind": kind, "paths": paths, "target": target})
with open(table, "w", encoding="utf-8") as f:
    json.dump(rows, f, indent=1)
EOF
    cat >"$LAUNCHER" <<'EOF'
# Written by tools/fhir-server/server.sh: adds the search parameters of the JSON table in argv[1]
# to sekmet's own table (sekmet.fhir.search_params.PARAMS, which the indexer, the search engine
# and the CapabilityStatement all read), then runs the sekmet command line with argv[2:].
import json, sys

from sekmet.fhir.search_params import PARAMS, SearchParam

with open(sys.argv[1], encoding="utf-8") as f:
    rows = json.load(f)
for row in rows:
    param = SearchParam(row["code"], row["kind"], tuple(row["paths"]), row["target"])
    PARAMS.setdefault(row["base"], {})[row["code"]] = param
added = sorted({f"{row['base']}.{row['code']}" for row in rows})
print(f"search parameters added: {', '.join(added)}", flush=True)

from sekmet.cli import app

sys.argv = ["sekmet", *sys.argv[2:]]
sys.exit(app())
EOF
}

start() {
    mkdir -p "$STATE"
    if [[ -n "$SEARCH_PARAMS" && ! -f "$SEARCH_PARAMS" ]]; then
        die "search parameters: $SEARCH_PARAMS is not a file"
    fi
    local pid
    if pid="$(running_pid)"; then
        local url
        url="$(cat "$URL_FILE")"
        answers "$url" || die "PID $pid is running but $url does not answer; run: $0 stop"
        if [[ "$SMART" == 1 && -n "${FHIR_SMART_AUTH:-}" ]] &&
            ! cmp -s "$FHIR_SMART_AUTH" "$AUTH_COPY"; then
            die "PID $pid is running with other SMART clients than $FHIR_SMART_AUTH; run: $0 stop --smart"
        fi
        if [[ -n "$SEARCH_PARAMS" ]] && ! cmp -s "$SEARCH_PARAMS" "$PARAMS_COPY"; then
            die "PID $pid is running with other search parameters than $SEARCH_PARAMS; run: $0 stop"
        fi
        say "already running (PID $pid)"
        [[ -z "$REQUESTED_PORT" || "$url" == *":$REQUESTED_PORT/"* ]] ||
            say "warning: it listens at $url, not on $PORT_VAR=$REQUESTED_PORT"
        echo "$url"
        return
    fi
    rm -f "$PID_FILE" "$URL_FILE"
    ensure_venv
    local port url
    port="$(choose_port)"
    url="http://127.0.0.1:$port/fhir"
    write_settings "$url" "$port"
    if [[ "$SMART" == 1 ]]; then
        local auth_file
        auth_file="$(smart_auth_file)"
        add_server_auth "$auth_file" || die "bad SMART settings in $auth_file"
        cp "$auth_file" "$AUTH_COPY"
    fi
    local -a serve=("$VENV/bin/sekmet")
    rm -f "$PARAMS_COPY" "$PARAMS_TABLE" "$LAUNCHER"
    if [[ -n "$SEARCH_PARAMS" ]]; then
        prepare_search_params "$SEARCH_PARAMS" || die "bad search parameters in $SEARCH_PARAMS"
        cp "$SEARCH_PARAMS" "$PARAMS_COPY"
        serve=("$VENV/bin/python" "$LAUNCHER" "$PARAMS_TABLE")
    fi
    # A new session (setsid) so the server is its own process group: stop can end it and its
    # workers together, and a Ctrl-C in the terminal that started it does not reach it.
    (
        cd "$STATE"
        exec env -u SEKMET_BASE_URL -u SEKMET_DB -u SEKMET_PORT -u SEKMET_PUBLIC_URL \
            SEKMET_CONFIG="$SETTINGS" nohup "$VENV/bin/python" -c \
            'import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])' \
            "${serve[@]}" serve --host 127.0.0.1 --port "$port" \
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
    say "$NAME running at $url (PID $pid, log $LOG_FILE)"
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

case "$COMMAND" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) usage ;;
esac
