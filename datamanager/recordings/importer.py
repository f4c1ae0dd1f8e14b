"""Import of legacy recordings into a session (placeholder until the core lands)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ImportSummary", "import_recordings"]


@dataclass
class ImportSummary:
    """What an import did."""

    session: str = ""
    imported: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def import_recordings(
    dm: Any, paths_or_folder: Any, session_name: str | None = None
) -> ImportSummary:
    raise NotImplementedError
