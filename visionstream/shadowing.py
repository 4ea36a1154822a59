"""The repo's `agents/` and `tables/` folders install as `visionstream.agents` / `visionstream.tables`, but a
Python started in the repository root finds them first as top-level `agents` and `tables`, which are other
projects' import names (PyTables, OpenAI's agents SDK). Imported under such a name, a folder hands the
import on to the installed package of that name, as if the folder were not there."""

from __future__ import annotations

import importlib
import os
import sys


def yield_to_installed(name: str, init_file: str) -> None:
    """Call from the folder's ``__init__`` when ``__name__`` is the top-level ``name``."""
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(init_file)))
    del sys.modules[name]
    saved = sys.path[:]
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != repo_root]
    try:
        # `import name` returns whatever sys.modules holds once this module's code has run.
        sys.modules[name] = importlib.import_module(name)
    finally:
        sys.path[:] = saved
