"""What earlier starts proved about the mappings, kept by content hash (issue 15, start-up).

Every start validates the mappings whole (house rule 9). Two parts of that cost more than the rest
of an empty sweep: the UCUM engine (pint's registry and ucumvert's parser, about 0.4 s), built only
to check that the units the mappings name are UCUM, and the YAML of the value-set expansions (0.1
to 0.2 s). A sweep keeps, in `$XDG_CACHE_HOME/trial-adapter/mapping-cache.json` (else
`~/.cache/trial-adapter/`; `default_cache_dir`):

- a synonym file's table (`units.yaml`), by the sha256 of the file's bytes;
- the UCUM codes found valid, and the (unit, unit, molar mass) triples found convertible;
- a value-set expansion's data, by the sha256 of its file's bytes, validated again by its model
  when read from here (pydantic checks JSON quickly: the YAML parse is the slow part).

Only what passed is kept: a file that fails is never in the cache, so it fails again with its line.
The whole cache is dropped when the code that decides changes: its key is a hash of the adapter's
version, of the validating modules' source, and of the versions of the libraries they use.

It holds mapping content only, never patient data. It is a cache, not state: any sweep, whatever
its state folder, may use it (the content decides), and deleting it costs one slower start. Its
folder is made 0700 and the file is written 0600 (temporary file, then rename); one that is
unreadable, not JSON, another user's or writable by others is ignored and replaced. A cache that
cannot be written costs the next start its speed, never a run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, Final, TypeGuard

import orjson

from adapter import __version__
from adapter.valuesets import ValueSetModel

log = logging.getLogger(__name__)

APP: Final = "trial-adapter"
CACHE_FILE: Final = "mapping-cache.json"
_FORMAT: Final = 1
#: modules whose code decides what passes: a change to any drops the cache
_DECIDING: Final = (
    "facts/ucum.py",
    "facts/units.py",
    "mapcache.py",
    "mapfiles.py",
    "mapschema.py",
    "site_mappings.py",
    "trials.py",
    "valuesets.py",
)
_LIBRARIES: Final = ("pint", "ucumvert", "lark", "pydantic", "pydantic-core", "PyYAML")
#: files kept per kind: more than any mappings folder holds, so the limit only drops old versions
MAX_FILES: Final = 256
#: UCUM answers kept per kind
MAX_ANSWERS: Final = 4096
#: a cache file larger than this is not read (the bundled mappings make about 0.5 MiB)
MAX_BYTES: Final = 64 * 1024 * 1024


def default_cache_dir(env: Mapping[str, str], home: Path) -> Path:
    """`$XDG_CACHE_HOME/trial-adapter`, else `<home>/.cache/trial-adapter` (a relative
    XDG_CACHE_HOME is to be ignored, says the XDG Base Directory spec)."""
    xdg = env.get("XDG_CACHE_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / APP
    return home / ".cache" / APP


def fingerprint() -> str | None:
    """The key of the code that validates (a cache of another key is not used); None when the
    sources cannot be read, and then nothing is cached."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256(f"{_FORMAT}\0{__version__}".encode())
    for name in _DECIDING:
        content = _content_hash(package / name)
        if content is None:
            return None
        digest.update(f"\0{name}\0{content}".encode())
    for library in _LIBRARIES:
        try:
            version = metadata.version(library)
        except metadata.PackageNotFoundError:
            version = "-"
        digest.update(f"\0{library}\0{version}".encode())
    return digest.hexdigest()


