"""What a session records about the process that first wrote it."""

from __future__ import annotations

import getpass
import os
import platform
import sys
import time
from typing import Any

__all__ = ["computer_name", "session_metadata"]


def computer_name() -> str:
    """Return ``<user>.<host>``, the name of this user on this computer."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, e.g. in a container
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"{user}.{platform.node() or 'localhost'}"


def session_metadata() -> dict[str, Any]:
    """Return the JSON-able metadata recorded when a session is first written."""
    from . import __version__

    numpy = sys.modules.get("numpy")
    return {
        "created": time.time(),
        "user": computer_name().split(".", 1)[0],
        "host": platform.node(),
        "pid": os.getpid(),
        "python": platform.python_version(),
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "numpy_version": getattr(numpy, "__version__", None),
        "datamanager_version": __version__,
    }
