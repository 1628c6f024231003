"""The CLI on a tiny published artefact: neighbors, evaluate with a user pairs file, artefacts."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import save_file

from embedpipe import schemas as S
from embedpipe.artefacts import ArtefactStore
from embedpipe.cli import main

WORDS = ["king", "prince", "queen", "cabbage", "dog", "hound"]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    tokens = [*S.SPECIAL_TOKENS, *WORDS]
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(tokens), 8)).astype(np.float32)
    base = rng.normal(size=8)
    for i, w in enumerate(tokens):
        if w in ("king", "prince", "queen"):
            vectors[i] = base + 0.1 * rng.normal(size=8)
    save_file({"vectors": vectors}, str(tmp_path / "v.safetensors"))
    pq.write_table(
        pa.table({"id": pa.array(range(len(tokens)), pa.int32()), "token": tokens,
                  "count": pa.array([0] * 5 + [10] * len(WORDS), pa.int64())}),
        tmp_path / "vocab.parquet",
    )  # fmt: skip
    root = tmp_path / "store"
    files = {
        "vectors.safetensors": tmp_path / "v.safetensors",
        "vocab.parquet": tmp_path / "vocab.parquet",
    }
    ArtefactStore(root).publish("tiny", files, {})
    ArtefactStore(root).publish("tiny", files, {})
    return root


def test_neighbors(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["neighbors", "tiny", "King", "-k", "2", "--store", str(store)])
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines()] in (
        ["prince", "queen"],
        ["queen", "prince"],
    )


def test_evaluate_with_user_pairs(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pairs = tmp_path / "mine.tsv"
    pairs.write_text("king\tprince\t9\nking\tcabbage\t1\nzebra\tking\t5\n")
    main(["evaluate", "tiny", "--store", str(store), "--pairs", str(pairs)])
    result = json.loads(capsys.readouterr().out)
    assert result["mine.tsv"]["pairs"] == 3 and result["mine.tsv"]["found"] == 2
    assert result["mine.tsv"]["oov_rate"] == pytest.approx(1 / 3)
    assert set(result) >= {"wordsim353", "simlex999", "analogy", "neighbours"}


def test_artefacts_commands(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["artefacts", "alias", "tiny", "production", "v0001", "--store", str(store)])
    main(["artefacts", "list", "--store", str(store)])
    listing = capsys.readouterr().out.splitlines()
    assert "tiny\tv0001\tproduction" in listing and "tiny\tv0002\tlatest" in listing
    with pytest.raises(Exception, match="production"):
        main(["artefacts", "delete", "tiny", "v0001", "--store", str(store)])
    out = tmp_path / "vectors.parquet"
    main(
        [
            "artefacts",
            "export",
            "tiny",
            "--format",
            "parquet",
            "--out",
            str(out),
            "--store",
            str(store),
        ]
    )
    assert pq.read_table(out).column(S.TOKEN).to_pylist() == WORDS
    main(["artefacts", "verify", "tiny", "--store", str(store)])
    assert "every file matches" in capsys.readouterr().out
