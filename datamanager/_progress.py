"""Progress bars, shown only to a person watching a terminal."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

__all__ = ["progress_bar"]


def progress_bar(enabled: bool) -> Callable[..., Any] | None:
    """Return a tqdm bar factory writing to stderr, or None where no bar belongs.

    None when *enabled* is false, when stderr is not a terminal (a bar
    redrawn in logs, pipes and CI output is noise) or when tqdm is not
    installed.  Callers that must do extra work to size a bar (count
    sessions, say) ask first and do that work only when a bar will show.

    Parameters
    ----------
    enabled : bool
        Whether the caller wants a bar at all.

    Returns
    -------
    callable or None
        ``tqdm`` with ``file=sys.stderr`` bound; called with tqdm's own
        arguments (``total=``, ``desc=``, ...).
    """
    if not enabled or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return functools.partial(tqdm, file=sys.stderr)
