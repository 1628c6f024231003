"""The daemon a local session's Python workers fork from: pyspark's own, on the installed
pyspark's byte-compiled modules.

Spark starts `python -m <spark.python.daemon.module> pyspark.worker` with SPARK_HOME's
`python/lib/pyspark.zip` and py4j's source zip first on PYTHONPATH. Python compiles what it
imports from a zip from source on every start (it caches no bytecode for zips), so the
daemon and each worker it forks spent about a second importing pyspark before a session's
first Python task could run (README, corpus stages). With pip's pyspark those zips sit
inside the installed package (`<site-packages>/pyspark/python/lib/`): the same code, also
installed as compiled modules. This daemon moves such zips to the end of `sys.path`, then
runs pyspark's daemon unchanged; its forked workers inherit the path. Zips of a separate
Spark installation (another SPARK_HOME, possibly another version) stay where they are.

Where the driver started a fork server (`forkserver`, named in EMBEDPIPE_SPARK_FORKSERVER),
pyspark's daemon runs forked from it instead, with this process's streams and environment,
so its workers start with their modules imported; without one, it runs here as before.

It imports nothing but the standard library before it has fixed the path. The session sets
it for local masters only (`session.get_spark`): there the workers run this interpreter,
which can import embedpipe; a cluster's executors may not have embedpipe installed.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
from collections.abc import Sequence


def installed_pyspark_dir(path: Sequence[str]) -> str | None:
    """The directory of the pyspark package found on `path` outside any zip, or None."""
    plain = [p for p in path if not p.endswith(".zip")]
    spec = importlib.machinery.PathFinder.find_spec("pyspark", plain)
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.realpath(next(iter(spec.submodule_search_locations)))


def prefer_installed_pyspark(path: Sequence[str]) -> list[str]:
    """`path` with the zips that an installed pyspark ships in its own `python/lib/`
    moved to the end (so its compiled modules are imported instead); unchanged otherwise."""
    package = installed_pyspark_dir(path)
    if package is None:
        return list(path)
    shipped = os.path.join(package, "python", "lib") + os.sep

    def own_zip(entry: str) -> bool:
        return entry.endswith(".zip") and os.path.realpath(entry).startswith(shipped)

    return [p for p in path if not own_zip(p)] + [p for p in path if own_zip(p)]


if __name__ == "__main__":
    sys.path[:] = prefer_installed_pyspark(sys.path)
    from embedpipe.corpus.spark import forkserver

    server = os.environ.get(forkserver.ENV, forkserver.OFF)
    if server == forkserver.OFF or not forkserver.request_daemon(server, sys.path):
        from pyspark.daemon import manager

        manager()
