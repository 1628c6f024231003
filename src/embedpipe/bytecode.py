"""Where Python's compiled bytecode goes when the install has none and may not write any.

A container that installs with `pip install --no-compile` and sets PYTHONDONTWRITEBYTECODE
(or runs as a user who cannot write to site-packages) makes every Python process compile
what it imports from source at every start: the CLI, each Spark Python worker, each
torchrun rank. For embedpipe that is pyspark, pyarrow, numpy, pandas and numba, seconds per
process. The `embedpipe` command then keeps that bytecode in a cache of its own, outside the
install (Python's `PYTHONPYCACHEPREFIX`), for itself and every process it starts, so only its
first run compiles. The install's own bytecode, where it has some, is used as it is; an
explicit PYTHONPYCACHEPREFIX is the user's choice and left alone.

`EMBEDPIPE_BYTECODE_CACHE=DIR` uses DIR whether or not the install has bytecode (default:
`bytecode` in `user_cache`, only where needed); `off` keeps Python's behaviour exactly.
Imports nothing but the standard library: it runs before the command imports anything else.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

from embedpipe.user_cache import user_cache

CACHE_ENV = "EMBEDPIPE_BYTECODE_CACHE"
OFF = "off"
_SENTINEL = Path(__file__)  # this module: compiled when the install is, not otherwise


def default_cache() -> Path | None:
    """`bytecode` in embedpipe's user cache; None where there is no home directory."""
    cache = user_cache()
    return cache / "bytecode" if cache is not None else None


def install_writes_none(sentinel: Path = _SENTINEL) -> bool:
    """True when `sentinel` has no bytecode beside it and Python will not write one there."""
    cached = Path(importlib.util.cache_from_source(str(sentinel)))
    if sys.pycache_prefix is None and cached.exists():
        return False
    if sys.dont_write_bytecode:
        return True
    folder = cached.parent if cached.parent.exists() else sentinel.parent
    return not os.access(folder, os.W_OK)


def use_bytecode_cache(
    environ: MutableMapping[str, str] = os.environ, sentinel: Path = _SENTINEL
) -> Path | None:
    """Point this process and the processes it starts at embedpipe's bytecode cache, where
    the install has no bytecode and Python would write none; the folder, or None if not."""
    setting = environ.get(CACHE_ENV, "")
    if setting == OFF or sys.pycache_prefix is not None or "PYTHONPYCACHEPREFIX" in environ:
        return None
    if not setting and not install_writes_none(sentinel):
        return None
    cache = Path(setting).expanduser() if setting else default_cache()
    if cache is None:
        return None  # no home to cache in: Python compiles from source, as it would have
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # nowhere to keep it: Python compiles from source, as it would have
    sys.pycache_prefix = str(cache)
    sys.dont_write_bytecode = False
    environ["PYTHONPYCACHEPREFIX"] = str(cache)
    environ.pop("PYTHONDONTWRITEBYTECODE", None)
    return cache
