"""Text files read by the tokenize tasks themselves: the same lines as Spark's reader."""

from __future__ import annotations

import bz2
import gzip
import random
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

import embedpipe.corpus.stages as stages
from embedpipe.config import CorpusConfig, load_config
from embedpipe.corpus.registry import STAGES
from embedpipe.corpus.sources import READ_FAILED, failed_file
from embedpipe.corpus.textfiles import (
    ARCHIVE_PIECES,
    WHOLE,
    Piece,
    plan_pieces,
    read_piece,
    reads_itself,
    text_bytes,
)

from .conftest import table_dir

# Line ends of every kind, a byte-order mark, valid and invalid UTF-8, control bytes.
_ALPHABET = [b"a", b"b", b" ", b"\n", b"\r", b"\r\n", b"\xc3\xa9", b"\xff", b"\xe2\x82", b"\x00"]
_BOM = b"\xef\xbb\xbf"
TRICKY = (
    _BOM + b"first\r\nsecond\rthird\n\nfourth\r\r\nfifth \xff\xfe bad\n\xe2\x82 cut\r"
    b"caf\xc3\xa9 \xed\xa0\x80 surrogate\r\n\xc0\xaf overlong\n" + _BOM + b"not at the start"
)


def spark_rules(data: bytes) -> list[str]:
    """Hadoop's line rules, written plainly: LF, CRLF and CR end lines, a leading BOM is
    dropped, no line after a final line end; invalid UTF-8 replaced per maximal subpart."""
    data = data.removeprefix(_BOM)
    lines = re.split(rb"\r\n|\r|\n", data) if data else []
    if lines and lines[-1] == b"":
        lines.pop()
    return [line.decode("utf-8", "replace") for line in lines]


def read_all(pieces: list[Piece], read_bytes: int) -> tuple[list[str], list[bool]]:
    texts, flags = [], []
    for piece in pieces:
        for batch in read_piece(piece, read_bytes):
            texts += batch.column("text").to_pylist()
            flags += batch.column("repaired").to_pylist()
    return texts, flags


def cut(size: int, rng: random.Random, end: int) -> list[Piece]:
    """Pieces of a file cut at up to four random offsets (past its end too)."""
    offsets = sorted(set(rng.sample(range(1, size + 6), min(size + 5, rng.randint(0, 4)))))
    bounds = [0, *offsets, end]
    return [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if a < b]


@pytest.mark.parametrize("codec", ["plain", "gz", "bz2"])
def test_pieces_hold_every_line_once_in_order(tmp_path: Path, codec: str) -> None:
    """However a file is cut (inside a CRLF, a character, the BOM) and however little is
    read at a time, its pieces give each line once, as Hadoop's rules do."""
    rng = random.Random(7)
    compress = {"plain": bytes, "gz": gzip.compress, "bz2": bz2.compress}[codec]
    path = tmp_path / ("corpus.txt" + ("" if codec == "plain" else f".{codec}"))
    for _ in range(400):
        data = b"".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 40)))
        data = _BOM + data if rng.random() < 0.2 else data
        path.write_bytes(compress(data))
        end = len(data) if codec == "plain" else WHOLE
        bounds = cut(len(data), rng, end)
        pieces = [Piece(str(path), a, min(b, end)) for a, b in bounds]
        texts, _ = read_all(pieces, rng.choice([1, 2, 3, 7, 1 << 20]))
        assert texts == spark_rules(data), (data, bounds)


def test_invalid_utf8_is_replaced_and_flagged(tmp_path: Path) -> None:
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"plain\ncaf\xc3\xa9\nbad \xff byte\ntrue \xef\xbf\xbd kept\n")
    texts, flags = read_all([Piece(str(path), 0, path.stat().st_size)], 1 << 20)
    assert texts == ["plain", "café", "bad \ufffd byte", "true \ufffd kept"]
    assert flags == [False, False, True, False]


@pytest.mark.spark
def test_lines_are_sparks_lines(spark, tmp_path: Path) -> None:
    """Byte for byte what Spark's text reader and make_valid_utf8 give, flags included."""
    path = tmp_path / "tricky.txt"
    path.write_bytes(TRICKY * 3)
    rows = (
        spark.read.text(str(path))
        .select(F.make_valid_utf8("value").alias("t"), (~F.is_valid_utf8("value")).alias("r"))
        .collect()
    )
    size = path.stat().st_size
    pieces = [Piece(str(path), a, min(a + 17, size)) for a in range(0, size, 17)]
    assert read_all(pieces, 5) == ([r.t for r in rows], [r.r for r in rows])
    for extra in (_BOM, _BOM + b"\n", b"\r\n\r\n", b""):
        path.write_bytes(extra)
        expected = [r.value for r in spark.read.text(str(path)).collect()]
        assert read_all([Piece(str(path), 0, len(extra))], 4)[0] == expected, extra


