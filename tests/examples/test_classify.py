"""examples/classify.py on tiny vectors and data, and the shipped supersense set itself."""

from __future__ import annotations

import gzip
import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.numpy import save_file

from embedpipe.artefacts import ArtefactStore, Embeddings
from embedpipe.schemas import PAD, SPECIAL_TOKENS, UNK

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
WORDNET = Path("/usr/share/wordnet")


def import_path(name: str, path: Path) -> ModuleType:
    """Import a script that is not in a package (registered so dataclasses resolve)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def classify() -> ModuleType:
    return import_path("example_classify", EXAMPLES / "classify.py")


ANIMALS = ["dog", "cat", "horse", "bird", "fish", "cow"]
TOOLS = ["hammer", "saw", "drill", "wrench", "knife", "axe"]


def tiny_data(path: Path) -> Path:
    """A two-class TSV in the shipped layout: glosses naming animals or tools."""
    rng = np.random.default_rng(0)
    lines = ["split\tlabel\tindex\tsynset\tgloss"]
    for i in range(60):
        label, pool = ("noun.animal", ANIMALS) if i % 2 else ("noun.artifact", TOOLS)
        gloss = " ".join(["a", *rng.choice(pool, 3), "or", "Unseenword"])
        lines.append(f"{'test' if i % 5 == 0 else 'train'}\t{label}\t{2 * i + 1}\t0-n\t{gloss}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tiny_artefact(tmp_path: Path) -> Path:
    """A published artefact whose animal and tool words point in two directions."""
    tokens = [*SPECIAL_TOKENS, "a", "or", *ANIMALS, *TOOLS]
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((len(tokens), 6)).astype(np.float32) * 0.1
    vectors[7:13, 0] += 1.0
    vectors[13:19, 1] += 1.0
    src = tmp_path / "src"
    src.mkdir()
    save_file({"vectors": vectors}, src / "vectors.safetensors")
    pq.write_table(
        pa.table(
            {
                "id": pa.array(range(len(tokens)), pa.int32()),
                "token": tokens,
                "count": pa.array([0] * 5 + [100] * (len(tokens) - 5), pa.int64()),
            }
        ),
        src / "vocab.parquet",
    )
    files = {n: src / n for n in ("vectors.safetensors", "vocab.parquet")}
    return ArtefactStore(tmp_path / "store").publish("tiny", files, {})


def test_main_returns_three_accuracies(classify: ModuleType, tmp_path: Path) -> None:
    data = tiny_data(tmp_path / "data.tsv")
    artefact = tiny_artefact(tmp_path)
    results = classify.main(["--artefact", str(artefact), "--data", str(data), "--epochs", "1"])
    assert list(results) == ["random", "frozen", "fine-tuned"]
    assert all(0.0 <= acc <= 1.0 for acc in results.values())

    # By name from a store, and with enough epochs the pretrained directions separate the classes.
    results = classify.main(
        ["--artefact", "tiny", "--store", str(tmp_path / "store"), "--data", str(data)]
    )
    assert results["frozen"] == 1.0


def test_models_start_from_different_embedding_weights(
    classify: ModuleType, tmp_path: Path
) -> None:
    from embedpipe.artefacts import load

    emb = load(tiny_artefact(tmp_path))
    vocab = [PAD, UNK, "dog", "Saw", "zebra"]
    models = {kind: classify.build_model(kind, vocab, emb, 2, seed=0) for kind in classify.KINDS}
    weights = {kind: m.embedding.weight.detach().numpy() for kind, m in models.items()}

    # Pretrained rows are the artefact's vectors (found as given or lower-cased)...
    np.testing.assert_array_equal(weights["frozen"][2], emb["dog"])
    np.testing.assert_array_equal(weights["frozen"][3], emb["saw"])
    np.testing.assert_array_equal(weights["frozen"], weights["fine-tuned"])
    # ...the random model shares none of them, and every variant has a zero PAD row.
    assert not np.allclose(weights["random"][1:], weights["frozen"][1:])
    assert not np.any(np.isclose(weights["random"][2:4], weights["frozen"][2:4]).all(axis=1))
    for w in weights.values():
        np.testing.assert_array_equal(w[0], 0.0)
    assert models["frozen"].embedding.weight.requires_grad is False
    assert models["fine-tuned"].embedding.weight.requires_grad is True
    assert models["random"].embedding.weight.requires_grad is True
    assert all(m.embedding.padding_idx == 0 for m in models.values())

    # Same seed, same start: runs are reproducible.
    again = classify.build_model("random", vocab, emb, 2, seed=0).embedding.weight
    np.testing.assert_array_equal(again.detach().numpy(), weights["random"])


def test_mean_pooling_ignores_padding(classify: ModuleType) -> None:
    emb = Embeddings.from_arrays([PAD, UNK, "x", "y"], np.arange(8, dtype=np.float32).reshape(4, 2))
    model = classify.build_model("frozen", [PAD, UNK, "x", "y"], emb, 2)
    with torch.no_grad():
        model.linear.weight.copy_(torch.eye(2))
        model.linear.bias.zero_()
    ids = classify.encode([["x", "y"], ["y"], ["x", "nope"]], [PAD, UNK, "x", "y"])
    assert ids.tolist() == [[2, 3], [3, 0], [2, 1]]
    out = model(ids).detach().numpy()
    np.testing.assert_allclose(out[0], [(4 + 6) / 2, (5 + 7) / 2])
    np.testing.assert_allclose(out[1], [6, 7])  # the PAD position does not dilute the mean


def test_build_vocab_orders_by_frequency(classify: ModuleType) -> None:
    vocab = classify.build_vocab([["b", "a", "b"], ["c", "a", "b"]])
    assert vocab == [PAD, UNK, "b", "a", "c"]
    assert classify.build_vocab([["b", "a", "b"]], min_count=2) == [PAD, UNK, "b"]


# The shipped data set.


def read_tsv(path: Path) -> list[dict[str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]


def test_shipped_supersense_set_is_small_balanced_and_held_out() -> None:
    path = EXAMPLES / "data" / "supersense.tsv"
    assert path.stat().st_size < 1_000_000
    rows = read_tsv(path)
    assert len(rows) == 4000
    by_class = Counter((r["label"], r["split"]) for r in rows)
    labels = {label for label, _ in by_class}
    assert len(labels) == 8
    assert all(by_class[(label, "train")] == 400 for label in labels)
    assert all(by_class[(label, "test")] == 100 for label in labels)
    # Only odd positions: the pretraining sample holds the even ones.
    assert all(int(r["index"]) % 2 == 1 for r in rows)
    assert len({r["synset"] for r in rows}) == len(rows)
    with gzip.open(ROOT / "data" / "sample" / "wordnet-glosses.txt.gz", "rt") as f:
        sample = {line.rstrip("\n").split(": ", 1)[-1] for line in f}
    assert not [r["gloss"] for r in rows if r["gloss"] in sample]
    assert (EXAMPLES / "data" / "LICENSE-WordNet").read_text().count("Princeton University") >= 2


@pytest.mark.skipif(not (WORDNET / "data.noun").is_file(), reason="WordNet (wordnet-base) absent")
def test_supersense_rows_match_the_corpus_builder_order() -> None:
    """Row indices are positions in bench/wordnet_text.py's order, so odd means held out."""
    bench = import_path("bench_wordnet_text", ROOT / "bench" / "wordnet_text.py")
    builder = import_path("example_build_supersense", EXAMPLES / "build_supersense.py")
    lines = list(bench.iter_synset_lines())
    synsets = list(builder.iter_synsets())
    assert len(lines) == len(synsets)
    for s in synsets[::997]:
        assert lines[s.index] == f"{', '.join(s.lemmas)}: {s.gloss}"
    rows = read_tsv(EXAMPLES / "data" / "supersense.tsv")
    for r in rows[::50]:
        i = int(r["index"])
        assert lines[i].endswith(": " + r["gloss"])
        assert synsets[i].lexname == r["label"] and synsets[i].synset == r["synset"]
    # The sample corpus is exactly the even positions.
    with gzip.open(ROOT / "data" / "sample" / "wordnet-glosses.txt.gz", "rt") as f:
        sample = [line.rstrip("\n") for line in f]
    assert sample[:100] == lines[0:200:2]
    assert len(sample) == (len(lines) + 1) // 2
