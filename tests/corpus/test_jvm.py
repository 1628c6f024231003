"""The driver JVM launched before pyspark: which spark-submit, and a JVM that fails to start."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from embedpipe.corpus.spark import jvm
from embedpipe.corpus.spark.daemon import installed_pyspark_dir


def test_spark_submit_is_spark_homes_else_the_installed_pysparks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SPARK_HOME", raising=False)
    installed = installed_pyspark_dir(sys.path)
    assert installed is not None
    assert jvm.spark_submit() == Path(installed, "bin", "spark-submit")
    home = tmp_path / "spark"
    (home / "bin").mkdir(parents=True)
    monkeypatch.setenv("SPARK_HOME", str(home))
    assert jvm.spark_submit() is None  # none there: pyspark launches (and reports) it
    (home / "bin" / "spark-submit").write_text("#!/bin/sh\n")
    assert jvm.spark_submit() == home / "bin" / "spark-submit"


@pytest.mark.spark
def test_a_jvm_that_cannot_start_is_an_error_that_says_so(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """A heap size Java refuses: the JVM exits before its gateway opens, and attaching
    raises at once (not a wait), pointing at the JVM's own message; no folder is left."""
    monkeypatch.delenv("SPARK_HOME", raising=False)
    launched = jvm.launch({"spark.master": "local[1]", "spark.driver.memory": "12q"})
    assert launched is not None
    with pytest.raises(jvm.JvmExitedError, match="exited with code [1-9].* output above"):
        launched.attach()
    assert launched.process.returncode not in (None, 0)
    assert "12q" in capfd.readouterr().err  # Java's own complaint, on this process's stderr
    launched.process.stdin.close()  # type: ignore[union-attr]
    assert not os.path.exists(launched.address_file)
