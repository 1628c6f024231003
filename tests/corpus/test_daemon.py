"""The Python daemon of local sessions: workers import the installed pyspark, not a zip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from embedpipe.corpus.spark.daemon import installed_pyspark_dir, prefer_installed_pyspark


def fake_pyspark(site: Path) -> tuple[str, str]:
    """A pyspark package under `site` that ships its own source zips, as pip's does."""
    lib = site / "pyspark" / "python" / "lib"
    lib.mkdir(parents=True)
    (site / "pyspark" / "__init__.py").write_text("")
    zips = (lib / "pyspark.zip", lib / "py4j-0.10.9.9-src.zip")
    for z in zips:
        z.write_bytes(b"")
    return str(zips[0]), str(zips[1])


def test_the_installed_packages_own_zips_go_last(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    pyspark_zip, py4j_zip = fake_pyspark(site)
    path = [pyspark_zip, py4j_zip, "/work/src", str(site)]
    assert installed_pyspark_dir(path) == str((site / "pyspark").resolve())
    assert prefer_installed_pyspark(path) == ["/work/src", str(site), pyspark_zip, py4j_zip]


def test_a_separate_spark_installations_zips_stay_first(tmp_path: Path) -> None:
    """Another SPARK_HOME may hold another pyspark version: its zips must win as before."""
    site = tmp_path / "site-packages"
    fake_pyspark(site)
    other = tmp_path / "opt" / "spark" / "python" / "lib"
    other.mkdir(parents=True)
    (other / "pyspark.zip").write_bytes(b"")
    path = [str(other / "pyspark.zip"), "/work/src", str(site)]
    assert prefer_installed_pyspark(path) == path
    no_install = [str(other / "pyspark.zip"), "/work/src"]
    assert installed_pyspark_dir(no_install) is None
    assert prefer_installed_pyspark(no_install) == no_install


def where_pyspark_is(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    import pyspark

    for _ in batches:
        pass
    yield pa.RecordBatch.from_pylist([{"file": pyspark.__file__}])


@pytest.mark.spark
def test_a_local_sessions_workers_import_the_installed_pyspark(spark: object) -> None:
    assert spark.conf.get("spark.python.daemon.module") == "embedpipe.corpus.spark.daemon"  # type: ignore[attr-defined]
    rows = (
        spark.range(0, 2, numPartitions=2)  # type: ignore[attr-defined]
        .mapInArrow(where_pyspark_is, "file string")
        .collect()
    )
    files = {row["file"] for row in rows}
    assert files and not any(".zip" in f for f in files), files
    assert all(Path(f).parent == Path(installed_pyspark_dir(__import__("sys").path)) for f in files)
