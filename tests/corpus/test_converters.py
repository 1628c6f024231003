"""pyspark's numpy input converters, asked only once numpy is imported."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from py4j import protocol
from pyspark.sql.types import NumpyArrayConverter, NumpyScalarConverter

from embedpipe.corpus.spark import converters


def test_they_replace_pysparks_and_answer_as_pysparks_do() -> None:
    converters.use_imported_numpy_converters()
    kinds = [type(c) for c in protocol.INPUT_CONVERTER]
    assert NumpyScalarConverter not in kinds and NumpyArrayConverter not in kinds
    assert converters.ImportedNumpyScalarConverter in kinds
    assert converters.ImportedNumpyArrayConverter in kinds
    scalar = converters.ImportedNumpyScalarConverter()
    array = converters.ImportedNumpyArrayConverter()
    assert scalar.can_convert(np.float32(1.5)) and scalar.convert(np.int64(3), None) == 3
    assert not scalar.can_convert(3) and not scalar.can_convert("x")
    assert array.can_convert(np.arange(3)) and not array.can_convert(np.zeros((2, 2)))
    assert not array.can_convert([1, 2])
    converters.use_imported_numpy_converters()  # a second time changes nothing
    assert [type(c) for c in protocol.INPUT_CONVERTER] == kinds


def test_asking_them_imports_nothing() -> None:
    """pyspark's own import its test utilities (and pandas) when first asked; these not."""
    code = (
        "import sys\n"
        "from py4j import protocol\n"
        "from embedpipe.corpus.spark.converters import use_imported_numpy_converters\n"
        "use_imported_numpy_converters()\n"
        "numpy_converters = [c for c in protocol.INPUT_CONVERTER if 'Numpy' in type(c).__name__]\n"
        "assert len(numpy_converters) == 2\n"
        "assert not any(c.can_convert('x') for c in numpy_converters)\n"
        "print(sorted(m for m in ('pandas', 'pyspark.testing') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