class MappingCache:
    """The answers of earlier starts; `save` writes them back with this start's new ones.

    ```
    cache = MappingCache.open(default_cache_dir(os.environ, Path.home()) / CACHE_FILE)
    table = cache.synonyms(path, load_synonyms)        # read, or remembered by content
    ok = cache.ucum_valid("mg/dL", units.is_valid)     # asked, or remembered
    cache.save()
    ```
    """

    def __init__(self, path: Path | None, key: str, doc: dict[str, Any] | None = None) -> None:
        """`path`: where `save` writes (None: nowhere); `doc`: a file's content of this `key`."""
        self.path = path
        self.key = key
        doc = doc or {}
        self._synonyms: dict[str, dict[str, str]] = dict(doc.get("synonyms", {}))
        self._valuesets: dict[str, dict[str, Any]] = dict(doc.get("valuesets", {}))
        self._valid: dict[str, None] = dict.fromkeys(doc.get("ucum_valid", []))
        self._convertible: dict[str, None] = dict.fromkeys(doc.get("convertible", []))
        #: content hashes read this start: kept first when the limit drops entries
        self._used: set[str] = set()
        self._changed = False

    @classmethod
    def open(cls, path: Path) -> MappingCache:
        """The cache at `path` if it is one to trust and of this code, else an empty one."""
        key = fingerprint()
        if key is None:
            return cls(None, "")
        doc = _read(path)
        if doc is None or doc.get("key") != key:
            return cls(path, key)
        return cls(path, key, doc)

    # --- lookups -------------------------------------------------------------------------------

    def synonyms(self, path: Path, load: Callable[[Path], dict[str, str]]) -> dict[str, str]:
        """The synonym table of the file at `path`: remembered by its content, else `load`ed."""
        content = _content_hash(path)
        if content is not None:
            table = self._synonyms.get(content)
            if _is_table(table):
                self._used.add(content)
                return dict(table)
        table = load(path)
        if content is not None and _content_hash(path) == content:  # unchanged while read
            self._synonyms[content] = dict(table)
            self._used.add(content)
            self._changed = True
        return table

    def valueset(self, path: Path, load: Callable[[Path], ValueSetModel]) -> ValueSetModel:
        """The expansion in the file at `path`: its remembered data validated again, else
        `load`ed (which reads the YAML and names the line of a mistake)."""
        content = _content_hash(path)
        data = self._valuesets.get(content) if content is not None else None
        if content is not None and data is not None:
            try:
                found = ValueSetModel.model_validate(data)
            except ValueError:  # pydantic's ValidationError: not trusted, read the file instead
                pass
            else:
                if found.name == path.stem:  # as `load_valueset` requires
                    self._used.add(content)
                    return found
        loaded = load(path)
        if content is not None and _content_hash(path) == content:
            self._valuesets[content] = loaded.model_dump(mode="json", exclude_unset=True)
            self._used.add(content)
            self._changed = True
        return loaded

    def ucum_valid(self, code: str, check: Callable[[str], bool]) -> bool:
        """Whether `code` is UCUM the adapter reads: True remembered, else `check`ed."""
        if code in self._valid:
            return True
        valid = check(code)
        if valid:
            self._valid[code] = None
            self._changed = True
        return valid

    def convertible(
        self, unit: str, to: str, molar_mass: float | None, check: Callable[[], bool]
    ) -> bool:
        """Whether values in `unit` convert to `to`: True remembered, else `check`ed."""
        entry = f"{unit}\0{to}\0{molar_mass!r}"
        if entry in self._convertible:
            return True
        ok = check()
        if ok:
            self._convertible[entry] = None
            self._changed = True
        return ok

    # --- writing -------------------------------------------------------------------------------

    def save(self) -> None:
        """Write the cache if this start added to it; a failure is logged at debug, no more."""
        if self.path is None or not self._changed:
            return
        doc = {
            "key": self.key,
            "synonyms": self._kept(self._synonyms),
            "valuesets": self._kept(self._valuesets),
            "ucum_valid": list(self._valid)[-MAX_ANSWERS:],
            "convertible": list(self._convertible)[-MAX_ANSWERS:],
        }
        from adapter.report.files import write_private

        try:
            write_private(self.path, orjson.dumps(doc))
        except OSError as exc:
            log.debug("mapping cache not written: %s", exc.strerror or type(exc).__name__)
            return
        self._changed = False

    def _kept(self, entries: dict[str, Any]) -> dict[str, Any]:
        """At most MAX_FILES entries: this start's, then the most recent of the others (old
        versions of edited files are what goes). Kept oldest first, this start's last."""
        used = {k: v for k, v in entries.items() if k in self._used}
        others = [(k, v) for k, v in entries.items() if k not in self._used]
        room = max(MAX_FILES - len(used), 0)
        return dict(others[len(others) - room :] if room else ()) | used


def _content_hash(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None  # not cached: `load` says what is wrong with the file


def _is_table(value: object) -> TypeGuard[dict[str, str]]:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


def _read(path: Path) -> dict[str, Any] | None:
    """The cache file's content, or None when there is none to trust."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if (
            not stat.S_ISREG(info.st_mode)
            or info.st_uid != os.getuid()
            or info.st_mode & 0o022
            or info.st_size > MAX_BYTES
        ):
            return None
        with os.fdopen(fd, "rb", closefd=False) as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    for name, kind in (
        ("synonyms", dict),
        ("valuesets", dict),
        ("ucum_valid", list),
        ("convertible", list),
    ):
        if not isinstance(doc.get(name, kind()), kind):
            return None
    if not all(isinstance(v, dict) for v in doc.get("valuesets", {}).values()):
        return None
    answers = [*doc.get("ucum_valid", []), *doc.get("convertible", [])]
    if not all(isinstance(v, str) for v in answers):
        return None
    return doc