def test_plan_covers_every_byte_in_order() -> None:
    sizes = {"a.txt": 1000, "b.txt": 3, "empty.txt": 0, "c.gz": 4000, "d.txt": 10}
    plan = plan_pieces(sizes, 4)
    assert len(plan) == 4
    pieces = [p for task in plan for p in task]
    for url, size in sizes.items():
        mine = [p for p in pieces if p.url == url]
        spans = [(p.start, p.end) for p in mine]
        if url.endswith(".gz"):  # to the archive's end, whatever its size
            assert spans[-1][1] == WHOLE and len(mine) <= ARCHIVE_PIECES
        else:
            assert spans[-1][1] == size if size else not spans
        assert [a for a, _ in spans[1:]] == [b for _, b in spans[:-1]]  # contiguous
        assert not spans or spans[0][0] == 0
    assert [p.url for p in pieces] == sorted([p.url for p in pieces], key=list(sizes).index)
    shares = [sum(min(p.end, sizes[p.url]) - p.start for p in task) for task in plan]
    assert max(shares) - min(shares) <= 1000  # an archive piece may overrun a share
    assert plan_pieces({"big.gz": 10**6}, 64) == [
        [Piece("big.gz", i * 125_000, (i + 1) * 125_000 if i < 7 else WHOLE)] for i in range(8)
    ]


def test_text_bytes_reads_a_gzip_trailer(tmp_path: Path) -> None:
    path = tmp_path / "t.txt.gz"
    path.write_bytes(gzip.compress(b"word " * 10_000))
    assert text_bytes(str(path), path.stat().st_size) == 50_000
    assert text_bytes("x.txt", 123) == 123


def test_which_inputs_the_tasks_read(tmp_path: Path) -> None:
    text = CorpusConfig(paths=[str(tmp_path)])
    local = [str(tmp_path / "a.txt"), f"file://{tmp_path}/b.txt.gz", str(tmp_path / "c.bz2")]
    assert reads_itself(local, text, [])
    assert not reads_itself([*local, str(tmp_path / "d.zst")], text, [])
    assert not reads_itself(local, text, [str(tmp_path / "cut.gz")])  # salvage: Spark's
    assert not reads_itself(["memory://x/a.txt"], text, [])
    for other in (
        CorpusConfig(paths=["x"], format="jsonl"),
        CorpusConfig(paths=["x"], unit="sentence"),
    ):
        assert not reads_itself(local, other, [])


def test_a_tasks_read_error_names_the_file() -> None:
    urls = ["file:///data/a.txt.gz", "file:///data/b.txt.gz"]
    error = RuntimeError(
        "PythonException: Traceback ...\n"
        f"OSError: {READ_FAILED} file:///data/b.txt.gz (EOFError: Compressed file ended)\n"
    )
    assert failed_file(error, urls) == (urls[1], "EOFError: Compressed file ended")


@pytest.mark.spark
def test_tokens_table_is_the_same_either_way(spark, tmp_path: Path, monkeypatch) -> None:
    """A plain file and a .gz: the tokens table the tasks make from their own reads equals
    the one made from Spark's lines, row for row, and so do the counts."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = random.Random(3)
    words = ["the", "Cat", "sat", "café", "naïve", "42", "x\ty", "a-b", "\xff", "\x00"]
    body = b"".join(
        " ".join(rng.choice(words) for _ in range(rng.randint(0, 12))).encode(
            "utf-8", "surrogateescape"
        )
        + rng.choice([b"\n", b"\r\n", b"\r"])
        for _ in range(3000)
    )
    (corpus / "a.txt").write_bytes(TRICKY + body)
    (corpus / "b.txt.gz").write_bytes(gzip.compress(body + TRICKY))
    tables = {}
    for way in ("itself", "spark"):
        if way == "spark":
            monkeypatch.setattr(stages, "reads_itself", lambda *a: False)
        config = load_config(None, [f"workdir={tmp_path / way}", f'corpus.paths=["{corpus}"]'])
        counts = STAGES["tokenize"].run(spark, config)
        parts = sorted(table_dir(tmp_path / way, "tokens").glob("part-*.parquet"))
        table = pq.read_table(parts).sort_by("seq_id")
        tables[way] = (table.drop(["seq_id"]).to_pylist(), counts)
    assert tables["itself"][0] == tables["spark"][0]
    assert len(tables["itself"][0]) > 5000
    for key in ("sequences", "tokens", "invalid_utf8_lines", "control_char_lines"):
        assert tables["itself"][1]["counts"][key] == tables["spark"][1]["counts"][key], key
