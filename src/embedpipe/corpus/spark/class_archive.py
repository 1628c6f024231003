"""A class-data-sharing archive of the Spark driver's classes, so a local session starts sooner.

A local Spark session spends most of its start-up, and of its first job, loading and
verifying the same classes from Spark's jars. Java 17 can dump the classes a run loaded
(`-XX:ArchiveClassesAtExit`) and map them into later JVMs (`-XX:SharedArchiveFile`): the
README's start-up figures show what it saves. The archive is built once per pyspark and Java
install, by running the corpus stages on a tiny corpus (`make install` runs
`python -m embedpipe.corpus.spark.class_archive`), into the user's cache. A session uses it
when it is there; the JVM checks that it matches its own jars and, where it does not, starts
as before (its CDS logging is off, so a stale archive says nothing).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from embedpipe.corpus.spark.daemon import installed_pyspark_dir
from embedpipe.user_cache import user_cache

# Logging off: a stale archive is skipped without a warning on every session start.
QUIET = "-Xlog:cds=off -Xlog:cds+dynamic=off"
MODULE = "embedpipe.corpus.spark.class_archive"  # `__name__` is "__main__" under `-m`


def archive_path() -> Path | None:
    """Where this pyspark's and this Java's archive lives; None where there is no Java or
    no installed pyspark. Its name changes with the Java and the jars (their paths and
    modification times), without importing pyspark: the session launches its JVM first."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    pyspark_dir = installed_pyspark_dir(sys.path)
    if not java or not Path(java).exists() or pyspark_dir is None:
        return None
    real = Path(java).resolve()
    jars = Path(pyspark_dir) / "jars"
    if not jars.is_dir():
        return None
    key = f"{real}|{real.stat().st_mtime_ns}|{jars}|{jars.stat().st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    cache = user_cache()
    if cache is None:  # no home directory to cache in: sessions start without an archive
        return None
    return cache / f"spark-{digest}.jsa"


def java_options() -> str:
    """Driver JVM options that map the archive, or "" while there is none."""
    path = archive_path()
    return f"-XX:SharedArchiveFile={path} {QUIET}" if path and path.is_file() else ""


def build(timeout: float = 900) -> Path | None:
    """Build the archive unless it exists (a child process dumps it; then an atomic rename)."""
    target = archive_path()
    if target is None or target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.stem}.{os.getpid()}.partial")
    try:
        subprocess.run(
            [sys.executable, "-m", MODULE, "--dump", str(partial)],
            check=True, timeout=timeout, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _dump(path: Path) -> None:
    """Run the corpus stages on a tiny corpus in a session that dumps its classes at exit;
    wait for its JVM to end, so the archive is whole when this returns."""
    from pyspark import SparkContext

    from embedpipe.config import load_config
    from embedpipe.corpus.spark.session import get_spark
    from embedpipe.corpus.stages import prepare

    with tempfile.TemporaryDirectory(prefix="embedpipe-cds-") as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(f"the cat {i % 7} sat on mat {i % 13}" for i in range(300)))
        options = f"-XX:TieredStopAtLevel=1 -XX:ArchiveClassesAtExit={path}"
        config = load_config(
            None,
            [f"workdir={Path(tmp) / 'work'}", f'corpus.paths=["{corpus}"]', "vocab.min_count=1",
             f'spark.conf={{"spark.driver.extraJavaOptions": "{options}"}}'],
        )  # fmt: skip
        spark = get_spark(config.spark)
        prepare(spark, config)
        gateway = SparkContext._gateway
        spark.stop()
        jvm = gateway.proc
        gateway.shutdown()
        jvm.stdin.close()  # the gateway JVM ends when its stdin closes, dumping on the way
        jvm.wait(timeout=600)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--dump"]:
        _dump(Path(sys.argv[2]))
    else:
        print(build())
