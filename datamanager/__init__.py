"""Keep the results of many simulation runs and collate them for analysis."""

from __future__ import annotations

__version__ = "0.1.0"
