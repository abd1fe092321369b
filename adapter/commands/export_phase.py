"""The Bulk Data phase of `sweep --bulk` (issue 14): the export on disk before the sweep reads it,
and the job cleaned up after the run has recorded its end.

The sweep itself then reads the job folder as any folder of Bulk files (adapter.sources.files):
the cohort is found in the exported Conditions, as a folder sweep finds it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from adapter.bulk.export import Export, export_request, finish_export, run_export
from adapter.config import SiteConfig
from adapter.connect import fhir_client, source_profile
from adapter.fhir.capability import read_capabilities
from adapter.progress import Progress, TerminalProgress
from adapter.trials import Trial


async def export_for_sweep(
    args: argparse.Namespace, trial: Trial, site: SiteConfig, state_dir: Path, tracker: Progress
) -> Export:
    """The export `--bulk` asks for, downloaded (or taken up from an interrupted run)."""
    level, group = args.bulk
    request = export_request(trial, level, group)
    profile = source_profile(args, site)
    tracker.stage("export", None)

    def progress(text: str | None) -> None:
        # X-Progress is the server's text: shown on a terminal only, never in a log line.
        if isinstance(tracker, TerminalProgress):
            tracker.stage(f"export: {text}" if text else "export", None)

    async with fhir_client(args.source, site.source, env=os.environ, profile=profile) as client:
        # No _elements probe: it is a search of every patient, which an export needs not.
        caps = await read_capabilities(client, probe_elements=False)
        return await run_export(
            client,
            caps,
            request,
            state_dir=state_dir,
            trial_id=trial.id,
            config=site.source,
            profile_levels=profile.export,
            progress=progress,
        )


async def finish_for_sweep(args: argparse.Namespace, site: SiteConfig, export: Export) -> None:
    """DELETE the job and remove its files (unless `--keep-export`): the run is recorded."""
    profile = source_profile(args, site)
    async with fhir_client(args.source, site.source, env=os.environ, profile=profile) as client:
        await finish_export(client, export, keep=args.keep_export)
