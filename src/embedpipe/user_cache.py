"""embedpipe's folder in the user's cache (XDG's `$XDG_CACHE_HOME`, else `~/.cache`).

What is kept there can be rebuilt: Spark's class archive, the command's bytecode. Only the
standard library: the command looks it up before it imports anything else."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache() -> Path | None:
    """`<cache>/embedpipe`, or None where there is no home directory to cache in."""
    try:
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "embedpipe"
    except RuntimeError:
        return None
