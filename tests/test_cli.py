"""The CLI on a tiny published artefact: neighbors, evaluate with a user pairs file,
artefacts; and how it fails: one line on stderr, exit 2 (command line, config) or 1."""

import json
import subprocess
import sys
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
    capsys.readouterr()
    with pytest.raises(SystemExit) as failed:
        main(["artefacts", "delete", "tiny", "v0001", "--store", str(store)])
    assert failed.value.code == 1
    assert "production" in capsys.readouterr().err
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


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line an expected error prints (no traceback, nothing on stdout)."""
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("embedpipe: error: "), captured.err
    return lines[0].removeprefix("embedpipe: error: ")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from embedpipe import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"embedpipe {__version__}"


@pytest.mark.parametrize(
    "toml, message",
    [
        ('[vocab]\nmin_count = "five"\n', "vocab.min_count: expected an integer, got 'five'"),
        ("[train]\nepochs = -1\n", "train.epochs must be >= 1, got -1"),
        ('[corpus]\npaths = "x.txt"\n', 'corpus.paths: expected a list of str (write ["x.txt"])'),
        ("[vocab\n", "not valid toml"),
    ],
)
def test_a_bad_config_is_one_line_naming_the_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, message: str
) -> None:
    path = tmp_path / "run.toml"
    path.write_text(toml)
    with pytest.raises(SystemExit) as failed:
        main(["prepare", "--config", str(path)])
    assert failed.value.code == 2
    line = error_line(capsys)
    assert line.startswith(f"{path}: ") and message in line


def test_a_bad_override_and_a_missing_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run.toml"
    path.write_text("[vocab]\nmin_count = 2\n")
    with pytest.raises(SystemExit) as failed:
        main(["train", "--config", str(path), "--set", "train.epochs=0"])
    assert failed.value.code == 2
    assert error_line(capsys) == "override 'train.epochs=0': train.epochs must be >= 1, got 0"
    with pytest.raises(SystemExit) as failed:
        main(["prepare", "--config", str(tmp_path / "missing.toml")])
    assert failed.value.code == 2
    assert error_line(capsys) == f"config file {tmp_path / 'missing.toml'} does not exist"


def test_store_errors_are_one_line(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["evaluate", "nosuch", "--store", str(store)],
        ["artefacts", "show", "tiny", "--version", "v0009", "--store", str(store)],
        ["neighbors", "tiny", "zebra", "--store", str(store)],
    ):
        with pytest.raises(SystemExit) as failed:
            main(argv)
        assert failed.value.code == 1
        error_line(capsys)
    (store / "tiny" / "v0002" / "vocab.parquet").write_bytes(b"changed")
    with pytest.raises(SystemExit) as failed:
        main(["artefacts", "verify", "tiny", "--store", str(store)])
    assert failed.value.code == 1
    assert "vocab.parquet" in error_line(capsys)


def test_debug_shows_the_traceback(store: Path) -> None:
    from embedpipe.artefacts import ArtefactError

    for argv in (
        ["--debug", "evaluate", "nosuch", "--store", str(store)],
        ["evaluate", "nosuch", "--store", str(store), "--debug"],
    ):
        with pytest.raises(ArtefactError, match="nosuch"):
            main(argv)


def test_corpus_and_checkpoint_errors_are_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from embedpipe.corpus.sources import CorpusError
    from embedpipe.corpus.spark import launch
    from embedpipe.train import launch as train_launch
    from embedpipe.train.checkpoint import CheckpointError

    def corpus_fails(*args: object, **kwargs: object) -> None:
        raise CorpusError("input path /data/x does not exist or holds no files")

    def checkpoint_fails(*args: object, **kwargs: object) -> None:
        raise CheckpointError("work/train/step-3.safetensors:\nsha256 mismatch")

    monkeypatch.setattr(launch, "launch_stage", corpus_fails)
    monkeypatch.setattr(train_launch, "run_training", checkpoint_fails)
    with pytest.raises(SystemExit) as failed:
        main(["prepare"])
    assert failed.value.code == 1
    assert error_line(capsys) == "input path /data/x does not exist or holds no files"
    with pytest.raises(SystemExit) as failed:
        main(["train"])
    assert failed.value.code == 1
    assert error_line(capsys) == "work/train/step-3.safetensors:; sha256 mismatch"


def test_an_unexpected_error_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from embedpipe.corpus.spark import launch

    def bug(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(launch, "launch_stage", bug)
    with pytest.raises(ZeroDivisionError):
        main(["prepare"])


def test_a_closed_pipe_ends_quietly(store: Path) -> None:
    """`embedpipe artefacts list | head -0`: no BrokenPipeError, no traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "embedpipe.cli", "artefacts", "list", "--store", str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader goes away before the first line is written
    _, err = proc.communicate(timeout=120)
    assert err == b""
    assert proc.returncode == 141
