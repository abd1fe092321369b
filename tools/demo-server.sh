#!/usr/bin/env bash
# The demo against a real FHIR server (what `make demo-server` runs):
#
#   tools/demo-server.sh
#
# Starts the local sekmet-fhir server (tools/fhir-server/server.sh start), PUTs the demo population
# (fixtures/demo) on it through transaction Bundles, sweeps it with --source and --sink both the
# server, prints the sweep's summary and the ResearchSubjects the server now holds for the trial
# (tag urn:trial-adapter|pre-screen), and stops the server on every way out (failures, Ctrl-C),
# unless it was already running before: then it is left running, as tools/run-tests.sh does. The
# report goes to out/demo-server/. Exit code: the sweep's (0, or 3 when some patients could not be
# evaluated or written), 1 when the server or the loading fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TRIAL=hcc-ablation-lenvatinib-pd1
AS_OF=2026-06-15
OUT=out/demo-server
server=(bash tools/fhir-server/server.sh)
started=0

say() { echo "demo-server: $*" >&2; }

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
else
    say "the server is already running: it is left running afterwards"
fi
url="$("${server[@]}" start)"

say "loading fixtures/demo into $url"
.venv/bin/python - "$url" fixtures/demo <<'EOF'
import json
import pathlib
import sys

import httpx

base, folder = sys.argv[1], pathlib.Path(sys.argv[2])
resources = []
for path in sorted(folder.glob("*.ndjson")):
    resources += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
headers = {"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"}
with httpx.Client(headers=headers, timeout=120) as client:
    for start in range(0, len(resources), 500):
        chunk = resources[start : start + 500]
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                for r in chunk
            ],
        }
        response = client.post(base, json=bundle)
        if response.status_code != 200:
            sys.exit(f"demo-server: the transaction failed: HTTP {response.status_code} {response.text[:500]}")
        bad = [e["response"]["status"] for e in response.json().get("entry", [])
               if not e["response"]["status"].startswith(("200", "201"))]
        if bad:
            sys.exit(f"demo-server: {len(bad)} entries of the transaction failed: {bad[:5]}")
counts = {}
for r in resources:
    counts[r["resourceType"]] = counts.get(r["resourceType"], 0) + 1
print("demo-server: loaded " + ", ".join(f"{n} {t}" for t, n in sorted(counts.items())), file=sys.stderr)
EOF

say "sweeping $url (source and sink)"
code=0
.venv/bin/trial-adapter sweep --trial "$TRIAL" --as-of "$AS_OF" --source "$url" --sink "$url" \
    --out "$OUT" --quiet || code=$?
if [[ "$code" != 0 && "$code" != 3 ]]; then
    say "the sweep failed (exit $code)"
    exit "$code"
fi

.venv/bin/python - "$url" "mappings/trials/$TRIAL.yaml" <<'EOF'
import sys

import httpx
import yaml

base, trial_file = sys.argv[1], sys.argv[2]
TAG = "urn:trial-adapter|pre-screen"
study_id = yaml.safe_load(open(trial_file, encoding="utf-8"))["study"]


def search(client, url, params=None):
    """Every match of a search, following Bundle.link[next] (on this server only)."""
    found = []
    while url:
        response = client.get(url, params=params)
        response.raise_for_status()
        bundle = response.json()
        found += [e["resource"] for e in bundle.get("entry", [])
                  if e.get("search", {}).get("mode", "match") == "match"]
        url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
        if url and not url.startswith(base + "/"):
            sys.exit(f"demo-server: refusing a next link off the server: {url}")
        params = None
    return found


with httpx.Client(headers={"Accept": "application/fhir+json"}, timeout=60) as client:
    studies = [
        s for s in search(client, f"{base}/ResearchStudy", {"_tag": TAG, "_count": 200})
        if {"system": study_id["system"], "value": study_id["value"]} in s.get("identifier", [])
    ]
    if len(studies) != 1:
        sys.exit(f"demo-server: {len(studies)} ResearchStudies for {study_id['value']} on the server")
    study = studies[0]
    subjects = [
        s for s in search(client, f"{base}/ResearchSubject", {"_tag": TAG, "_count": 200})
        if s.get("study", {}).get("reference") == f"ResearchStudy/{study['id']}"
    ]
rows = sorted(
    (s["id"], s.get("status", ""), s.get("individual", {}).get("reference", "")) for s in subjects
)
print(f"\nResearchSubjects on the server for ResearchStudy/{study['id']} "
      f"({study_id['value']}), tag {TAG}: {len(rows)}")
widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(("id", "status", "individual"))]
for row in [("id", "status", "individual"), tuple("-" * w for w in widths), *rows]:
    print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
EOF
say "report: $OUT/results.json and $OUT/candidates.csv"
exit "$code"
