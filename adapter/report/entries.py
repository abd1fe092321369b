"""results.json's `patients`, made as they are read (issue 15).

At 100,000 patients the list of every patient's entry, evidence and all, took 43 MiB for the hcc
trial, and each report (results.json, the CSVs, report.html) read it whole. `Entries` makes each
entry when it is asked for, from the verdicts on disk (`adapter.verdicts`) and what the run knows
of the patient (identity, the status people set, the sink's outcome, whether it is new), so only
the entries a reader holds on to are in memory. To its readers it is a sequence of dicts: it can
be iterated again and again, indexed, measured, and compared with a list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

Entry = dict[str, Any]


class Entries:
    """`count` entries, entry `i` being `make(i)` (see the module)."""

    def __init__(self, make: Callable[[int], Entry], count: int) -> None:
        self._make = make
        self._count = count

    def map(self, change: Callable[[Entry], Entry]) -> Entries:
        """These entries, each passed through `change` when it is made."""
        make = self._make
        return Entries(lambda i: change(make(i)), self._count)

    def __iter__(self) -> Iterator[Entry]:
        return (self._make(i) for i in range(self._count))

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __getitem__(self, index: int) -> Entry:
        n = index + self._count if index < 0 else index
        if not 0 <= n < self._count:
            raise IndexError("entry index out of range")
        return self._make(n)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Entries | list | tuple):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Entries({self._count} patients)"
