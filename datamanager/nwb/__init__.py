"""Export recordings to Neurodata Without Borders (NWB) files (the ``nwb`` extra)."""

from __future__ import annotations

from .export import export_nwb

__all__ = ["export_nwb"]
