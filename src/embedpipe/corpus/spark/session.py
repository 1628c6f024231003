"""The Spark session every corpus stage runs on: in-process `local[*]` or a cluster's.

A session this process starts (`get_spark`) comes up in steps that overlap. Its JVM is
launched first (`jvm`), since it takes longest; while it boots, a thread imports what the
stages' driver code needs (pandas, pyarrow, the stage modules) and the main thread imports
pyspark, which then connects to the JVM and creates the Spark context. For a local master,
the workers' fork server (`forkserver`) is then forked from the driver, with those imports
done, so it imports only what the workers need beyond them (numba's kernels) while the
SQL session is created and the first job planned.

Where the process ran threads of its own when the session started, the server is spawned
instead, a new interpreter that imports everything itself: a process whose other threads
may be importing is not safe to fork.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from embedpipe.config import SparkConfig
from embedpipe.corpus.spark import class_archive, forkserver, jvm

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DAEMON_MODULE = "embedpipe.corpus.spark.daemon"
# What the driver imports on a thread while its JVM starts: the workers' modules (the fork
# server's PRELOAD, but the kernels it runs), so that the server forked from here starts
# with them. The driver needs most of them itself: pandas (pyspark's mapInArrow requires
# it), pyarrow's Parquet and dataset modules and the stages.
DRIVER_IMPORTS = tuple(entry for entry in forkserver.PRELOAD if ":" not in entry)


class JavaNotFoundError(RuntimeError):
    """Spark needs a Java runtime (17 or newer for Spark 4)."""


def check_java() -> None:
    """Fail early, with what to install, when there is no Java for Spark."""
    if os.environ.get("JAVA_HOME") or shutil.which("java"):
        return
    raise JavaNotFoundError(
        "Spark needs Java 17 or newer and none was found: install it "
        "(Debian/Ubuntu: `apt-get install openjdk-17-jre-headless`) or set JAVA_HOME."
    )


def driver_java_options() -> str:
    """The JVM options of a driver started here (a local session's, or spark-submit's in
    client mode); `spark.conf` can set others (it wins).

    The driver JVM (which is also the executor under local[*]) mostly moves Arrow batches
    and shuffle blocks: the stages' heavy work runs in the Python workers. C1 alone compiles
    its code in a fraction of the time, and C2's compiler threads no longer take CPU from
    the tasks: the session starts sooner and the stages run no slower (bench/results). The
    class archive (`class_archive`), where built, saves loading Spark's classes again.
    """
    return f"-XX:TieredStopAtLevel=1 {class_archive.java_options()}".strip()


def close_gateway() -> None:
    """Shut down py4j's link to the JVM this process started, as a command's last act: the
    JVM exits when the process ends (its stdin closes), as before, but spends less time
    doing so once its Python side has said goodbye (README, whole `prepare`). Nothing may
    call the JVM afterwards: py4j would wait on it forever. Not for spark-submit's driver,
    whose JVM is spark-submit's."""
    context = _imported_spark_context()
    gateway = context._gateway if context is not None else None
    if gateway is not None and not spark_submitted():
        gateway.shutdown()


def spark_submitted() -> bool:
    """Whether spark-submit started this process (its JVM is spark-submit's)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def local_workers(config: SparkConfig) -> bool:
    """Whether the session's Python workers run this interpreter on this machine: a local
    master, started here, with PYSPARK_PYTHON this interpreter."""
    return (
        not spark_submitted()
        and config.master.startswith("local")
        and os.environ.get("PYSPARK_PYTHON", sys.executable) == sys.executable
    )


def session_properties(config: SparkConfig, app_name: str = "embedpipe") -> dict[str, str]:
    """The `spark.*` properties of a session: ours, the master and worker daemon where this
    process starts the session, then the config's (memory, cores, shuffle partitions, then
    `spark.conf`, which wins: the same set spark-submit gets)."""
    properties = {
        "spark.app.name": app_name,
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.maxRecordsPerBatch": "4096",
        "spark.driver.extraJavaOptions": driver_java_options(),
    }
    if not spark_submitted():
        properties["spark.master"] = config.master
    if local_workers(config):
        # Workers that import the installed pyspark, not SPARK_HOME's zip (`daemon`),
        # forked from a process that imported their modules while the JVM started.
        properties["spark.python.daemon.module"] = DAEMON_MODULE
    return properties | config.spark_properties()


def _set_environment() -> None:
    """Workers run this interpreter (so Arrow batches find pyarrow); Spark binds locally."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


