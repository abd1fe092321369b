#!/usr/bin/env bash
# The whole test suite against a real local FHIR server (what `make test` runs).
#
#   tools/run-tests.sh [PYTEST ARGS...]
#
# Starts tools/fhir-server/server.sh, exports FHIR_BASE_URL for the integration tests, runs
# `.venv/bin/python -m pytest "$@"` and exits with pytest's code. The server is stopped on every
# way out (tests failing, Ctrl-C), unless it was already running before: then it is left running.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

server=(bash tools/fhir-server/server.sh)
started=0

# shellcheck disable=SC2329  # invoked by the EXIT trap
cleanup() {
    if [[ "$started" == 1 ]]; then
        "${server[@]}" stop || true
    fi
}
trap cleanup EXIT
# Without these, a signal would end the script without running the EXIT trap.
trap 'exit 130' INT
trap 'exit 143' TERM

if ! "${server[@]}" status >/dev/null 2>&1; then
    started=1
fi
FHIR_BASE_URL="$("${server[@]}" start)"
export FHIR_BASE_URL

code=0
.venv/bin/python -m pytest "$@" || code=$?
exit "$code"
