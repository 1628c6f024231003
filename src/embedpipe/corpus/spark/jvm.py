"""The driver JVM of a local session: launched before pyspark is imported, attached later.

pyspark launches its JVM (`spark-submit pyspark-shell`) inside `getOrCreate`, once the
driver has imported pyspark, and waits there for it: seconds in which the driver does
nothing else. A session started here (`session.get_spark`) launches it first, as soon as
its properties are known, so the JVM boots while the driver imports pyspark and the rest;
`LaunchedJvm.attach` then connects pyspark to it the way pyspark connects to the JVM of a
driver that spark-submit started (PYSPARK_GATEWAY_PORT and PYSPARK_GATEWAY_SECRET).

The command is pyspark's own: SPARK_HOME's `bin/spark-submit` (else the installed
pyspark's), each property as `--conf`, then PYSPARK_SUBMIT_ARGS (`pyspark-shell` by
default), stdin a pipe (the JVM exits when this process does) and SIGINT ignored (Ctrl-C
reaches the driver, which cancels the jobs). Imports nothing from pyspark until `attach`.
"""

from __future__ import annotations

import atexit
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from embedpipe.corpus.spark.daemon import installed_pyspark_dir

if TYPE_CHECKING:
    from py4j.java_gateway import JavaGateway

# Where pyspark looks for the address of a JVM it did not launch itself.
GATEWAY_ENV = ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET")


class JvmExitedError(RuntimeError):
    """The JVM ended before it opened its gateway (its own output says why)."""


def spark_submit() -> Path | None:
    """The `spark-submit` pyspark would run (SPARK_HOME's, else the installed pyspark's);
    None where there is none, or off POSIX (there pyspark launches its JVM itself)."""
    if os.name != "posix":
        return None
    home = os.environ.get("SPARK_HOME") or installed_pyspark_dir(sys.path)
    script = Path(home, "bin", "spark-submit") if home else None
    return script if script is not None and script.is_file() else None


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass
class LaunchedJvm:
    """A JVM launched by `launch`: the process and the file its gateway's address goes to."""

    process: subprocess.Popen[bytes]
    address_file: Path

    def attach(self) -> JavaGateway:
        """Wait for the JVM's gateway, then connect pyspark to it: pyspark's own
        `launch_gateway`, given the address the way a spark-submit driver gets it (in the
        environment, only for that call)."""
        port, secret = self._address()
        from pyspark.java_gateway import launch_gateway

        saved = {name: os.environ.get(name) for name in GATEWAY_ENV}
        os.environ.update(zip(GATEWAY_ENV, (str(port), secret), strict=True))
        try:
            gateway = launch_gateway()
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        gateway.proc = self.process  # as pyspark keeps the JVM it launched
        return gateway

    def _address(self) -> tuple[int, str]:
        """The gateway's port and secret, once the JVM has written them."""
        while self.process.poll() is None and not self.address_file.is_file():
            time.sleep(0.02)
        if not self.address_file.is_file():
            raise JvmExitedError(
                f"the Spark driver JVM exited with code {self.process.returncode} before "
                "it opened its gateway; its output above says why"
            )
        from pyspark.serializers import UTF8Deserializer, read_int

        with self.address_file.open("rb") as info:
            port, secret = read_int(info), UTF8Deserializer().loads(info)
        shutil.rmtree(self.address_file.parent, ignore_errors=True)
        return port, secret


def launch(properties: dict[str, str]) -> LaunchedJvm | None:
    """Launch a session's driver JVM with `properties` (as spark-submit `--conf`s) and
    return at once; None where there is no spark-submit to run (see `spark_submit`)."""
    script = spark_submit()
    if script is None:
        return None
    command = [str(script)]
    for key, value in properties.items():
        command += ["--conf", f"{key}={value}"]
    submit_args = os.environ.get("PYSPARK_SUBMIT_ARGS", "pyspark-shell")
    if os.environ.get("SPARK_TESTING"):  # as pyspark: its own tests run without the UI
        submit_args = f"--conf spark.ui.enabled=false {submit_args}"
    command += shlex.split(submit_args)
    folder = tempfile.mkdtemp(prefix="embedpipe-jvm-")
    atexit.register(shutil.rmtree, folder, True)  # if it never wrote (or was not read)
    address = Path(folder, "address")
    env = {**os.environ, "SPARK_CONNECT_MODE": "0", "_PYSPARK_DRIVER_CONN_INFO_PATH": str(address)}
    process = subprocess.Popen(command, stdin=subprocess.PIPE, env=env, preexec_fn=_ignore_sigint)
    return LaunchedJvm(process, address)
