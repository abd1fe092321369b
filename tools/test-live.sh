#!/usr/bin/env bash
# The live suite against a real, shared FHIR server (what `make test-live` runs):
#
#   FHIR_BASE_URL=https://hapi.fhir.org/baseR4 tools/test-live.sh [PYTEST ARGS...]
#
# No local server is started. The server must be open (no authentication). First
# GET $FHIR_BASE_URL/metadata (10 s timeout): without FHIR_BASE_URL, without a network or with the
# server down (no answer, HTTP 5xx) this prints why and exits 0, running nothing; an answer that is
# not an R4 CapabilityStatement (wrong URL) exits 1. Otherwise it runs
# `pytest -m live tests/integration/test_live.py` with FHIR_LIVE_BASE_URL set, and exits with
# pytest's code. The tests write the demo population under run-unique ids and a run tag, sweep
# the server read-only, and delete everything they wrote (see tests/integration/test_live.py).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "test-live: $*" >&2; }

url="${FHIR_BASE_URL:-}"
url="${url%/}"
if [[ -z "$url" ]]; then
    say "FHIR_BASE_URL is not set; nothing to run."
    say "usage: FHIR_BASE_URL=https://hapi.fhir.org/baseR4 make test-live"
    exit 0
fi
if [[ ! "$url" =~ ^https?:// ]]; then
    say "FHIR_BASE_URL must be an http(s) URL, not '$url'"
    exit 2
fi

# Exit 0: an R4 server answers; 10: no network or the server is down; 1: something else answers.
check=0
.venv/bin/python - "$url" <<'EOF' || check=$?
import sys

import httpx

url = sys.argv[1]
try:
    response = httpx.get(
        f"{url}/metadata", headers={"Accept": "application/fhir+json"}, timeout=10
    )
except httpx.HTTPError as exc:
    print(f"test-live: no answer from {url}/metadata ({type(exc).__name__}: {exc})", file=sys.stderr)
    sys.exit(10)
if response.status_code >= 500:
    print(f"test-live: {url}/metadata answered HTTP {response.status_code}", file=sys.stderr)
    sys.exit(10)
if response.is_redirect:
    where = response.headers.get("Location", "?")
    print(f"test-live: {url}/metadata redirects to {where}: give the final base URL", file=sys.stderr)
    sys.exit(1)
try:
    body = response.json()
except ValueError:
    body = {}
if response.status_code != 200 or not isinstance(body, dict) or body.get("resourceType") != "CapabilityStatement":
    print(
        f"test-live: {url}/metadata answered HTTP {response.status_code} without a "
        "CapabilityStatement: is FHIR_BASE_URL the server's FHIR base?",
        file=sys.stderr,
    )
    sys.exit(1)
if not str(body.get("fhirVersion", "")).startswith("4.0"):
    print(f"test-live: {url} is FHIR {body.get('fhirVersion')}, not R4 (4.0.x)", file=sys.stderr)
    sys.exit(1)
EOF
case "$check" in
    0) ;;
    10)
        say "skipped: the live suite needs a network and a FHIR server that answers"
        exit 0
        ;;
    *) exit 1 ;;
esac

say "running the live suite against $url"
# FHIR_BASE_URL is what the local-server tests write to: the live run must not hand it on.
code=0
env -u FHIR_BASE_URL FHIR_LIVE_BASE_URL="$url" \
    .venv/bin/python -m pytest -m live tests/integration/test_live.py "$@" || code=$?
exit "$code"
