"""What a consumer of the vectors does with the core install (`pip install embedpipe`), run by
the tests in an interpreter of its own: import every module of the core, load an artefact,
export it, evaluate it, look up neighbours. Prints one JSON object of what it found.

    python core_consumer.py SETTINGS_JSON

SETTINGS_JSON names the store, the artefact, an output directory, the module prefixes that
belong to the pipeline extra (not imported), the packages that must not load, and `allow`:
when given, any other top-level module outside the standard library raises ImportError (a
`sys.meta_path` finder), as if only the core's dependencies were installed.
`publish_sample` (used by the tests, in their own environment) writes the artefact.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class OnlyAllowed(importlib.abc.MetaPathFinder):
    """Refuses every top-level module that is neither allowed, embedpipe nor the standard
    library's (by name, or by its place: private ones such as _sysconfigdata_*)."""

    def __init__(self, allow: Sequence[str], refuse: Sequence[str]) -> None:
        self.allow = {*allow, "embedpipe", *sys.stdlib_module_names} - set(refuse)
        paths = sysconfig.get_paths()
        stdlib = {paths["stdlib"], paths["platstdlib"]}
        self.stdlib = sorted(stdlib | {os.path.join(p, "lib-dynload") for p in stdlib})

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        top = name.partition(".")[0]
        if top in self.allow or (
            name == top and importlib.machinery.PathFinder.find_spec(top, self.stdlib)
        ):
            return None
        raise ImportError(f"{top} is not a dependency of the core install", name=name)


def core_modules(skip: Sequence[str]) -> list[str]:
    """Every module of the embedpipe package, by its file, except those under `skip`."""
    spec = importlib.util.find_spec("embedpipe")
    assert spec is not None and spec.origin is not None
    root = Path(spec.origin).parent
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = ("embedpipe", *path.relative_to(root).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if parts[-1] == "__main__":  # running it is what importing it does
            continue
        if not any(name == s or name.startswith(s + ".") for s in skip):
            names.append(name)
    return names


def consume(settings: dict[str, Any]) -> dict[str, Any]:
    """Import the core, then load, export and evaluate the artefact; what happened, as JSON."""
    failed = {}
    for name in core_modules(settings["skip"]):
        try:
            importlib.import_module(name)
        except ImportError as e:
            failed[name] = f"{type(e).__name__}: {e}"

    import numpy as np

    from embedpipe.artefacts import export_vectors, load
    from embedpipe.artefacts.encoder import evaluate_input_matrix
    from embedpipe.artefacts.publish import evaluate_vectors

    out = Path(settings["out"])
    emb = load(settings["name"], store=settings["store"])
    mlm = load(f"{settings['name']}-mlm", store=settings["store"])  # a masked-LM artefact
    np.save(out / "vectors.npy", emb.vectors)
    exported = Path(export_vectors(emb.path, "w2v-text", str(out / "vectors.txt")))
    heavy = settings["heavy"]
    return {
        "python": list(sys.version_info[:2]),
        "embedpipe": importlib.import_module("embedpipe").__file__,
        "failed": failed,
        "vocab": emb.vocab,
        "evaluation": evaluate_vectors(emb.vectors, emb.vocab),
        "neighbours": emb.most_similar(emb.vocab[-1], topn=5),
        "mlm_layers": mlm.architecture().layers,
        "mlm_evaluation": evaluate_input_matrix(mlm),
        "exported_sha256": hashlib.sha256(exported.read_bytes()).hexdigest(),
        "heavy_loaded": sorted({m.partition(".")[0] for m in sys.modules} & set(heavy)),
        "heavy_installed": sorted(h for h in heavy if _installed(h)),
    }


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # refused by OnlyAllowed
        return False


def publish_sample(store: Path, words: Sequence[str], dim: int = 16) -> tuple[str, Any]:
    """Publish an artefact `sample` of `words` with seeded random vectors, as a trainer's
    files would be published, and `sample-mlm`, the same with a (placeholder) masked-LM
    encoder; returns the name and the vectors."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.numpy import save_file

    from embedpipe.artefacts import ArtefactStore
    from embedpipe.artefacts.encoder import ENCODER_CONFIG_FILE, FORMAT
    from embedpipe.artefacts.loader import ENCODER_FILE, VECTORS_FILE, VOCAB_FILE
    from embedpipe.schemas import VOCAB_SCHEMA

    files = store.parent / "files"
    files.mkdir(parents=True)
    vectors = np.random.default_rng(17).standard_normal((len(words), dim)).astype(np.float32)
    save_file({"vectors": vectors}, str(files / VECTORS_FILE))
    columns = pa.schema([VOCAB_SCHEMA.field(c) for c in ("id", "token", "count")])
    counts = list(range(10 * len(words), 0, -10))
    table = pa.table([list(range(len(words))), list(words), counts], schema=columns)
    pq.write_table(table, files / VOCAB_FILE)
    names = [VECTORS_FILE, VOCAB_FILE]
    ArtefactStore(store).publish("sample", {n: files / n for n in names}, {"dim": dim})
    architecture = {"vocab_size": len(words), "width": dim, "layers": 1, "heads": 2, "ffn": 8}
    (files / ENCODER_CONFIG_FILE).write_text(
        json.dumps({"format": FORMAT, "architecture": architecture})
    )
    save_file({"final_norm.weight": np.ones(dim, np.float32)}, str(files / ENCODER_FILE))
    names += [ENCODER_FILE, ENCODER_CONFIG_FILE]
    ArtefactStore(store).publish("sample-mlm", {n: files / n for n in names}, {"dim": dim})
    return "sample", vectors


def main(argv: Sequence[str]) -> None:
    settings = json.loads(Path(argv[0]).read_text())
    if settings.get("allow") is not None:
        sys.meta_path.insert(0, OnlyAllowed(settings["allow"], settings["heavy"]))
    print(json.dumps(consume(settings)))


if __name__ == "__main__":
    main(sys.argv[1:])
