"""Make the benchmarks measure this checkout, not an installed copy.

``python benchmarks/bench_x.py`` puts ``benchmarks/`` on ``sys.path``, not
the repository, so ``import datamanager`` would find whatever version pip
installed last.  Importing this module first puts the checkout in front, for
the script and for the Python processes it starts.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
