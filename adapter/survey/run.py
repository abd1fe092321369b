"""Running a survey: the trials and mappings loaded, the source read into a tally, the outputs made.

A folder is read whole (or up to `--sample` resources per type when given); a server is read by
type-wide searches, 10,000 resources per type unless `--sample` says otherwise, or, where it
answers one patient at a time, patient by patient (adapter.survey.per_patient).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from adapter import site_mappings
from adapter.cohorts import CohortSpec
from adapter.config import ServerConfig
from adapter.connect import fhir_client, is_url
from adapter.errors import IncompleteInputError, MappingError
from adapter.fhir.capability import read_capabilities
from adapter.servers import GENERIC, ServerProfile
from adapter.sources.base import Query
from adapter.sources.files import FolderSource
from adapter.sources.sample import DEFAULT_SAMPLE, TypeSample
from adapter.survey.analyse import KnownSystems, Survey, analyse
from adapter.survey.hints import Hint, load_hints
from adapter.survey.outputs import Sample
from adapter.survey.per_patient import (
    DEFAULT_PATIENTS,
    needs_per_patient,
    read_per_patient,
    require_cohort,
)
from adapter.survey.tally import CODED_TYPES, Tally
from adapter.trials import Trial, load_trial

Say = Callable[[str], None]
SURVEYED = ("Observation", *CODED_TYPES)


@dataclass(frozen=True, slots=True)
class Mappings:
    """What the survey judges a source against."""

    trials: tuple[Trial, ...]
    known: KnownSystems
    hints: Mapping[str, Hint]


def trial_names(merged: site_mappings.Mappings) -> list[str]:
    """Every bundled trial id, then the site folder's own."""
    return [p.stem for folder in merged.trial_dirs() for p in sorted(folder.glob("*.yaml"))]


def load_mappings(names: Sequence[str], mappings_dir: Path, site_dir: Path | None) -> Mappings:
    """The trials named (every trial when empty), the known systems and the hints; the
    mappings folders are read once for all of them."""
    merged = site_mappings.load_mappings(mappings_dir, site_dir)
    chosen = list(dict.fromkeys(names)) or trial_names(merged)
    if not chosen:
        raise MappingError(str(mappings_dir / "trials"), "no trial to survey")
    trials = tuple(load_trial(name, mappings=merged) for name in chosen)
    analytes = {name for trial in trials for name in trial.analytes}
    return Mappings(trials, known_systems(merged), load_hints(mappings_dir, site_dir, analytes))


def known_systems(merged: site_mappings.Mappings) -> KnownSystems:
    """URLs and other spellings of the systems the (merged) mappings declare, and URL -> name."""
    urls: set[str] = set()
    names: dict[str, str] = {}
    for name, model in merged.systems.items():
        for url in model.urls:
            urls.add(url)
            # A name for one URL alone wins (icd10cm over icd10, which has two URLs).
            if url not in names or len(model.urls) == 1:
                names[url] = name
    for url, others in merged.equivalents.items():
        urls.update((url, *others))
        for other in others:
            if url in names:
                names.setdefault(other, names[url])
    equivalents = {url: tuple(others) for url, others in merged.equivalents.items()}
    return KnownSystems(frozenset(urls), names, equivalents)


async def read_source(
    source: str,
    *,
    config: ServerConfig,
    env: Mapping[str, str],
    sample: int | None,
    say: Say,
    profile: ServerProfile = GENERIC,
    cohort: CohortSpec | None = None,
    categories: frozenset[str] = frozenset(),
    as_of: date | None = None,
    patients: int = DEFAULT_PATIENTS,
) -> tuple[Tally, dict[str, Sample]]:
    """The tally of the source's Observations, Conditions and Procedures, and what was read.

    A server whose `profile` (or `config.read`) reads one patient at a time is sampled by
    patients: at most `patients` members of `cohort`, read whole (adapter.survey.per_patient).
    """
    tally = Tally()
    read: dict[str, Sample] = {}
    if not is_url(source):
        folder = FolderSource(Path(source))
        ndjson = _ndjson_types(Path(source))
        try:
            for kind in SURVEYED:
                count, complete = 0, True
                unreadable_before = len(folder.unreadable)
                try:
                    async for resource in folder.fetch(Query(kind)):
                        if sample is not None and count >= sample:
                            complete = False
                            break
                        count += 1
                        tally.add(resource)
                except IncompleteInputError:
                    # A sweep needs every type; a survey reports the one missing. Only when no
                    # file of the type was there: an empty or unreadable file still fails.
                    if count or kind in ndjson:
                        raise
                    say(f"{kind}: none in the folder")
                read[kind] = Sample(count, sample, complete)
                skipped = len(folder.unreadable) - unreadable_before
                tail = f", {skipped} unreadable lines skipped" if skipped else ""
                say(f"{kind}: {count:,} read{tail}")
        finally:
            await folder.aclose()
        return tally, read
    limit = sample or DEFAULT_SAMPLE
    one_at_a_time = needs_per_patient(profile, config.read)
    if one_at_a_time:
        require_cohort(profile, cohort)
    async with fhir_client(source, config, env=env, profile=profile) as client:
        # The _elements probe is a search across all patients: not on such a server.
        caps = await read_capabilities(client, probe_elements=not one_at_a_time)
        if one_at_a_time:
            read = await read_per_patient(
                client,
                tally,
                kinds=SURVEYED,
                profile=profile,
                capabilities=caps,
                cohort=cohort,
                categories=categories,
                as_of=as_of or date.today(),
                limit=limit,
                patients=patients,
                page_size=config.page_size,
                say=say,
            )
            return tally, read
        elements = caps.supports_elements and config.use_elements and profile.elements
        say("_elements: " + ("honoured, asked for" if elements else "not used"))
        reader = TypeSample(
            client,
            limit=limit,
            page_size=profile.page_size(config.page_size),
            capabilities=caps if config.use_elements and profile.elements else None,
        )
        for kind in SURVEYED:
            async for resource in reader.fetch(kind):
                tally.add(resource)
            read[kind] = Sample(reader.read.get(kind, 0), limit, reader.complete.get(kind, False))
            say(f"{kind}: {read[kind].read:,} read" + ("" if read[kind].complete else " (limit)"))
    return tally, read


def _ndjson_types(folder: Path) -> set[str]:
    """The resource types the folder's NDJSON files are named for."""
    if not folder.is_dir():
        return set()  # FolderSource says what is wrong
    return {
        p.name.split(".", 1)[0]
        for p in folder.iterdir()
        if p.name.endswith((".ndjson", ".ndjson.gz")) and not p.name.startswith(".")
    }


def survey(tally: Tally, mappings: Mappings) -> Survey:
    """The analysis, with the first trial's units (every trial reads the same units.yaml)."""
    return analyse(tally, mappings.trials, mappings.trials[0].units, mappings.hints, mappings.known)
