"""pyspark's numpy input converters for py4j, without the import of its test utilities.

py4j asks every input converter about every argument of every Java call that is not a
Java object. pyspark's two numpy converters answer by first importing
`pyspark.testing.utils` (for its `have_numpy` flag), which imports unittest, pandas,
pyarrow and more: so the first Java call of a session imports pandas, however little the
session needs it, and the JVM waits for that import. These subclasses give the same answer
from what is imported: a value can only be a numpy scalar or array if numpy is imported.
Their conversions are pyspark's own.
"""

from __future__ import annotations

import sys
from typing import Any

from py4j import protocol
from pyspark.sql.types import NumpyArrayConverter, NumpyScalarConverter


class ImportedNumpyScalarConverter(NumpyScalarConverter):
    """A numpy scalar to its Python value (pyspark's), asked only once numpy is imported."""

    def can_convert(self, obj: Any) -> bool:
        numpy = sys.modules.get("numpy")
        return numpy is not None and isinstance(obj, numpy.generic)


class ImportedNumpyArrayConverter(NumpyArrayConverter):
    """A 1-d numpy array to a Java array (pyspark's), asked only once numpy is imported."""

    def can_convert(self, obj: Any) -> bool:
        numpy = sys.modules.get("numpy")
        return numpy is not None and isinstance(obj, numpy.ndarray) and obj.ndim == 1


def use_imported_numpy_converters() -> None:
    """Replace pyspark's numpy converters in py4j's list, in place (gateways made before
    and after use that list); leaves it as it is where pyspark registered none."""
    replacements = {
        NumpyScalarConverter: ImportedNumpyScalarConverter(),
        NumpyArrayConverter: ImportedNumpyArrayConverter(),
    }
    converters = protocol.INPUT_CONVERTER
    converters[:] = [replacements.get(type(c), c) for c in converters]
