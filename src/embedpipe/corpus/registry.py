"""The one list of corpus stages: name, output table, config sections, upstream tables, function.

Everything that needs to know what a stage is reads it from here: `embedpipe prepare`, the
Prefect flow and its cache keys (`embedpipe.orchestration`), the spark-submit job entry
(`corpus.spark.job`), each stage's own fingerprint (`corpus.spark.commit.run_stage`) and the
artefact manifest. This module imports no pyspark: a stage's function is named by its
dotted path and imported only when the stage runs, so the flow's cache keys, the
submitting side of spark-submit and the artefact code stay light.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from embedpipe.config import RunConfig, to_dict

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

StageFunction = Callable[["SparkSession", RunConfig], dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    """One corpus stage.

    `sections`: the config sections its output depends on (its fingerprint and cache key
    hold exactly these); `upstream`: the tables it reads (none: it reads the corpus files);
    `function`: `module:attribute` of `(spark, config) -> manifest`.
    """

    name: str
    table: str
    sections: tuple[str, ...]
    upstream: tuple[str, ...]
    function: str

    def config_of(self, config: RunConfig) -> dict[str, Any]:
        """{section: plain values} of the sections this stage reads."""
        return {s: to_dict(getattr(config, s)) for s in self.sections}

    def load(self) -> StageFunction:
        """The stage's function, imported now (this is where pyspark gets imported)."""
        module, attribute = self.function.split(":")
        return getattr(importlib.import_module(module), attribute)

    def run(self, spark: SparkSession, config: RunConfig) -> dict[str, Any]:
        """Run the stage in `spark`'s session; returns its manifest (`skipped` when reused)."""
        return self.load()(spark, config)


def _stage(name: str, table: str, sections: tuple[str, ...], upstream: tuple[str, ...]) -> Stage:
    return Stage(name, table, sections, upstream, f"embedpipe.corpus.stages:{name}_stage")


# In pipeline order: each stage's upstream tables are written by stages before it.
STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        _stage("tokenize", "tokens", ("corpus", "tokenize"), ()),
        _stage("build_vocab", "vocab", ("vocab",), ("tokens",)),
        _stage("encode", "sequences", ("encode",), ("tokens", "vocab")),
        _stage("bucket", "buckets", ("bucket",), ("sequences",)),
        _stage("cooccur", "cooccur", ("cooccur",), ("sequences", "vocab")),
    )
}

# Stage name -> the table it writes.
TABLES: dict[str, str] = {name: s.table for name, s in STAGES.items()}


def stages_for(tables: Iterable[str]) -> list[str]:
    """The stages that write `tables` and every table those read, in pipeline order."""
    writers = {s.table: s for s in STAGES.values()}
    needed: set[str] = set()
    pending = list(tables)
    while pending:
        table = pending.pop()
        if table not in writers:
            raise KeyError(f"no corpus stage writes table {table!r}: one of {', '.join(writers)}")
        if writers[table].name not in needed:
            needed.add(writers[table].name)
            pending.extend(writers[table].upstream)
    return [name for name in STAGES if name in needed]


def get_stage(name: str) -> Stage:
    """The stage called `name`; an unknown name is an error listing the known ones."""
    try:
        return STAGES[name]
    except KeyError:
        raise KeyError(f"unknown corpus stage {name!r}: one of {', '.join(STAGES)}") from None
