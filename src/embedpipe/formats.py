"""The formats `embedpipe artefacts export` writes: declared apart from the artefacts package
and the table schemas, so the command line reads them without importing pyarrow (which a
bare `embedpipe` start would otherwise load before Spark's JVM is even launched)."""

from __future__ import annotations

from typing import Literal

ExportFormat = Literal["w2v-text", "w2v-binary", "parquet", "hf", "sentence-transformers"]
