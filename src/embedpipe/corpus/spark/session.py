"""The Spark session every corpus stage runs on: in-process `local[*]` or a cluster's."""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys
import threading

from pyspark import SparkContext
from pyspark.sql import SparkSession

from embedpipe.config import SparkConfig
from embedpipe.corpus.spark import class_archive, forkserver

DAEMON_MODULE = "embedpipe.corpus.spark.daemon"


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


# Imported by the session's first Java call whatever the stages do: pyspark's py4j input
# converters import `pyspark.testing.utils`, which imports pandas (so does pyarrow at its
# first `pa.array`). It is slow to compile where no bytecode is cached.
SESSION_IMPORTS = ("pandas",)


def import_while_jvm_starts() -> None:
    """Import SESSION_IMPORTS on a thread while the JVM boots (the driver only waits for it
    then), not after it; the first Java call finds them imported or waits for the thread."""
    missing = [m for m in SESSION_IMPORTS if m not in sys.modules and importlib.util.find_spec(m)]

    def import_missing() -> None:
        for module in missing:
            importlib.import_module(module)

    if missing:
        threading.Thread(
            target=import_missing, name="embedpipe-session-imports", daemon=True
        ).start()


def close_gateway() -> None:
    """Shut down py4j's link to the JVM this process started, as a command's last act: the
    JVM exits when the process ends (its stdin closes), as before, but spends less time
    doing so once its Python side has said goodbye (README, whole `prepare`). Nothing may
    call the JVM afterwards: py4j would wait on it forever. Not for spark-submit's driver,
    whose JVM is spark-submit's."""
    gateway = SparkContext._gateway
    if gateway is not None and "PYSPARK_GATEWAY_PORT" not in os.environ:
        gateway.shutdown()


def get_spark(config: SparkConfig = SparkConfig(), app_name: str = "embedpipe") -> SparkSession:
    """Get or create the session; workers use this interpreter so Arrow batches find pyarrow."""
    check_java()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.appName(app_name)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "4096")
        .config("spark.driver.extraJavaOptions", driver_java_options())
    )
    if "PYSPARK_GATEWAY_PORT" not in os.environ:  # not launched by spark-submit
        builder = builder.master(config.master)
        if config.master.startswith("local") and os.environ["PYSPARK_PYTHON"] == sys.executable:
            # Workers that import the installed pyspark, not SPARK_HOME's zip (`daemon`),
            # forked from a process that imported their modules while the JVM started.
            builder = builder.config("spark.python.daemon.module", DAEMON_MODULE)
            if SparkContext._gateway is None:  # the JVM, started next, gets its address
                forkserver.start()
    # Memory, cores, shuffle partitions, then `spark.conf` (the same set spark-submit gets).
    for key, value in config.spark_properties().items():
        builder = builder.config(key, value)
    if SparkSession.getActiveSession() is None:
        import_while_jvm_starts()
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
    from pyspark import SparkContext

    context = SparkContext._active_spark_context
    if context is None:
        return None
    tracker = context.statusTracker()
    stages = [tracker.getStageInfo(i) for i in tracker.getActiveStageIds()]
    running = [s for s in stages if s is not None]
    return sum(s.numCompletedTasks for s in running), sum(s.numTasks for s in running)