def _imported_spark_context() -> Any:
    """pyspark's SparkContext class where pyspark is imported, else None (not imported
    here: a command's other thread must not import it while the main thread does)."""
    return getattr(sys.modules.get("pyspark"), "SparkContext", None)


def _jvm_running() -> bool:
    """Whether this process already has a JVM (pyspark keeps it after a session stops)."""
    context = _imported_spark_context()
    return context is not None and context._gateway is not None


def import_modules(modules: tuple[str, ...]) -> None:
    """Import `modules` (those that are installed)."""
    for module in modules:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


@dataclass
class SessionStart:
    """A session this process is starting: its JVM (None: pyspark launches it), the
    thread doing the driver's imports, and whether its workers' server is to be forked
    (the process had no other thread) or was spawned already (or is off)."""

    jvm: jvm.LaunchedJvm | None
    imports: threading.Thread
    fork: bool

    @classmethod
    def begin(cls, config: SparkConfig, properties: dict[str, str]) -> SessionStart:
        """Launch the JVM and start the driver's imports (see the module doc)."""
        local = local_workers(config)
        alone = threading.active_count() == 1
        if local:
            forkserver.address()  # in the environment the JVM gets
        launched = jvm.launch(properties)
        if local and not alone:
            forkserver.start(fork=False)
        imports = threading.Thread(
            target=import_modules,
            args=(DRIVER_IMPORTS,),
            name="embedpipe-session-imports",
            daemon=True,
        )
        imports.start()
        return cls(launched, imports, fork=local and alone)

    def start_server(self) -> None:
        """Wait for the driver's imports, then fork the workers' server from this process.
        The only other threads then are the two pyspark starts when it connects (py4j's
        finaliser and the accumulator server), which wait on a queue and a socket."""
        self.imports.join()
        if self.fork:
            forkserver.start(fork=True)


def get_spark(config: SparkConfig = SparkConfig(), app_name: str = "embedpipe") -> SparkSession:
    """Get or create the session; one this process starts comes up as the module doc says.
    Call it before starting threads of your own (`embedpipe prepare` does)."""
    check_java()
    _set_environment()
    properties = session_properties(config, app_name)
    start = None if spark_submitted() or _jvm_running() else SessionStart.begin(config, properties)
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    from embedpipe.corpus.spark.converters import use_imported_numpy_converters

    use_imported_numpy_converters()
    if start is not None and start.jvm is not None:
        gateway = start.jvm.attach()
        SparkContext(conf=SparkConf().setAll(properties.items()), gateway=gateway)
    if start is not None:
        start.start_server()
    builder = SparkSession.builder
    for key, value in properties.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    # The tokenize stage hands Spark its input as a list of files. Past 32 paths Spark
    # checks them in a job of one task per path (up to 10,000), seconds of scheduling for a
    # few thousand small files (README, input layouts). A few tasks per core list as fast
    # where listing is local, and still in parallel on a cluster's object store.
    # `spark.conf` may set it otherwise.
    discovery = "spark.sql.sources.parallelPartitionDiscovery.parallelism"
    if discovery not in config.conf:
        spark.conf.set(discovery, str(4 * spark.sparkContext.defaultParallelism))
    return spark


def task_counts() -> tuple[int, int] | None:
    """(finished, total) tasks of the Spark stages running now in this process's session
    (what Spark's console progress bar shows), or None while there is no session.

    Safe from another thread: it only reads the status tracker. pyspark keeps the running
    context in `SparkContext._active_spark_context`; no public accessor reaches it from a
    thread other than the one that created the session.
    """
    context_class = _imported_spark_context()
    context = context_class._active_spark_context if context_class is not None else None
    if context is None:
        return None
    tracker = context.statusTracker()
    stages = [tracker.getStageInfo(i) for i in tracker.getActiveStageIds()]
    running = [s for s in stages if s is not None]
    return sum(s.numCompletedTasks for s in running), sum(s.numTasks for s in running)
