"""Commands on one artefact's vectors: evaluate, neighbors, report.

`neighbors` runs on the core install (the loader needs numpy, pyarrow and safetensors);
`evaluate` and `report` import the pipeline's evaluation modules (torch, scipy, matplotlib)
when they run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from embedpipe.cli.options import Json, Name, NameOrDir, Store, Version
from embedpipe.cli.output import CommandError, print_json


def evaluate(
    artefact: NameOrDir,
    version: Version = "latest",
    store: Store = None,
    pairs: Annotated[
        list[str] | None,
        typer.Option(
            "--pairs",
            metavar="FILE",
            help="Also score your own word<TAB>word<TAB>score file (repeatable).",
        ),
    ] = None,
    json_: Json = False,
) -> None:
    """Benchmark scores of an artefact: WordSim-353, SimLex-999, Google analogies (JSON)."""
    from embedpipe.artefacts import load
    from embedpipe.artefacts.publish import evaluate_vectors
    from embedpipe.evaluate import evaluate_similarity, read_pairs

    emb = load(artefact, version=version, store=store)
    if hasattr(emb, "encode"):  # a language model: its input matrix as words, its held-out loss
        from embedpipe.artefacts.encoder import evaluate_input_matrix

        manifest = emb.manifest
        kind = manifest.model.kind if manifest and manifest.model else "mlm"
        heldout = getattr(manifest.metrics, kind, None) if manifest and manifest.metrics else None
        results = {**evaluate_input_matrix(emb), kind: heldout}
    else:
        results = evaluate_vectors(emb.vectors, emb.vocab)
    for path in pairs or []:
        results[Path(path).name] = evaluate_similarity(emb.vectors, emb.vocab, read_pairs(path))
    print_json(results)


def neighbors(
    artefact: NameOrDir,
    word: Annotated[str, typer.Argument(help="The word (tokenized as the corpus was).")],
    k: Annotated[int, typer.Option("-k", help="How many neighbours.")] = 10,
    version: Version = "latest",
    store: Store = None,
    json_: Json = False,
) -> None:
    """Nearest neighbours of a word by cosine similarity: `score  token` lines."""
    from embedpipe.artefacts import load
    from embedpipe.text import tokenize_line

    emb = load(artefact, version=version, store=store)
    words = tokenize_line(word) or [word]
    if emb.lookup(words[0]) is None:
        raise CommandError(f"{word!r} is not in the vocabulary of {emb.path}")
    found = emb.most_similar(words[0], topn=k)
    if json_:
        print_json(
            {
                "word": words[0],
                "artefact": str(emb.path),
                "neighbours": [{"token": t, "score": float(s)} for t, s in found],
            }
        )
        return
    for token, score in found:
        print(f"{score:.4f}  {token}")


def report(
    name: Name,
    out: Annotated[str, typer.Option(help="Directory the report is written to.")],
    version: Version = "latest",
    store: Store = None,
) -> None:
    """Markdown report with PNG plots for an artefact version."""
    from embedpipe.artefacts import open_store
    from embedpipe.evaluate.report import write_report

    opened = open_store(store)
    history = opened.manifests(name)
    print(write_report(opened.resolve(name, version), Path(out), history=history))
